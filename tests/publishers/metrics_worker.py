"""shadower-analytics' metrics worker, for the compatibility tests (tests/it/compat/).

Answers the dashboard's {"type": "request_metrics", "metric_type": ...} as a worker behind the
bridge does, with redis-py: it PSUBSCRIBEs the channels the bridge publishes these requests on,
and PUBLISHes each answer, naming the requesting connection, on the channel the bridge's reply
route takes.

Usage: metrics_worker.py REDIS_URL REQUEST_PATTERN REPLY_CHANNEL

Prints "ready" once subscribed, then one line per answer: the JSON published.
"""

import json
import sys

import redis


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    url, pattern, reply_channel = sys.argv[1:]
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    pubsub.psubscribe(pattern)
    for message in pubsub.listen():
        if message["type"] == "psubscribe":
            print("ready", flush=True)
            continue
        if message["type"] != "pmessage":
            continue
        request = json.loads(message["data"])
        workspace = message["channel"].decode().rsplit(":", 1)[1]
        reply = {
            "connection_id": request["connection_id"],
            "event": "metrics_update",
            "data": {
                "workspace_id": workspace,
                "metric_type": request["data"]["metric_type"],
                "requested_by": request["user"],
                "total_executions": 1234,
            },
            "timestamp": "2025-11-09T12:00:00Z",
        }
        client.publish(reply_channel, json.dumps(reply))
        print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
