#!/usr/bin/env python3
"""The "Clients talk back" benchmarks of BENCHMARKS.md, each configuration alternated with its
baseline in one invocation (a shared, noisy machine: compare within a run, report medians):

- inbound: CLIENTS connections (bench/talkback.js, Node's ws) send FRAMES each through the
  `chat` inbound route (with `ack`), each keeping 32 frames awaiting their `published`; the
  bridge's CPU per published frame (its envelope with the verified identity, the PUBLISH
  pipelined to Redis, the answer) and frames/s, counted by bridge_inbound_published_total.
  Frames/s per core = 1e6 / CPU µs per frame.
- churn: CLIENTS connections subscribe and unsubscribe ROUNDS times each, on rooms with and
  without `presence` (bench/config/talkback-{plain,presence}.yaml): the bridge's and Redis's
  CPU per subscribe+unsubscribe pair, and pairs/s.
- storm: bridge-bench storm, each new connection subscribing to one room, with and without
  presence: the bridge's CPU per connection and connections/s.

The bridge is pinned to CPU 0, the clients and redis-server to CPU 1, as bench/run.sh does.
Run `cargo build --release -p redis-ws-bridge -p bridge-bench` first.

Usage: bench/talkback.py [--runs N] [--out FILE.jsonl]
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BRIDGE = os.path.join(ROOT, "target/release/redis-ws-bridge")
BENCH = os.path.join(ROOT, "target/release/bridge-bench")
REDIS_PORT = 16791
LISTEN = "127.0.0.1:18791"
SECRET = "bridge-bench-secret-0123456789abcdef0123456789"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU time of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def metric(series):
    with urllib.request.urlopen(f"http://{LISTEN}/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            name, _, value = line.rpartition(" ")
            if name == series:
                return float(value)
    return 0.0


def wait_ready(bridge):
    deadline = time.time() + 30
    while time.time() < deadline:
        if bridge.poll() is not None:
            sys.exit("the bridge exited")
        try:
            with urllib.request.urlopen(f"http://{LISTEN}/readyz", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit("the bridge never became ready")


def free(port):
    """Whether nothing listens on 127.0.0.1:port (another benchmark may)."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


class Servers:
    """A fresh redis-server and bridge on `variant`'s routing file."""

    def __init__(self, variant):
        for port in (REDIS_PORT, int(LISTEN.rsplit(":", 1)[1])):
            if not free(port):
                sys.exit(f"127.0.0.1:{port} is taken")
        self.dir = tempfile.TemporaryDirectory()
        self.redis = subprocess.Popen(
            ["taskset", "-c", "1", "redis-server", "--port", str(REDIS_PORT), "--save", "",
             "--appendonly", "no", "--dir", self.dir.name],
            stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        env = dict(os.environ, BENCH_LISTEN=LISTEN,
                   BENCH_REDIS_URL=f"redis://127.0.0.1:{REDIS_PORT}/0", BENCH_JWT_SECRET=SECRET)
        config = os.path.join(ROOT, f"bench/config/talkback-{variant}.yaml")
        self.bridge = subprocess.Popen(
            ["taskset", "-c", "0", BRIDGE, "run", "--config", config, "--log-format", "json"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir.name, "log"), "w"))
        wait_ready(self.bridge)

    def stop(self):
        for process in (self.bridge, self.redis):
            process.terminate()
            process.wait()
        self.dir.cleanup()


def node(*args):
    done = subprocess.run(["taskset", "-c", "1", "node", os.path.join(ROOT, "bench/talkback.js"), *args],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"bench/talkback.js {args[0]} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def inbound(servers, clients, frames):
    series = 'bridge_inbound_published_total{route="chat"}'
    before, cpu = metric(series), cpu_seconds(servers.bridge.pid)
    started = time.time()
    done = node("inbound", f"ws://{LISTEN}/ws", SECRET, str(clients), str(frames))
    total = clients * frames
    while metric(series) - before < total:
        if time.time() - started > 120:
            sys.exit(f"only {metric(series) - before:.0f} of {total} inbound frames published")
        time.sleep(0.05)
    elapsed = time.time() - started
    used = cpu_seconds(servers.bridge.pid) - cpu
    return {"frames": total, "retried": done["retried"], "seconds": round(elapsed, 3),
            "frames_per_s": round(total / elapsed),
            "bridge_cpu_us_per_frame": round(used * 1e6 / total, 2)}


def churn(servers, clients, rounds):
    cpu, redis_cpu = cpu_seconds(servers.bridge.pid), cpu_seconds(servers.redis.pid)
    done = node("churn", f"ws://{LISTEN}/ws", SECRET, str(clients), str(rounds), "100")
    # Presence's work for the last unsubscribes may still be under way: let it end.
    time.sleep(0.5)
    used = cpu_seconds(servers.bridge.pid) - cpu
    redis_used = cpu_seconds(servers.redis.pid) - redis_cpu
    pairs = done["pairs"]
    return {"pairs": pairs, "pairs_per_s": round(pairs / done["seconds"]),
            "bridge_cpu_us_per_pair": round(used * 1e6 / pairs, 1),
            "redis_cpu_us_per_pair": round(redis_used * 1e6 / pairs, 1)}


def storm(servers, clients):
    out = subprocess.run(
        ["taskset", "-c", "1", BENCH, "storm", "--url", f"ws://{LISTEN}/ws?token={{token}}",
         "--clients", str(clients), "--topics", "100", "--topic", "room:{id}",
         "--jwt-secret", SECRET, "--concurrency", "256", "--server-pid", str(servers.bridge.pid),
         "--redis-pid", str(servers.redis.pid), "--label", "bridge", "--scenario", "storm"],
        capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bridge-bench storm failed:\n{out.stderr}")
    line = json.loads(out.stdout.strip().splitlines()[-1])
    connect = line["connect"]
    return {"connections": connect.get("connected"),
            "connections_per_s": connect.get("per_second") or connect.get("rate"),
            "bridge_cpu_us_per_connection": line["server"]["cpu_us_per_connection"],
            "raw": {"connect": connect, "server": line["server"], "redis": line.get("redis")}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--inbound-clients", type=int, default=100)
    parser.add_argument("--inbound-frames", type=int, default=2000)
    parser.add_argument("--churn-clients", type=int, default=200)
    parser.add_argument("--churn-rounds", type=int, default=50)
    parser.add_argument("--storm-clients", type=int, default=5000)
    args = parser.parse_args()
    results = []
    for run in range(args.runs):
        # Alternate which configuration goes first, so that a drift of the machine's load
        # does not always favour the same one.
        variants = ["plain", "presence"] if run % 2 == 0 else ["presence", "plain"]
        for variant in variants:
            servers = Servers(variant)
            try:
                result = {"run": run, "variant": variant,
                          "churn": churn(servers, args.churn_clients, args.churn_rounds),
                          "storm": storm(servers, args.storm_clients)}
                if variant == "plain":
                    result["inbound"] = inbound(servers, args.inbound_clients, args.inbound_frames)
            finally:
                servers.stop()
            print(json.dumps(result), flush=True)
            results.append(result)
            if args.out:
                with open(args.out, "a") as out:
                    out.write(json.dumps(result) + "\n")

    def median(variant, section, key):
        values = [r[section][key] for r in results if r["variant"] == variant and section in r and r[section].get(key) is not None]
        return statistics.median(values) if values else None

    summary = {"inbound": {k: median("plain", "inbound", k) for k in ("frames_per_s", "bridge_cpu_us_per_frame")}}
    for section, keys in (("churn", ("pairs_per_s", "bridge_cpu_us_per_pair", "redis_cpu_us_per_pair")),
                          ("storm", ("connections_per_s", "bridge_cpu_us_per_connection"))):
        summary[section] = {}
        for key in keys:
            plain, presence = median("plain", section, key), median("presence", section, key)
            summary[section][key] = {"plain": plain, "presence": presence,
                                     "ratio": round(presence / plain, 2) if plain and presence else None}
    print(json.dumps({"medians": summary}, indent=1))


if __name__ == "__main__":
    main()
