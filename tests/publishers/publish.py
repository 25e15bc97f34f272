"""A Python worker's publisher, for the compatibility tests (tests/it/compat/).

Publishes with redis-py, as the Python workers of botrix, shadower-analytics and
intelligent-workflows do: the message object serialised by ``json.dumps`` with its default
separators (``{"event": "job_update", ...}``, spaces included), then ``PUBLISH``.

Usage: publish.py REDIS_URL < messages

Each stdin line is one JSON object:
  {"channel": "...", "json": "<JSON text>"}  the worker's message: parsed into Python objects
                                             (key order kept) and published as json.dumps
                                             of them, as the worker serialises its dict
  {"channel": "...", "text": "..."}          published as it is, as typed into redis-cli
Messages go out in order on one connection. Each is answered on stdout by one line
  {"channel": "...", "payload": "<the exact text published>", "receivers": N}
"""

import json
import sys

import redis


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    client = redis.Redis.from_url(sys.argv[1])
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        channel = message["channel"]
        if "json" in message:
            payload = json.dumps(json.loads(message["json"]))
        else:
            payload = message["text"]
        receivers = client.publish(channel, payload)
        print(json.dumps({"channel": channel, "payload": payload, "receivers": receivers}))
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
