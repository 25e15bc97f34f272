#!/usr/bin/env python3
"""Soak test of redis-ws-bridge: N WebSocket clients subscribed to M topics for a set time,
while messages are published, the routing file is reloaded and Redis is restarted.

Started by bench/soak.sh, which installs what this needs and builds the bridge. This process
runs its own redis-server and the bridge, and accounts for every message: each payload
carries a per-topic publisher sequence number and its send time, so that every client can
tell lost, duplicated, reordered and late frames. A message is expected only when Redis
answered its PUBLISH; a missing one is explained when the client got a `gap` notice for its
topic covering its send time (published while the bridge was not subscribed, or, for a
resuming client, a resume the bridge could not honour), unexplained otherwise. Resuming
clients drop their connection every few seconds and subscribe again with `since`: what was
published meanwhile must come back as replayed frames, exactly once and in order. Progress goes to stderr every interval, JSON lines to the output file, and the
final summary (with the verdict) to both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from array import array
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

ROOT = Path(__file__).resolve().parent.parent

# What Redis said about a PUBLISH, per message.
PENDING = 0  # no answer yet
HEARD = 1  # answered: delivered to at least one subscriber (the bridge)
UNHEARD = 2  # answered 0: the bridge was not subscribed (lost by pub/sub semantics)
FAILED = 3  # no answer (Redis down): not published, so not expected

# The envelope `type` of the soak route's frames.
FRAME_TYPE = "soak"
# The gap notice's `since` has millisecond resolution.
SINCE_RESOLUTION = 0.001
# Publishing tick: messages due are sent as one pipeline per tick.
TICK = 0.01
# No Redis restart this close to the end, so the last outage is over (and its gap notices
# received) before the final accounting.
RESTART_QUIET_END = 30.0
# At most this many examples of each kind of anomaly in the summary.
EXAMPLES = 20
# RSS growth is judged only over this much time after warm-up: a shorter series mostly shows
# the allocator settling.
RSS_JUDGED_SPAN = 600.0
# The bridge's own counters in the summary, read from /metrics at the end: they tell where a
# message went missing (before the bridge, in it, or after).
BRIDGE_METRICS = {
    "redis_messages_received": "bridge_redis_messages_received_total",
    "messages_delivered": 'bridge_messages_delivered_total{route="soak"}',
    "dropped_queue_full": 'bridge_messages_dropped_total{reason="queue_full"}',
    "dropped_slow_client": 'bridge_messages_dropped_total{reason="slow_client"}',
    "dropped_closing": 'bridge_messages_dropped_total{reason="closing"}',
    "slow_client_disconnects": "bridge_slow_client_disconnects_total",
    "redis_reconnects": "bridge_redis_reconnects_total",
    "redis_stalls": "bridge_redis_stalls_total",
}


@dataclass
class Settings:
    minutes: float
    clients: int
    topics: int
    topics_per_client: int
    rate: float
    payload_bytes: int
    reload_every: float
    sighup_every: int
    restart_every: float
    redis_down: float
    rss_every: float
    interval: float
    late_ms: float
    max_late_ratio: float
    warmup: float
    max_rss_slope: float
    drain: float
    seed: int
    port: int
    redis_port: int
    bridge_bin: Path
    out: Path
    workdir: Path | None
    connect_concurrency: int
    resumers: int
    drop_every: float
    away: float
    history: int


class Ledger:
    """Every message the publisher made, per topic, indexed by its publisher sequence
    number: when it was sent and what Redis answered."""

    def __init__(self, topics: int) -> None:
        self.sent_at: list[array[float]] = [array("d") for _ in range(topics)]
        self.status: list[bytearray] = [bytearray() for _ in range(topics)]

    def add(self, topic: int, sent_at: float) -> int:
        self.sent_at[topic].append(sent_at)
        self.status[topic].append(PENDING)
        return len(self.status[topic]) - 1


@dataclass
class Stats:
    """Counters over the whole run; the progress lines show their increase per interval."""

    published: int = 0  # answered by Redis (HEARD or UNHEARD)
    published_unheard: int = 0
    publish_failed: int = 0
    delivered: int = 0  # first copies received
    delivered_unconfirmed: int = 0  # received although the PUBLISH got no answer
    lost_explained: int = 0
    # Of those, messages Redis had handed to the bridge (PUBLISH answered ≥ 1): possible only
    # when Redis died with them still in its output buffer.
    lost_explained_heard: int = 0
    lost_unexplained: int = 0
    # Of those, resuming clients' messages published while the bridge had no subscription
    # (after a Redis restart) whose `gap` notice came while the client was away.
    lost_unheard_away: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    bridge_seq_breaks: int = 0
    unexpected_frames: int = 0
    late: int = 0
    gap_notices: int = 0
    gap_topics_mismatch: int = 0
    disconnections: int = 0
    renames: int = 0
    sighups: int = 0
    restarts: int = 0
    # Resuming clients: their drops, the resubscribes answered, the frames that came back by
    # replay (published before the resuming subscribe was sent) and the resume gap notices.
    drops: int = 0
    resumes: int = 0
    replayed: int = 0
    resume_gaps: int = 0
    epoch_changed: int = 0  # of those: never, the bridge runs for the whole soak

    def snapshot(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class Gap:
    since: float
    received_at: float
    topics: frozenset[int]
    # redis_reconnected, or epoch_changed / history_exhausted answering a resume.
    reason: str = "redis_reconnected"


@dataclass
class TopicState:
    last: int = -1  # highest publisher sequence number received
    bridge_seq: int | None = None  # the envelope `seq` of that frame
    # Skipped sequence numbers not received (yet), with what they were booked as, so that a
    # late arrival is told from a duplicate and unbooked.
    missing: dict[int, str | None] = field(default_factory=dict)


@dataclass
class Outage:
    down_at: float
    up_at: float | None = None


class Soak:
    def __init__(self, settings: Settings, out: TextIO) -> None:
        self.s = settings
        self.out = out
        self.stats = Stats()
        self.ledger = Ledger(settings.topics)
        self.topic_index = {f"job:{i}": i for i in range(settings.topics)}
        self.clients: list[Client] = []
        self.outages: list[Outage] = []
        self.rss: list[tuple[float, int]] = []  # (elapsed s, KiB)
        self.latencies: list[float] = []  # this interval's, seconds
        self.all_latency_max = 0.0
        self.latency_hist: dict[int, int] = {}  # whole run: latency in ms → count
        self.loop_lag_max = 0.0
        self.examples: dict[str, list[dict[str, Any]]] = {}
        self.last_frame_at = time.time()
        self.started_at = time.time()  # reset when publishing starts
        self.stopping = False  # set before the bridge is stopped: its closes are expected
        self.stop = asyncio.Event()
        self.stop_reasons: list[str] = []
        self.redis_proc: asyncio.subprocess.Process | None = None
        self.bridge_proc: asyncio.subprocess.Process | None = None
        self.generation = 0
        self.tasks: list[asyncio.Task[None]] = []
        self.reported = self.stats.snapshot()
        self.cpu_mark = (cpu_seconds(), time.monotonic())

    # -- output ---------------------------------------------------------------------------

    def elapsed(self) -> float:
        return round(time.time() - self.started_at, 3)

    def write(self, record: dict[str, Any]) -> None:
        self.out.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.out.flush()

    def event(self, name: str, **fields: Any) -> None:
        self.write({"kind": "event", "t": self.elapsed(), "event": name, **fields})

    def example(self, kind: str, **fields: Any) -> None:
        found = self.examples.setdefault(kind, [])
        if len(found) < EXAMPLES:
            found.append(fields)

    def halt(self, reason: str) -> None:
        if reason not in self.stop_reasons:
            self.stop_reasons.append(reason)
        self.stop.set()

    # -- processes ------------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        assert self.s.workdir is not None
        return self.s.workdir

    def record_pids(self) -> None:
        """Lists the processes this run started, for bench/soak.sh to end should this process
        be killed before it could."""
        pids = [p.pid for p in (self.redis_proc, self.bridge_proc) if p and p.returncode is None]
        (self.workdir / "pids").write_text("".join(f"{pid}\n" for pid in pids))

    async def start_redis(self) -> None:
        data = self.workdir / "redis"
        data.mkdir(exist_ok=True)
        log = open(self.s.out.with_suffix(".redis.log"), "ab")
        self.redis_proc = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(self.s.redis_port), "--bind", "127.0.0.1",
            "--dir", str(data), "--save", "", "--appendonly", "no", "--loglevel", "warning",
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            # Its own session: a Ctrl-C reaches this process only, which stops the others in
            # order.
            start_new_session=True,
        )
        log.close()
        self.record_pids()
        client = aioredis.Redis(port=self.s.redis_port, socket_connect_timeout=0.5)
        try:
            for _ in range(100):
                try:
                    if await client.ping():
                        return
                except (RedisError, OSError):
                    await asyncio.sleep(0.1)
        finally:
            await client.aclose()
        raise RuntimeError(f"redis-server did not answer on port {self.s.redis_port}")

    async def stop_redis(self) -> None:
        """SHUTDOWN NOSAVE, as an operator would, then waits for the process to end."""
        # No retries: the connection closing under SHUTDOWN is its answer.
        client = aioredis.Redis(port=self.s.redis_port, socket_connect_timeout=1,
                                retry=Retry(NoBackoff(), 0))
        try:
            await client.execute_command("SHUTDOWN", "NOSAVE")
        except (RedisError, OSError):
            pass  # the connection closes under the command: that is the success case
        finally:
            await client.aclose()
        assert self.redis_proc is not None
        try:
            await asyncio.wait_for(self.redis_proc.wait(), 10)
        except TimeoutError:
            self.redis_proc.kill()
            await self.redis_proc.wait()
        self.record_pids()

    def routing_yaml(self) -> str:
        # The job route never changes, so no reload may take a subscription away; what changes
        # is a second route on a channel of its own (a SUBSCRIBE and an UNSUBSCRIBE at every
        # switch) and a websocket setting.
        g = self.generation
        return f"""# Written by bench/soak.py, generation {g}.
listen: 127.0.0.1:{self.s.port}
redis:
  url: redis://127.0.0.1:{self.s.redis_port}/0
websocket:
  path: /ws
  max_connections: {self.s.clients + self.s.resumers + 100}
  max_connections_per_ip: {self.s.clients + self.s.resumers + 100}
  max_subscriptions: {max(self.s.topics_per_client, 1000)}
  send_queue: 256
  slow_client: disconnect
  ping_interval: 30s
  idle_timeout: 120s
  client_rate: {20 + g % 2 * 5}/s
auth:
  mode: none
routes:
  - name: soak
    pattern: "job:*"
    topic: "job:{{1}}"
    type: {FRAME_TYPE}
{self.history_yaml()}  - name: reload-{g}
    channel: "soak-reload:{g}"
    topic: reload
"""

    def history_yaml(self) -> str:
        if self.s.history <= 0:
            return ""
        return f"    history: {{ size: {self.s.history}, ttl: 10m }}\n"

    def write_routing(self) -> None:
        """Replaces the routing file by rename, as deployment tools do."""
        path = self.workdir / "bridge.yaml"
        fresh = self.workdir / f".bridge.yaml.{self.generation}"
        fresh.write_text(self.routing_yaml())
        os.replace(fresh, path)

    async def start_bridge(self) -> None:
        self.write_routing()
        log = open(self.s.out.with_suffix(".bridge.log"), "ab")
        self.bridge_proc = await asyncio.create_subprocess_exec(
            str(self.s.bridge_bin), "run", "--config", str(self.workdir / "bridge.yaml"),
            "--log-level", "info",
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
        log.close()
        self.record_pids()
        # Ready means listening and subscribed: clients and publishing may start.
        for _ in range(300):
            if self.bridge_proc.returncode is not None:
                break
            try:
                status = await asyncio.to_thread(http_status, self.url("/readyz"))
                if status == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError("the bridge did not become ready (see its log)")

    async def stop_bridge(self) -> None:
        proc = self.bridge_proc
        if proc is None or proc.returncode is not None:
            return
        self.stopping = True
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        self.record_pids()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.s.port}{path}"

    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.s.port}/ws"

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.url("/metrics"), timeout=5) as answer:
            text = answer.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    values[name] = float(value)
                except ValueError:
                    pass
        return values

    # -- clients --------------------------------------------------------------------------

    def topics_of(self, i: int) -> list[int]:
        """Client i's topics: consecutive runs, so every topic gets N·k/M subscribers."""
        k = self.s.topics_per_client
        return sorted({(i * k + j) % self.s.topics for j in range(k)})

    async def connect_clients(self) -> None:
        gate = asyncio.Semaphore(self.s.connect_concurrency)
        ws_url = self.ws_url()

        # The resuming clients come after the others, on the same topic runs.
        total = self.s.clients + self.s.resumers

        async def one(i: int) -> Client:
            async with gate:
                client = Client(self, i, self.topics_of(i), resumer=i >= self.s.clients)
                await client.open(ws_url)
                return client

        results = await asyncio.gather(*(one(i) for i in range(total)), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        self.clients = [r for r in results if isinstance(r, Client)]
        if failures:
            raise RuntimeError(f"{len(failures)} of {total} clients could not connect "
                               f"and subscribe; first: {failures[0]!r}")

    # -- accounting -----------------------------------------------------------------------

    def book_missing(self, client: Client, topic: int, seq: int) -> bool:
        """Books one missing message once what Redis answered is known; False while not."""
        status = self.ledger.status[topic][seq]
        if status == PENDING:
            return False
        state = client.topics[topic]
        if status == FAILED:
            state.missing[seq] = "unpublished"
            return True
        sent_at = self.ledger.sent_at[topic][seq]
        explained = any(topic in gap.topics
                        and gap.since - SINCE_RESOLUTION <= sent_at <= gap.received_at
                        for gap in client.gaps)
        if not explained and status == UNHEARD and client.resumer:
            # Published while the bridge was not subscribed: nobody had it to replay. A
            # resuming client that was away when the bridge sent its `redis_reconnected`
            # notice is told nothing of it by the resume: counted apart, as unexplained.
            self.stats.lost_unheard_away += 1
        if explained:
            state.missing[seq] = "explained"
            self.stats.lost_explained += 1
            self.stats.lost_explained_heard += status == HEARD
        else:
            state.missing[seq] = "unexplained"
            self.stats.lost_unexplained += 1
            self.example("lost_unexplained", client=client.index, topic=f"job:{topic}",
                         pub_seq=seq, sent_at=iso(sent_at),
                         redis_answer="unheard" if status == UNHEARD else "heard",
                         gaps=[iso(gap.since) + ".." + iso(gap.received_at) for gap in client.gaps])
        return True

    def book_received(self, topic: int, seq: int) -> bool:
        """Counts a received message whose PUBLISH got no answer; False while unknown."""
        status = self.ledger.status[topic][seq]
        if status == PENDING:
            return False
        if status == FAILED:
            self.stats.delivered_unconfirmed += 1
        return True

    def settle(self) -> None:
        """Books what waited for Redis's answer to its PUBLISH."""
        for client in self.clients:
            if client.unbooked:
                client.unbooked = [(t, s) for t, s in client.unbooked
                                   if not self.book_missing(client, t, s)]
            if client.unconfirmed:
                client.unconfirmed = [(t, s) for t, s in client.unconfirmed
                                      if not self.book_received(t, s)]

    def book_tails(self) -> None:
        """After the drain: every expected message a client never received after its last one
        is lost too (up to its disconnection, if it was disconnected)."""
        for client in self.clients:
            for topic, state in client.topics.items():
                sent_at = self.ledger.sent_at[topic]
                for seq in range(state.last + 1, len(sent_at)):
                    if client.closed_at is not None and sent_at[seq] >= client.closed_at:
                        break
                    state.missing[seq] = None
                    client.unbooked.append((topic, seq))
        self.settle()

    def caught_up(self) -> bool:
        """Whether every connected client has the last message Redis delivered on each of its
        topics."""
        last = [max(s.rfind(HEARD), s.rfind(PENDING)) for s in self.ledger.status]
        return all(client.closed_at is not None
                   or (not client.away
                       and all(st.last >= last[t] for t, st in client.topics.items()))
                   for client in self.clients)

    def expected_from_ledger(self) -> int:
        """What the clients should have been sent, counted from the publisher's side: an
        independent check of the clients' own accounting."""
        published = [s.count(HEARD) + s.count(UNHEARD) for s in self.ledger.status]
        total = 0
        for client in self.clients:
            for topic in client.topics:
                if client.closed_at is None:
                    total += published[topic]
                    continue
                status, sent_at = self.ledger.status[topic], self.ledger.sent_at[topic]
                total += sum(1 for seq in range(len(status))
                             if status[seq] in (HEARD, UNHEARD) and sent_at[seq] < client.closed_at)
        return total

    # -- the run --------------------------------------------------------------------------

    async def publisher(self) -> None:
        # No retries: a PUBLISH retried after a lost answer could be published twice and pass
        # for a duplicate of the bridge's.
        client = aioredis.Redis(port=self.s.redis_port, retry=Retry(NoBackoff(), 0),
                                socket_timeout=2, socket_connect_timeout=1)
        rng = random.Random(self.s.seed)
        pad = "x" * max(0, self.s.payload_bytes - 60)
        start = time.monotonic()
        made = 0
        try:
            while not self.stop.is_set():
                due = int((time.monotonic() - start) * self.s.rate) - made
                if due > 0:
                    made += due
                    await self.publish_batch(client, rng, pad, due)
                await asyncio.sleep(TICK)
        finally:
            await client.aclose()

    async def publish_batch(self, client: aioredis.Redis, rng: random.Random, pad: str,
                            count: int) -> None:
        pipe = client.pipeline(transaction=False)
        batch: list[tuple[int, int]] = []
        for _ in range(count):
            topic = rng.randrange(self.s.topics)
            sent_at = time.time()
            seq = self.ledger.add(topic, sent_at)
            payload = json.dumps({"pub_seq": seq, "sent_at": sent_at, "pad": pad})
            pipe.publish(f"job:{topic}", payload)
            batch.append((topic, seq))
        try:
            answers: list[Any] = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError):
            answers = [None] * count
        for (topic, seq), answer in zip(batch, answers):
            if isinstance(answer, int):
                self.ledger.status[topic][seq] = HEARD if answer > 0 else UNHEARD
                self.stats.published += 1
                self.stats.published_unheard += answer == 0
            else:
                self.ledger.status[topic][seq] = FAILED
                self.stats.publish_failed += 1

    async def reloader(self) -> None:
        if self.s.reload_every <= 0:
            return
        while True:
            await asyncio.sleep(self.s.reload_every)
            self.generation += 1
            if self.s.sighup_every > 0 and self.generation % self.s.sighup_every == 0:
                assert self.bridge_proc is not None
                self.bridge_proc.send_signal(signal.SIGHUP)
                self.stats.sighups += 1
                self.event("sighup", generation=self.generation)
            else:
                self.write_routing()
                self.stats.renames += 1
                self.event("rename", generation=self.generation)

    async def restarter(self) -> None:
        if self.s.restart_every <= 0:
            return
        deadline = self.started_at + self.s.minutes * 60
        while True:
            await asyncio.sleep(self.s.restart_every)
            if time.time() + self.s.redis_down + RESTART_QUIET_END > deadline:
                return
            outage = Outage(down_at=time.time())
            self.outages.append(outage)
            self.stats.restarts += 1
            self.event("redis_shutdown", restart=self.stats.restarts)
            await self.stop_redis()
            await asyncio.sleep(self.s.redis_down)
            await self.start_redis()
            outage.up_at = time.time()
            self.event("redis_up", restart=self.stats.restarts,
                       down_s=round(outage.up_at - outage.down_at, 3))

    async def rss_sampler(self) -> None:
        assert self.bridge_proc is not None
        path = Path(f"/proc/{self.bridge_proc.pid}/status")
        while True:
            try:
                kib = next(int(line.split()[1]) for line in path.read_text().splitlines()
                           if line.startswith("VmRSS:"))
            except (OSError, StopIteration):
                return  # the bridge is gone; bridge_watch says so
            t = self.elapsed()
            self.rss.append((t, kib))
            self.write({"kind": "rss", "t": t, "rss_kib": kib})
            await asyncio.sleep(self.s.rss_every)

    async def bridge_watch(self) -> None:
        assert self.bridge_proc is not None
        code = await self.bridge_proc.wait()
        self.record_pids()
        if not self.stopping:
            self.event("bridge_exit", code=code)
            self.halt(f"the bridge exited with status {code} during the run")

    async def lag_probe(self) -> None:
        # How late this process's own event loop runs: latencies include it.
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.1)
            self.loop_lag_max = max(self.loop_lag_max, time.monotonic() - before - 0.1)

    async def reporter(self) -> None:
        while True:
            await asyncio.sleep(self.s.interval)
            await self.report()

    async def report(self) -> None:
        """One progress line: totals, what changed since the previous line, and this
        interval's latencies."""
        self.settle()
        now = self.stats.snapshot()
        delta = {k: now[k] - self.reported[k] for k in now}
        self.reported = now
        cpu, wall = cpu_seconds(), time.monotonic()
        tool_cpu = (cpu - self.cpu_mark[0]) / max(wall - self.cpu_mark[1], 1e-9)
        self.cpu_mark = (cpu, wall)
        latencies, self.latencies = sorted(self.latencies), []
        lag, self.loop_lag_max = self.loop_lag_max, 0.0
        try:
            metrics = await asyncio.to_thread(self.metrics)
        except OSError:
            metrics = {}
        open_clients = sum(c.closed_at is None for c in self.clients)
        rss_mib = self.rss[-1][1] / 1024 if self.rss else None
        lat = percentiles(latencies)
        self.write({
            "kind": "interval", "t": self.elapsed(), "totals": now, "delta": delta,
            "latency_ms": lat, "rss_mib": rss_mib, "clients_open": open_clients,
            "bridge_connections": metrics.get("bridge_connections"),
            "tool_cpu": round(tool_cpu, 3), "loop_lag_ms_max": round(lag * 1000, 1),
        })
        print(f"[{self.elapsed():6.0f}s] pub {now['published']} (+{delta['published']}, "
              f"failed {now['publish_failed']}) dlv {now['delivered']} (+{delta['delivered']}) "
              f"lost {now['lost_explained']} expl/{now['lost_unexplained']} unexpl "
              f"dup {now['duplicates']} ooo {now['out_of_order']} late {now['late']} "
              f"lat p50/p99/max {lat['p50']}/{lat['p99']}/{lat['max']} ms "
              f"rss {rss_mib or 0:.1f} MiB conn {open_clients}/{len(self.clients)} "
              f"reloads {now['renames'] + now['sighups']} restarts {now['restarts']} "
              f"resumes {now['resumes']}/{now['drops']} replayed {now['replayed']} "
              f"resume gaps {now['resume_gaps']} "
              f"cpu {tool_cpu:.2f}", file=sys.stderr, flush=True)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.halt, "interrupted")
        self.write({"kind": "start", "time": iso(time.time()), "commit": git_commit(),
                    "settings": {k: str(v) if isinstance(v, Path) else v
                                 for k, v in vars(self.s).items()},
                    "nproc": os.cpu_count(), "loadavg": os.getloadavg()})
        try:
            return await self.soak()
        finally:
            # Also on an error or a second signal: nothing this run started outlives it.
            self.stopping = True
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.stop_bridge()
            if self.redis_proc is not None and self.redis_proc.returncode is None:
                self.redis_proc.terminate()
                await self.redis_proc.wait()
                self.record_pids()

    async def soak(self) -> int:
        # Another server there would be restarted and measured in place of ours.
        for port in (self.s.redis_port, self.s.port):
            if await port_open(port):
                raise RuntimeError(f"127.0.0.1:{port} is already in use (another soak?): "
                                   "choose others with --redis-port / --port")
        await self.start_redis()
        await self.start_bridge()
        assert self.bridge_proc is not None
        print(f"bridge pid {self.bridge_proc.pid}; connecting {self.s.clients} clients",
              file=sys.stderr, flush=True)
        await self.connect_clients()
        self.event("subscribed", clients=len(self.clients))
        self.started_at = time.time()
        self.cpu_mark = (cpu_seconds(), time.monotonic())
        self.tasks = [c.reader for c in self.clients if c.reader is not None]
        self.tasks += [asyncio.create_task(c.cycle(self.ws_url()))
                       for c in self.clients if c.resumer]
        watchers = [asyncio.create_task(c) for c in
                    (self.bridge_watch(), self.lag_probe(), self.reporter())]
        chaos = [asyncio.create_task(c) for c in
                 (self.reloader(), self.restarter(), self.rss_sampler())]
        publisher = asyncio.create_task(self.publisher())
        self.tasks += watchers + chaos + [publisher]
        try:
            await asyncio.wait_for(self.stop.wait(), self.s.minutes * 60)
        except TimeoutError:
            self.stop.set()  # ends the publisher's loop at its next tick
        await publisher
        for task in chaos:
            task.cancel()
        await asyncio.gather(*chaos, return_exceptions=True)
        interrupted = "interrupted" in self.stop_reasons
        if not interrupted and self.bridge_proc.returncode is None:
            if self.redis_proc is None or self.redis_proc.returncode is not None:
                await self.start_redis()  # an outage cut short by the end
            await self.drain()
        self.book_tails()
        metrics: dict[str, float] = {}
        if self.bridge_proc.returncode is None:
            try:
                metrics = await asyncio.to_thread(self.metrics)
            except OSError:
                pass
        await self.report()
        summary = self.summary(metrics)
        self.write(summary)
        print(json.dumps({k: v for k, v in summary.items() if k != "rss_mib"}, indent=1),
              file=sys.stderr)
        rss = summary["rss_mib"]
        print(f"rss MiB: first {rss.get('first')} min {rss.get('min')} max {rss.get('max')} "
              f"last {rss.get('last')} slope {rss.get('slope_mib_per_h')} MiB/h after "
              f"{self.s.warmup:.0f} s", file=sys.stderr)
        print(f"verdict: {summary['verdict']}" + "".join(f"\n  - {r}" for r in summary["reasons"]),
              file=sys.stderr)
        print(f"results: {self.s.out}", file=sys.stderr)
        if interrupted:
            return 130
        return 0 if summary["verdict"] == "PASS" else 1

    async def drain(self) -> None:
        """Waits for the frames in flight: until every client has the last message of each of
        its topics, or nothing arrived for `drain` seconds."""
        deadline = time.time() + 120
        while time.time() < deadline:
            self.settle()
            if self.caught_up() or time.time() - self.last_frame_at > self.s.drain:
                return
            await asyncio.sleep(0.1)

    def summary(self, metrics: dict[str, float]) -> dict[str, Any]:
        st = self.stats
        accounted = st.delivered - st.delivered_unconfirmed + st.lost_explained + st.lost_unexplained
        expected = self.expected_from_ledger()
        gaps = self.gap_report()
        rss = self.rss_report()
        reloads_ok = metrics.get('bridge_config_reloads_total{result="ok"}')
        reloads_error = metrics.get('bridge_config_reloads_total{result="error"}')
        close_codes: dict[str, int] = {}
        for client in self.clients:
            if client.close_code is not None:
                close_codes[str(client.close_code)] = close_codes.get(str(client.close_code), 0) + 1
        reasons: list[str] = list(self.stop_reasons)
        checks = [
            (st.lost_unexplained, "lost_unexplained"), (st.duplicates, "duplicates"),
            (st.out_of_order, "out_of_order"), (st.disconnections, "disconnections"),
            (st.unexpected_frames, "unexpected_frames"),
            (st.bridge_seq_breaks, "bridge_seq_breaks (frames dropped inside the bridge)"),
            (gaps["missing"], "gap notices missing after a Redis restart"),
            (gaps["extra"], "gap notices without a Redis restart"),
            (st.gap_topics_mismatch, "gap notices naming other topics than the client's"),
            (st.epoch_changed, "epoch_changed answering a resume (the bridge never restarted)"),
        ]
        reasons += [f"{what}: {count}" for count, what in checks if count]
        if self.s.resumers and (st.resumes == 0 or st.replayed == 0):
            reasons.append("the resuming clients resumed or replayed nothing")
        if st.published == 0 or st.delivered == 0:
            reasons.append("nothing was published or delivered")
        if accounted != expected:
            reasons.append(f"the soak's own accounting does not add up: {expected} expected, "
                           f"{accounted} received or counted lost")
        late_ratio = st.late / st.delivered if st.delivered else 0.0
        if late_ratio > self.s.max_late_ratio:
            reasons.append(f"late frames: {st.late} ({late_ratio:.2%} of delivered, over "
                           f"{self.s.max_late_ratio:.2%})")
        if reloads_error:
            reasons.append(f"reloads rejected by the bridge: {reloads_error:.0f}")
        if reloads_ok is not None and reloads_ok < st.renames + st.sighups:
            reasons.append(f"reloads applied {reloads_ok:.0f} < reloads made {st.renames + st.sighups}")
        slope = rss["slope_mib_per_h"]
        if rss["judged"] and slope > self.s.max_rss_slope:
            reasons.append(f"RSS grows {slope:.1f} MiB/h after warm-up (limit "
                           f"{self.s.max_rss_slope:g})")
        return {
            "kind": "summary", "t": self.elapsed(), "verdict": "FAIL" if reasons else "PASS",
            "reasons": reasons,
            "clients": len(self.clients), "topics": self.s.topics,
            "published": st.published, "published_unheard": st.published_unheard,
            "publish_failed": st.publish_failed, "expected": expected, "accounted": accounted,
            "delivered": st.delivered, "delivered_unconfirmed": st.delivered_unconfirmed,
            "lost_explained": st.lost_explained,
            "lost_explained_heard": st.lost_explained_heard,
            "lost_unexplained": st.lost_unexplained,
            "duplicates": st.duplicates, "out_of_order": st.out_of_order,
            "bridge_seq_breaks": st.bridge_seq_breaks, "unexpected_frames": st.unexpected_frames,
            "late": st.late, "late_threshold_ms": self.s.late_ms,
            "latency_ms": self.run_latency(),
            "disconnections": st.disconnections, "close_codes": close_codes,
            "resumers": {"clients": self.s.resumers, "drops": st.drops, "resumes": st.resumes,
                         "replayed": st.replayed, "live": st.delivered - st.replayed,
                         "resume_gaps": st.resume_gaps,
                         "lost_unheard_away": st.lost_unheard_away},
            "reloads": {"renames": st.renames, "sighups": st.sighups, "bridge_ok": reloads_ok,
                        "bridge_error": reloads_error},
            "redis_restarts": st.restarts,
            "bridge": {name: metrics.get(key) for name, key in BRIDGE_METRICS.items()},
            "gap_notices": gaps,
            "rss_mib": rss,
            "examples": self.examples,
        }

    def run_latency(self) -> dict[str, float | None]:
        total = sum(self.latency_hist.values())
        result: dict[str, float | None] = {"p50": None, "p99": None, "p999": None,
                                           "max": round(self.all_latency_max * 1000, 1)}
        if not total:
            return result
        marks = {"p50": 0.5, "p99": 0.99, "p999": 0.999}
        seen = 0
        for ms in sorted(self.latency_hist):
            seen += self.latency_hist[ms]
            for name, q in marks.items():
                if result[name] is None and seen >= q * total:
                    result[name] = ms
        return result

    def gap_report(self) -> dict[str, Any]:
        """One gap notice per client per Redis restart, received after Redis was back."""
        expected = missing = extra = 0
        resubscribed: list[float] = []
        for k, outage in enumerate(self.outages):
            end = self.outages[k + 1].down_at if k + 1 < len(self.outages) else float("inf")
            first: float | None = None
            for client in self.clients:
                # A resuming client may be away when the notice goes out.
                if client.resumer or client.closed_at is not None and client.closed_at < end:
                    continue
                expected += 1
                got = [g for g in client.gaps if outage.down_at <= g.received_at < end
                       and g.reason == "redis_reconnected"]
                missing += not got
                extra += max(0, len(got) - 1)
                for g in got:
                    first = g.received_at if first is None else min(first, g.received_at)
            if first is not None and outage.up_at is not None:
                resubscribed.append(round(first - outage.up_at, 3))
        before_any = sum(1 for c in self.clients for g in c.gaps
                         if g.reason == "redis_reconnected"
                         and (not self.outages or g.received_at < self.outages[0].down_at))
        return {"expected": expected, "received": self.stats.gap_notices,
                "resume_gaps": self.stats.resume_gaps, "missing": missing,
                "extra": extra + before_any,
                "first_after_redis_up_s": resubscribed}

    def rss_report(self) -> dict[str, Any]:
        if not self.rss:
            return {"samples": 0, "slope_mib_per_h": None, "judged": False}
        mib = [kib / 1024 for _, kib in self.rss]
        after = [(t, kib / 1024) for t, kib in self.rss if t >= self.s.warmup]
        slope = None
        if len(after) >= 5:
            n = len(after)
            mt = sum(t for t, _ in after) / n
            mr = sum(r for _, r in after) / n
            var = sum((t - mt) ** 2 for t, _ in after)
            if var > 0:
                slope = round(sum((t - mt) * (r - mr) for t, r in after) / var * 3600, 2)
        return {
            "samples": len(mib), "first": round(mib[0], 1), "min": round(min(mib), 1),
            "max": round(max(mib), 1), "last": round(mib[-1], 1), "warmup_s": self.s.warmup,
            "after_warmup_first": round(after[0][1], 1) if after else None,
            "slope_mib_per_h": slope,
            "judged": (slope is not None and self.s.max_rss_slope > 0
                       and after[-1][0] - after[0][0] >= RSS_JUDGED_SPAN),
            "series": [[t, round(kib / 1024, 1)] for t, kib in self.rss],
        }


class Client:
    """One WebSocket connection subscribed to its topics, checking every frame. A resuming
    client (`resumer`) drops its connection every few seconds, stays away a moment, and
    subscribes again with `since`: the epoch and each topic's last envelope `seq`."""

    def __init__(self, soak: Soak, index: int, topics: list[int], resumer: bool = False) -> None:
        self.soak = soak
        self.index = index
        self.resumer = resumer
        self.epoch: str | None = None
        self.away = False  # dropped, not resubscribed yet
        self.dropping = False  # the connection ending now is a drop of our own
        self.dropped_at = 0.0
        # When the current connection's subscribe was sent: a frame published before it can
        # only have come by replay.
        self.subscribed_at = 0.0
        self.resumed = False
        self.topics = {t: TopicState() for t in topics}
        self.gaps: list[Gap] = []
        self.ws: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None
        self.closed_at: float | None = None
        self.close_code: int | None = None
        # Missing and received messages whose PUBLISH answer had not come yet.
        self.unbooked: list[tuple[int, int]] = []
        self.unconfirmed: list[tuple[int, int]] = []

    async def open(self, url: str) -> None:
        # The bridge pings; a ping of our own would only add timeouts that a busy event loop
        # could trip. No compression: the bridge does not negotiate it.
        self.ws = await connect(url, ping_interval=None, compression=None, proxy=None,
                                open_timeout=30, close_timeout=2, max_queue=64)
        first = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
        if first.get("type") != "connected":
            raise RuntimeError(f"client {self.index}: first frame {first}")
        self.epoch = first.get("epoch")
        names = [f"job:{t}" for t in self.topics]
        self.subscribed_at = time.time()
        await self.ws.send(json.dumps({"type": "subscribe", "id": 1, "topics": names}))
        answer = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
        if answer.get("type") != "subscribed" or sorted(answer.get("topics", [])) != sorted(names):
            raise RuntimeError(f"client {self.index}: subscribe answered {answer}")
        if not self.resumer:
            self.reader = asyncio.create_task(self.read())

    async def cycle(self, url: str) -> None:
        """A resuming client's life: read, drop (the TCP connection aborted, as a network
        loss would), stay away, resume with `since`; until the publishing ends."""
        soak = self.soak
        rng = random.Random(soak.s.seed * 100_003 + self.index)
        while True:
            reader = asyncio.create_task(self.read())
            stopped = asyncio.create_task(soak.stop.wait())
            try:
                delay = soak.s.drop_every * rng.uniform(0.5, 1.5)
                await asyncio.wait([reader, stopped], timeout=delay,
                                   return_when=asyncio.FIRST_COMPLETED)
                if reader.done() or soak.stop.is_set():
                    # Publishing is over: connected until the end, as the other clients.
                    await reader
                    return
                assert self.ws is not None
                self.dropping = self.away = True
                self.dropped_at = time.time()
                soak.stats.drops += 1
                self.ws.transport.abort()
                await reader
            finally:
                reader.cancel()
                stopped.cancel()
            self.dropping = False
            await asyncio.sleep(rng.uniform(0, soak.s.away))
            if not await self.resume(url):
                return

    async def resume(self, url: str) -> bool:
        """Reconnects and sends the resuming subscribe; False when the bridge could not be
        reached (a disconnection, which fails the run)."""
        # Retried: the tool's own load may slow a handshake past its time-out.
        for attempt in range(10):
            try:
                self.ws = await connect(url, ping_interval=None, compression=None, proxy=None,
                                        open_timeout=30, close_timeout=2, max_queue=64)
                first = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
                break
            except (OSError, WebSocketException, TimeoutError) as err:
                self.soak.example("reconnect_failed", client=self.index, error=repr(err))
                await asyncio.sleep(0.2 * (attempt + 1))
        else:
            self.closed(None, "could not reconnect")
            return False
        seq = {f"job:{t}": st.bridge_seq or 0 for t, st in self.topics.items()}
        since = {"epoch": self.epoch, "seq": seq}
        self.epoch = first.get("epoch")
        self.subscribed_at = time.time()
        self.resumed = False
        await self.ws.send(json.dumps({"type": "subscribe", "id": 2, "topics": list(seq),
                                       "since": since}))
        return True

    async def read(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                self.on_frame(raw, time.time())
        except (ConnectionClosed, WebSocketException, OSError):
            pass
        finally:
            # A drop of our own is no disconnection: the client comes back.
            if not self.dropping:
                self.closed(self.ws.close_code, self.ws.close_reason)

    def closed(self, code: int | None, reason: str | None) -> None:
        self.closed_at = time.time()
        self.close_code = code
        if not self.soak.stopping:
            self.soak.stats.disconnections += 1
            self.soak.event("disconnected", client=self.index, code=code, reason=reason)

    def on_frame(self, raw: str | bytes, now: float) -> None:
        soak = self.soak
        soak.last_frame_at = now
        frame = json.loads(raw)
        kind = frame.get("type")
        if kind == FRAME_TYPE:
            self.on_message(frame, now)
        elif kind == "gap" and frame.get("reason") in ("epoch_changed", "history_exhausted"):
            # What the resume could not replay: published since the drop (or before it, still
            # in flight when the connection went).
            topics = frozenset(soak.topic_index.get(t, -1) for t in frame.get("topics", []))
            self.gaps.append(Gap(since=0.0 if frame["reason"] == "epoch_changed"
                                 else self.last_received_at(topics),
                                 received_at=now, topics=topics, reason=frame["reason"]))
            soak.stats.resume_gaps += 1
            soak.stats.epoch_changed += frame["reason"] == "epoch_changed"
            soak.example("resume_gap", client=self.index, frame=frame)
            for topic in topics:
                if topic in self.topics:
                    self.topics[topic].bridge_seq = None  # the jump is announced
            if not self.resumer or frame.get("id") != 2 or not topics <= self.topics.keys():
                soak.stats.gap_topics_mismatch += 1
                soak.example("gap_topics_mismatch", client=self.index, frame=frame)
        elif kind == "gap":
            topics = frozenset(soak.topic_index.get(t, -1) for t in frame.get("topics", []))
            since = datetime.fromisoformat(frame["since"]).timestamp()
            self.gaps.append(Gap(since=since, received_at=now, topics=topics))
            soak.stats.gap_notices += 1
            if topics != self.topics.keys():
                soak.stats.gap_topics_mismatch += 1
                soak.example("gap_topics_mismatch", client=self.index, frame=frame)
        elif kind == "subscribed" and self.resumer and frame.get("id") == 2:
            if sorted(frame.get("topics", [])) != sorted(f"job:{t}" for t in self.topics):
                soak.stats.unexpected_frames += 1
                soak.example("unexpected_frame", client=self.index, frame=frame)
            soak.stats.resumes += 1
            self.away = False
        else:
            soak.stats.unexpected_frames += 1
            soak.example("unexpected_frame", client=self.index, frame=frame)

    def last_received_at(self, topics: frozenset[int]) -> float:
        """The send time of the last message received on any of `topics`: the bridge's
        `history_exhausted` covers everything after the position, which may predate the
        drop."""
        sent = [self.soak.ledger.sent_at[t][self.topics[t].last]
                for t in topics if t in self.topics and self.topics[t].last >= 0]
        return min(sent, default=0.0)

    def on_message(self, frame: dict[str, Any], now: float) -> None:
        soak = self.soak
        stats = soak.stats
        topic = soak.topic_index.get(frame.get("topic", ""), -1)
        state = self.topics.get(topic)
        if state is None:
            stats.unexpected_frames += 1
            soak.example("unexpected_frame", client=self.index, frame=frame)
            return
        data = frame["data"]
        seq: int = data["pub_seq"]
        bridge_seq: int = frame["seq"]
        if state.bridge_seq is not None and bridge_seq != state.bridge_seq + 1:
            stats.bridge_seq_breaks += 1
            soak.example("bridge_seq_break", client=self.index, topic=frame["topic"],
                         previous=state.bridge_seq, seq=bridge_seq, pub_seq=seq)
        state.bridge_seq = bridge_seq
        if seq > state.last:
            for skipped in range(state.last + 1, seq):
                state.missing[skipped] = None
                self.unbooked.append((topic, skipped))
            state.last = seq
        elif seq in state.missing:
            booked = state.missing.pop(seq)
            if booked == "explained":
                stats.lost_explained -= 1
                stats.lost_explained_heard -= soak.ledger.status[topic][seq] == HEARD
            elif booked == "unexplained":
                stats.lost_unexplained -= 1
            elif booked is None:
                self.unbooked.remove((topic, seq))
            stats.out_of_order += 1
            soak.example("out_of_order", client=self.index, topic=frame["topic"], pub_seq=seq,
                         after=state.last)
        else:
            stats.duplicates += 1
            soak.example("duplicate", client=self.index, topic=frame["topic"], pub_seq=seq)
            return
        stats.delivered += 1
        if self.resumer and data["sent_at"] < self.subscribed_at and self.dropped_at:
            stats.replayed += 1
        if not soak.book_received(topic, seq):
            self.unconfirmed.append((topic, seq))
        latency = now - data["sent_at"]
        soak.latencies.append(latency)
        ms = int(latency * 1000)
        soak.latency_hist[ms] = soak.latency_hist.get(ms, 0) + 1
        soak.all_latency_max = max(soak.all_latency_max, latency)
        if latency * 1000 > soak.s.late_ms:
            stats.late += 1


def percentiles(sorted_seconds: list[float]) -> dict[str, float | None]:
    if not sorted_seconds:
        return {"p50": None, "p99": None, "max": None}
    n = len(sorted_seconds)

    def at(q: float) -> float:
        return round(sorted_seconds[min(n - 1, int(q * n))] * 1000, 1)

    return {"p50": at(0.5), "p99": at(0.99), "max": round(sorted_seconds[-1] * 1000, 1)}


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


async def port_open(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet"], cwd=ROOT).returncode != 0
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args(argv: list[str]) -> Settings:
    p = argparse.ArgumentParser(
        prog="bench/soak.sh",
        description="Soak test of redis-ws-bridge (BENCHMARKS.md, section Soak).")
    d = " (default: %(default)s)"
    p.add_argument("--minutes", type=float, default=30, help="publishing time" + d)
    p.add_argument("--clients", type=int, default=1000, help="WebSocket clients, N" + d)
    p.add_argument("--topics", type=int, default=200, help="topics job:0 … job:M-1, M" + d)
    p.add_argument("--topics-per-client", type=int, default=5, help="topics per client" + d)
    p.add_argument("--rate", type=float, default=300, help="messages published per second" + d)
    p.add_argument("--payload-bytes", type=int, default=100, help="payload size, about" + d)
    p.add_argument("--reload-every", type=float, default=10,
                   help="seconds between reloads, 0: none" + d)
    p.add_argument("--sighup-every", type=int, default=3,
                   help="every Nth reload is a SIGHUP, the others rename a new file over the "
                        "routing file; 0: renames only" + d)
    p.add_argument("--restart-every", type=float, default=180,
                   help="seconds between Redis restarts, 0: none" + d)
    p.add_argument("--redis-down", type=float, default=3, help="seconds Redis stays down" + d)
    p.add_argument("--rss-every", type=float, default=10, help="seconds between RSS samples" + d)
    p.add_argument("--interval", type=float, default=10,
                   help="seconds between progress lines" + d)
    p.add_argument("--late-ms", type=float, default=1000,
                   help="a frame received later than this after its publish is late" + d)
    p.add_argument("--max-late-ratio", type=float, default=0.001,
                   help="FAIL when more than this share of delivered frames is late" + d)
    p.add_argument("--warmup", type=float, default=300,
                   help="seconds of RSS samples left out of the slope" + d)
    p.add_argument("--max-rss-slope", type=float, default=10,
                   help="FAIL when RSS grows faster than this many MiB/hour after warm-up, "
                        f"judged when at least {RSS_JUDGED_SPAN:.0f} s of samples follow it; "
                        "0: report only" + d)
    p.add_argument("--drain", type=float, default=3,
                   help="after publishing, wait until no frame came for this many seconds" + d)
    p.add_argument("--seed", type=int, default=1, help="seed of the topic choice" + d)
    p.add_argument("--port", type=int, default=18090, help="the bridge's port" + d)
    p.add_argument("--redis-port", type=int, default=16390, help="redis-server's port" + d)
    p.add_argument("--bridge-bin", type=Path, default=ROOT / "target/release/redis-ws-bridge",
                   help="the bridge's binary" + d)
    p.add_argument("--out", type=Path, default=None,
                   help="JSON lines file (default: bench/results/soak-<UTC time>.jsonl)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="directory for the routing file and Redis (default: a new temp dir)")
    p.add_argument("--connect-concurrency", type=int, default=64,
                   help="WebSocket handshakes in flight while connecting" + d)
    p.add_argument("--resumers", type=int, default=100,
                   help="more clients, on the same topics, that drop their connection and "
                        "resume with `since`; 0: none" + d)
    p.add_argument("--drop-every", type=float, default=5,
                   help="a resuming client drops after 0.5 to 1.5 times this many seconds" + d)
    p.add_argument("--away", type=float, default=1,
                   help="...and reconnects after 0 to this many seconds" + d)
    p.add_argument("--history", type=int, default=100,
                   help="the route's history.size (ttl 10m); 0: no history" + d)
    args = p.parse_args(argv)
    if args.topics_per_client > args.topics:
        p.error("--topics-per-client cannot exceed --topics")
    out = args.out or ROOT / "bench/results" / time.strftime("soak-%Y%m%d-%H%M%S.jsonl",
                                                             time.gmtime())
    return Settings(
        minutes=args.minutes, clients=args.clients, topics=args.topics,
        topics_per_client=args.topics_per_client, rate=args.rate,
        payload_bytes=args.payload_bytes, reload_every=args.reload_every,
        sighup_every=args.sighup_every, restart_every=args.restart_every,
        redis_down=args.redis_down, rss_every=args.rss_every, interval=args.interval,
        late_ms=args.late_ms, max_late_ratio=args.max_late_ratio, warmup=args.warmup,
        max_rss_slope=args.max_rss_slope, drain=args.drain, seed=args.seed, port=args.port,
        redis_port=args.redis_port, bridge_bin=args.bridge_bin, out=out,
        workdir=args.workdir, connect_concurrency=args.connect_concurrency,
        resumers=args.resumers, drop_every=args.drop_every, away=args.away,
        history=args.history)


def main(argv: list[str]) -> int:
    settings = parse_args(argv)
    if not settings.bridge_bin.is_file():
        print(f"no bridge binary at {settings.bridge_bin}", file=sys.stderr)
        return 2
    # One descriptor per client here and in the bridge (which inherits the limit).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if settings.clients + settings.resumers + 200 > hard:
        print(f"{settings.clients} clients need more than the {hard} open files allowed",
              file=sys.stderr)
        return 2
    own_workdir = None
    if settings.workdir is None:
        own_workdir = settings.workdir = Path(tempfile.mkdtemp(prefix="soak."))
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    with open(settings.out, "a") as out:
        soak = Soak(settings, out)
        try:
            return asyncio.run(soak.run())
        except RuntimeError as err:
            soak.write({"kind": "summary", "verdict": "FAIL", "reasons": [str(err)]})
            print(f"verdict: FAIL\n  - {err}", file=sys.stderr)
            return 1
        finally:
            if own_workdir is not None:
                shutil.rmtree(own_workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
