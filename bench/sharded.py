#!/usr/bin/env python3
"""Classic against sharded pub/sub on a 3-master Redis Cluster (run by bench/sharded.sh).

What a cluster pays for each message a bridge receives, both ways:

- classic: PUBLISH on the channel's node; the cluster bus copies it to every other node; one
  subscriber connection (what the bridge holds today) SUBSCRIBEs every channel on one node;
- sharded: SPUBLISH on the node that owns the channel's slot, where it stays; the subscriber
  needs one connection per master, each SSUBSCRIBing the channels of its slots (one command
  per slot: SSUBSCRIBE refuses channels of several slots).

The same messages (--messages, --channels exact channels, --bytes each) are published in
pipelines from one client; the run ends when the subscriber has received them all. Reported
per way: messages/s through the subscriber, the CPU (user + system, /proc) of the three
redis-server processes together per message, and the subscriber connections. Alternated
--runs times; one JSON line per measurement to --out, medians on stderr.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import redis
from redis.cluster import ClusterNode, RedisCluster

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def start_cluster(workdir, ports, cpu):
    procs = []
    for port in ports:
        folder = os.path.join(workdir, str(port))
        os.makedirs(folder)
        procs.append(subprocess.Popen(
            ["taskset", "-c", cpu, "redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--dir", folder, "--save", "", "--appendonly", "no", "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--logfile", os.path.join(folder, "log")],
            stdin=subprocess.DEVNULL))
    for port in ports:
        for _ in range(100):
            try:
                redis.Redis(port=port).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                    "--cluster-replicas", "0", "--cluster-yes"], check=True,
                   stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    for port in ports:
        while b"cluster_state:ok" not in redis.Redis(port=port).execute_command("CLUSTER", "INFO"):
            time.sleep(0.05)
    return procs


def receive(connections, expected, done):
    """Reads messages from every subscriber connection until `expected` have come."""
    count = 0
    while count < expected:
        for pubsub in connections:
            while True:
                message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.001)
                if message is None:
                    break
                if message["type"] in ("message", "smessage"):
                    count += 1
    done.append(time.monotonic())


def one_run(way, cluster, nodes, pids, args):
    channels = [f"job:{i}" for i in range(args.channels)]
    payload = b"x" * args.bytes
    if way == "classic":
        pubsub = redis.Redis(port=nodes[0]).pubsub()
        pubsub.subscribe(*channels)
        connections = [pubsub]
    else:
        # SSUBSCRIBE takes channels of one slot at a time (else CROSSSLOT).
        by_node = {}
        for channel in channels:
            node = cluster.get_node_from_key(channel)
            slots = by_node.setdefault(node.port, {})
            slots.setdefault(cluster.keyslot(channel), []).append(channel)
        connections = []
        for port, slots in by_node.items():
            pubsub = redis.Redis(port=port).pubsub()
            for names in slots.values():
                pubsub.ssubscribe(*names)
            connections.append(pubsub)
    # Let the subscriptions' confirmations arrive before the clock starts.
    for pubsub in connections:
        while pubsub.get_message(timeout=0.05) is not None:
            pass
    owners = {channel: cluster.get_node_from_key(channel).port for channel in channels}
    publishers = {port: redis.Redis(port=port) for port in nodes}
    done = []
    reader = threading.Thread(target=receive, args=(connections, args.messages, done))
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    started = time.monotonic()
    reader.start()
    command = "PUBLISH" if way == "classic" else "SPUBLISH"
    sent = 0
    while sent < args.messages:
        pipes = {port: client.pipeline(transaction=False) for port, client in publishers.items()}
        for n in range(sent, min(sent + args.pipeline, args.messages)):
            channel = channels[n % len(channels)]
            # Both on the owning node: the same publishers, only the command differs.
            pipes[owners[channel]].execute_command(command, channel, payload)
        for pipe in pipes.values():
            pipe.execute()
        sent = min(sent + args.pipeline, args.messages)
    reader.join(timeout=120)
    if not done:
        raise RuntimeError(f"{way}: the subscriber did not get every message")
    elapsed = done[0] - started
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    for pubsub in connections:
        pubsub.close()
    return {"tool": "sharded", "way": way, "messages": args.messages, "channels": args.channels,
            "bytes": args.bytes, "messages_per_s": round(args.messages / elapsed),
            "redis_cpu_us_per_message": round(cpu * 1e6 / args.messages, 2),
            "subscriber_connections": len(connections)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--bytes", type=int, default=100)
    parser.add_argument("--pipeline", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--base-port", type=int, default=16700)
    parser.add_argument("--redis-cpu", default="1", help="taskset CPU list of the redis-servers")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="bench-sharded.")
    nodes = [args.base_port + i for i in range(3)]
    procs = start_cluster(workdir, nodes, args.redis_cpu)
    try:
        cluster = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", nodes[0])])
        pids = [int(redis.Redis(port=p).info("server")["process_id"]) for p in nodes]
        results = []
        for run in range(args.runs):
            for way in ("classic", "sharded"):
                result = one_run(way, cluster, nodes, pids, args)
                result["run"] = run
                results.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
                with open(args.out, "a") as handle:
                    handle.write(json.dumps(result) + "\n")
        for way in ("classic", "sharded"):
            mine = [r for r in results if r["way"] == way]
            print(f"{way}: {statistics.median(r['messages_per_s'] for r in mine):,.0f} messages/s, "
                  f"{statistics.median(r['redis_cpu_us_per_message'] for r in mine):.2f} µs of Redis CPU "
                  f"per message (3 nodes), {mine[0]['subscriber_connections']} subscriber connection(s)",
                  file=sys.stderr)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
