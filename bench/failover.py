#!/usr/bin/env python3
"""How long a Sentinel failover blinds the bridge (run by bench/failover.sh).

Starts a master, a replica and three sentinels (redis-server --sentinel,
down-after-milliseconds 1000), the bridge asking them for the master, one WebSocket client
subscribed to `job:load`, and a publisher that PUBLISHes a numbered message every 5 ms to the
master the sentinels name (asking again after an error and when a sentinel announces
+switch-master, as a Sentinel-aware worker does). Then, --planned times, SENTINEL FAILOVER,
and --killed times, the master killed with SIGKILL (and started again, to be made a replica).

For each failover, from its start (SENTINEL FAILOVER accepted, or the kill) until messages
published after the promotion arrive: `blind_s`, the longest time without a message at the
client (a planned failover goes on delivering until the switch; a kill stops it at once);
`resumed_s`, when messages came again after that, counted from the start; `lost`, messages
Redis acknowledged that the client never got; `duplicates` (must be 0); whether a `gap`
notice came. One JSON line
each to --out, and a summary (median and worst) on stderr.
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import redis.asyncio as aioredis
import websockets

MASTER = "mymaster"


def log(text):
    print(text, file=sys.stderr, flush=True)


class Redis:
    """A redis-server on `port`, in its own directory; `--replicaof` when given."""

    def __init__(self, workdir, port, replicaof=None):
        self.port = port
        self.dir = os.path.join(workdir, f"redis-{port}")
        os.makedirs(self.dir, exist_ok=True)
        self.replicaof = replicaof
        self.proc = None

    def start(self):
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                "--save", "", "--appendonly", "no", "--logfile", os.path.join(self.dir, "log")]
        if self.replicaof:
            args += ["--replicaof", "127.0.0.1", str(self.replicaof)]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


async def wait_for(what, check, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except Exception:  # noqa: BLE001 - a server still starting refuses connections
            pass
        await asyncio.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


class Run:
    def __init__(self, args, workdir):
        self.args = args
        self.workdir = workdir
        base = args.base_port
        self.servers = {base: Redis(workdir, base), base + 1: Redis(workdir, base + 1, replicaof=base)}
        self.sentinel_ports = [base + 10, base + 11, base + 12]
        self.sentinels = []
        self.bridge = None
        self.received = {}  # message number → receipt time
        self.order = []  # (receipt time, number) in receipt order
        self.gaps = []  # receipt times of gap notices
        self.acknowledged = {}  # number → publish time
        self.duplicates = 0
        self.stop = False

    async def master_port(self, index=0):
        client = aioredis.Redis(port=self.sentinel_ports[index])
        try:
            _, port = await client.execute_command("SENTINEL", "get-master-addr-by-name", MASTER)
            return int(port)
        finally:
            await client.aclose()

    def start(self):
        for server in self.servers.values():
            server.start()
        master = self.args.base_port
        for port in self.sentinel_ports:
            conf = os.path.join(self.workdir, f"sentinel-{port}.conf")
            with open(conf, "w") as handle:
                handle.write(
                    f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                    f"logfile {self.workdir}/sentinel-{port}.log\n"
                    f"sentinel monitor {MASTER} 127.0.0.1 {master} 2\n"
                    f"sentinel down-after-milliseconds {MASTER} 1000\n"
                    f"sentinel failover-timeout {MASTER} 5000\n")
            self.sentinels.append(subprocess.Popen(["redis-server", conf, "--sentinel"],
                                                   stdin=subprocess.DEVNULL))
        nodes = ", ".join(f"redis://127.0.0.1:{p}" for p in self.sentinel_ports)
        config = os.path.join(self.workdir, "bridge.yaml")
        with open(config, "w") as handle:
            handle.write(
                f"listen: 127.0.0.1:{self.args.bridge_port}\n"
                "redis:\n  url: redis://sentinel-managed/0\n"
                f"  sentinel:\n    master: {MASTER}\n    nodes: [{nodes}]\n"
                "auth:\n  mode: none\n"
                "routes:\n  - name: load\n    pattern: \"job:*\"\n    topic: \"job:{1}\"\n")
        self.bridge = subprocess.Popen(
            [self.args.bridge_bin, "run", "--config", config, "--log-format", "json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.workdir, "bridge.log"), "w"))

    def stop_all(self):
        for proc in [self.bridge, *self.sentinels]:
            if proc and proc.poll() is None:
                proc.terminate()
                proc.wait()
        for server in self.servers.values():
            server.kill()

    async def settled(self):
        """Every sentinel knows the replica (in sync, not down) and the other two sentinels."""
        for port in self.sentinel_ports:
            client = aioredis.Redis(port=port, decode_responses=True)
            try:
                replicas = await client.execute_command("SENTINEL", "replicas", MASTER)
                sentinels = await client.execute_command("SENTINEL", "sentinels", MASTER)
            finally:
                await client.aclose()
            if len(sentinels) < 2 or not replicas:
                return False
            for replica in replicas:
                # A flat list of names and values, or the dict redis-py parses it into (its
                # names with `_` for `-`, flags as is_* booleans).
                fields = dict(zip(replica[::2], replica[1::2])) if isinstance(replica, list) else replica
                down = "down" in str(fields.get("flags", "")) or fields.get("is_sdown") or fields.get("is_odown")
                link = fields.get("master-link-status", fields.get("master_link_status"))
                if down or link != "ok":
                    return False
        return True

    async def publisher(self):
        announcements = aioredis.Redis(port=self.sentinel_ports[0]).pubsub()
        await announcements.subscribe("+switch-master")
        connection = None
        n = 0
        while not self.stop:
            await asyncio.sleep(0.005)
            message = await announcements.get_message(ignore_subscribe_messages=True, timeout=0)
            if message is not None and connection is not None:
                await connection.aclose()
                connection = None
            if connection is None:
                try:
                    port = await self.master_port()
                    connection = aioredis.Redis(port=port, socket_timeout=1)
                    role = await connection.execute_command("ROLE")
                    if role[0] not in (b"master", "master"):
                        raise RuntimeError("not a master")
                except Exception:  # noqa: BLE001 - the master is moving: ask again
                    if connection is not None:
                        await connection.aclose()
                    connection = None
                    continue
            n += 1
            sent = time.monotonic()
            try:
                await connection.publish("job:load", json.dumps({"n": n}))
                self.acknowledged[n] = sent
            except Exception:  # noqa: BLE001
                await connection.aclose()
                connection = None
        await announcements.aclose()

    async def client(self):
        url = f"ws://127.0.0.1:{self.args.bridge_port}/ws"
        async with websockets.connect(url, compression=None, max_queue=None) as ws:
            await ws.recv()  # connected
            await ws.send(json.dumps({"type": "subscribe", "id": 1, "topics": ["job:load"]}))
            while not self.stop:
                try:
                    text = await asyncio.wait_for(ws.recv(), 0.5)
                except asyncio.TimeoutError:
                    continue
                now = time.monotonic()
                frame = json.loads(text)
                if frame.get("type") == "gap":
                    self.gaps.append(now)
                elif frame.get("topic") == "job:load":
                    n = frame["data"]["n"]
                    if n in self.received:
                        self.duplicates += 1
                    self.received[n] = now
                    self.order.append((now, n))

    async def flowing(self, after, count=20):
        """Waits until `count` messages published after `after` have been received."""
        async def check():
            return sum(1 for n, t in self.acknowledged.items() if t > after and n in self.received) >= count
        await wait_for("messages to flow", check, 60)

    def measure(self, kind, index, start, end):
        # Messages flow until the switch (a planned failover) or stop at once (a kill): the
        # blind time is the longest interruption between the failover's start and the end,
        # and `resumed_s` when frames flowed again after it, counted from the start.
        times = [start] + [t for t, _ in self.order if start <= t <= end]
        pairs = list(zip(times, times[1:]))
        silence, resumed = max(((b - a, b) for a, b in pairs), default=(None, None))
        lost = sum(1 for n, t in self.acknowledged.items() if start - 1 <= t <= end and n not in self.received)
        gap = any(start <= t <= end for t in self.gaps)
        return {"tool": "failover", "kind": kind, "run": index,
                "blind_s": round(silence, 3) if silence is not None else None,
                "resumed_s": round(resumed - start, 3) if resumed is not None else None,
                "lost": lost, "duplicates": self.duplicates, "gap_notice": gap}

    async def failovers(self):
        results = []
        plan = ["planned"] * self.args.planned + ["killed"] * self.args.killed
        for index, kind in enumerate(plan):
            await wait_for("the sentinels to settle", self.settled, 90)
            await self.flowing(time.monotonic())
            old = await self.master_port()
            new = next(p for p in self.servers if p != old)
            if kind == "planned":
                async def accepted():
                    client = aioredis.Redis(port=self.sentinel_ports[0])
                    try:
                        await client.execute_command("SENTINEL", "FAILOVER", MASTER)
                        return True
                    finally:
                        await client.aclose()
                await wait_for("SENTINEL FAILOVER to be accepted", accepted, 60)
                start = time.monotonic()
            else:
                start = time.monotonic()
                self.servers[old].kill()

            async def promoted():
                return await self.master_port() == new
            await wait_for("the promotion", promoted, 60)
            promoted_at = time.monotonic()
            if kind == "killed":
                # Back as a master with stale data; the sentinels make it a replica.
                self.servers[old].replicaof = None
                self.servers[old].start()
            await self.flowing(promoted_at)
            end = time.monotonic()
            result = self.measure(kind, index, start, end)
            results.append(result)
            log(f"{kind} failover {index + 1}: {json.dumps(result)}")
            with open(self.args.out, "a") as handle:
                handle.write(json.dumps(result) + "\n")
        return results

    async def main(self):
        self.start()
        await wait_for("the bridge to be ready", self.ready, 60)
        await wait_for("the sentinels to settle", self.settled, 90)
        tasks = [asyncio.create_task(self.client()), asyncio.create_task(self.publisher())]
        try:
            results = await self.failovers()
        finally:
            self.stop = True
            await asyncio.gather(*tasks, return_exceptions=True)
        for kind in ("planned", "killed"):
            blind = [r["blind_s"] for r in results if r["kind"] == kind and r["blind_s"] is not None]
            if blind:
                log(f"{kind}: {len(blind)} failovers, blind median {statistics.median(blind):.2f} s, "
                    f"worst {max(blind):.2f} s; lost {sum(r['lost'] for r in results if r['kind'] == kind)}, "
                    f"duplicates {self.duplicates}")

    async def ready(self):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.args.bridge_port)
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await reader.read()
        writer.close()
        return answer.startswith(b"HTTP/1.1 200")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bridge-bin", required=True)
    parser.add_argument("--planned", type=int, default=5, help="SENTINEL FAILOVERs (5)")
    parser.add_argument("--killed", type=int, default=5, help="masters killed with SIGKILL (5)")
    parser.add_argument("--base-port", type=int, default=16500,
                        help="master, replica: this port and the next; sentinels: +10…+12")
    parser.add_argument("--bridge-port", type=int, default=18085)
    parser.add_argument("--out", required=True, help="JSON lines, appended")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="bench-failover.")
    run = Run(args, workdir)
    try:
        asyncio.run(run.main())
    finally:
        run.stop_all()


if __name__ == "__main__":
    main()
