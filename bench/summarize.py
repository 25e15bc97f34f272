#!/usr/bin/env python3
"""Summarises bridge-bench JSON lines (bench/results/*.jsonl) as Markdown tables: the median
of each figure over repeated runs, each peer's ratio to the bridge measured in the same
file, and, for scenarios run off and on back to back (`history-off-topics` and
`history-on-topics`, in either order), the on ÷ off ratio of each such pair and the 95 %
interval of their median. Standard library only.

    python3 bench/summarize.py bench/results/20261125-101500.jsonl [more.jsonl ...]
"""

import json
import math
import re
import statistics
import sys
from collections import defaultdict


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=2):
    if value is None:
        return "–"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def ratio(value, base):
    if value is None or base in (None, 0):
        return "–"
    return f"{value / base:.1f}×"


def get(line, *path):
    for key in path:
        if not isinstance(line, dict):
            return None
        line = line.get(key)
    return line


def main(paths):
    lines = []
    for path in paths:
        with open(path) as handle:
            lines.extend(json.loads(text) for text in handle if text.strip())
    for machine in (l for l in lines if l.get("kind") == "machine"):
        print(f"- {machine['time']}: `{machine['command']}` — {machine['nproc']} CPU "
              f"({machine['cpu']}), {machine['mem_kib'] // 1024} MiB, kernel {machine['kernel']}, "
              f"load {machine['loadavg']}, commit {machine['commit']}")
    print()

    groups = defaultdict(list)
    for line in lines:
        kind = line.get("kind")
        if kind == "publish":
            key = (kind, line["scenario"], line["rate_target"])
        elif kind in ("idle", "storm", "max_rate"):
            key = (kind, line["scenario"], None)
        else:
            continue
        groups[key + (line["target"],)].append(line)

    def figures(kind, runs):
        if kind == "idle":
            return {
                "conns": median([get(r, "connect", "connected") for r in runs]),
                "rss_per_conn": median([get(r, "server", "rss_per_conn_kib") for r in runs]),
                "idle_cpu_s": median([get(r, "server", "idle_cpu_s") for r in runs]),
            }
        if kind == "storm":
            return {
                "conns": median([get(r, "connect", "connected") for r in runs]),
                "per_s": median([get(r, "connect", "per_second") for r in runs]),
                "p50": median([get(r, "connect", "latency_ms", "p50") for r in runs]),
                "p99": median([get(r, "connect", "latency_ms", "p99") for r in runs]),
                "cpu_per_conn": median([get(r, "server", "cpu_us_per_connection") for r in runs]),
                "failures": sum(sum((get(r, "connect", "failures") or {}).values()) for r in runs),
            }
        if kind == "max_rate":
            return {
                "rate": median([r.get("rate") for r in runs]),
                "deliveries": median([r.get("deliveries_per_s") for r in runs]),
                "cpu_per_frame": median([get(r, "server", "cpu_us_per_frame") for r in runs]),
                "p99": median([get(r, "latency_ms", "p99") for r in runs]),
            }
        return {
            "deliveries": median([r.get("deliveries_per_s") for r in runs]),
            "p50": median([get(r, "latency_ms", "p50") for r in runs]),
            "p99": median([get(r, "latency_ms", "p99") for r in runs]),
            "p999": median([get(r, "latency_ms", "p999") for r in runs]),
            "max": median([get(r, "latency_ms", "max") for r in runs]),
            "lost": sum(r.get("lost", 0) for r in runs),
            "dup": sum(r.get("duplicates", 0) for r in runs),
            "cpu_per_frame": median([get(r, "server", "cpu_us_per_frame") for r in runs]),
            "core_per_frame": median([get(r, "server_core", "us_per_frame") for r in runs]),
            "server_busy": median([get(r, "server", "cpu_busy") for r in runs]),
            "tool_busy": median([get(r, "tool", "cpu_busy") for r in runs]),
            "rss_per_conn": median([get(r, "server", "rss_per_conn_kib") for r in runs]),
            "reloads": median([get(r, "server_metrics", "reloads_ok") for r in runs]),
            "wire": median([r.get("wire_bytes_per_frame") for r in runs]),
            "ok": all(r.get("ok") for r in runs),
        }

    tables = defaultdict(list)
    for (kind, scenario, rate, target), runs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        tables[(kind, scenario, rate)].append((target, len(runs), figures(kind, runs)))

    for (kind, scenario, rate), rows in tables.items():
        base = next((f for t, _, f in rows if t == "bridge"), None)
        title = f"{scenario}" + (f" @ {rate:g} msg/s" if rate is not None else "") + f" ({kind})"
        print(f"### {title}\n")
        if kind == "idle":
            print("| target | runs | connections | RSS/conn KiB | × bridge | idle CPU s |")
            print("|---|---|---|---|---|---|")
            for target, n, f in rows:
                print(f"| {target} | {n} | {fmt(f['conns'])} | {fmt(f['rss_per_conn'])} | "
                      f"{ratio(f['rss_per_conn'], base and base['rss_per_conn'])} | {fmt(f['idle_cpu_s'], 3)} |")
        elif kind == "storm":
            print("| target | runs | connections | conn/s | × bridge | handshake p50 ms | p99 ms | server CPU µs/conn | failures |")
            print("|---|---|---|---|---|---|---|---|---|")
            for target, n, f in rows:
                print(f"| {target} | {n} | {fmt(f['conns'])} | {fmt(f['per_s'])} | "
                      f"{ratio(f['per_s'], base and base['per_s'])} | {fmt(f['p50'])} | {fmt(f['p99'])} | "
                      f"{fmt(f['cpu_per_conn'], 1)} | {f['failures']} |")
        elif kind == "max_rate":
            print("| target | runs | highest rate msg/s | deliveries/s | p99 ms | server CPU µs/frame |")
            print("|---|---|---|---|---|---|")
            for target, n, f in rows:
                print(f"| {target} | {n} | {fmt(f['rate'])} | {fmt(f['deliveries'])} | {fmt(f['p99'])} | "
                      f"{fmt(f['cpu_per_frame'])} |")
        else:
            print("| target | runs | ok | deliveries/s | p50 ms | p99 ms | p999 ms | max ms | lost | dup | "
                  "server CPU µs/frame | × bridge | core µs/frame | × bridge | server busy | tool busy | reloads | "
                  "wire bytes/frame |")
            print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            for target, n, f in rows:
                print(f"| {target} | {n} | {'yes' if f['ok'] else 'no'} | {fmt(f['deliveries'])} | "
                      f"{fmt(f['p50'])} | {fmt(f['p99'])} | {fmt(f['p999'])} | {fmt(f['max'])} | "
                      f"{f['lost']} | {f['dup']} | {fmt(f['cpu_per_frame'])} | "
                      f"{ratio(f['cpu_per_frame'], base and base['cpu_per_frame'])} | "
                      f"{fmt(f['core_per_frame'])} | "
                      f"{ratio(f['core_per_frame'], base and base['core_per_frame'])} | "
                      f"{fmt(f['server_busy'])} | {fmt(f['tool_busy'])} | {fmt(f['reloads'], 0)} | "
                      f"{fmt(f['wire'], 0)} |")
        print()

    print_pairs(lines)


def median_interval(ordered, confidence=0.95):
    """The distribution-free interval around the median of `ordered` (sorted): the k-th
    smallest and k-th largest values, with k the largest for which the chance that the true
    median lies outside is at most 1 - confidence (binomial, p = 1/2). `None` when there are
    too few values for that confidence."""
    n = len(ordered)
    tail, k = 0.0, 0
    # P(fewer than k+1 of n fall below the median) must stay within half the miss chance.
    while True:
        tail += math.comb(n, k) / 2**n
        if 2 * tail > 1 - confidence:
            break
        k += 1
    if k == 0:
        return None
    return ordered[k - 1], ordered[n - k]


def print_pairs(lines):
    """On ÷ off of the server's CPU per frame, taken per pair (an "off" run and the "on" run
    next to it, either first, for the same target and variant), as the machine's noise
    between pairs is larger than what is measured; with the 95 % interval of the pairs'
    median where there are enough pairs (six or more)."""
    pending = {}
    found = defaultdict(list)
    for line in lines:
        if line.get("kind") != "publish":
            continue
        match = re.fullmatch(r"(.+)-(off|on)-(.+)", line["scenario"])
        if not match:
            continue
        prefix, mode, variant = match.groups()
        key = (prefix, variant, line["target"])
        cpu = get(line, "server", "cpu_us_per_frame")
        if cpu is None:
            pending.pop(key, None)
            continue
        waiting = pending.pop(key, None)
        if waiting is None or waiting[0] == mode:
            pending[key] = (mode, cpu)
        else:
            off, on = (waiting[1], cpu) if mode == "on" else (cpu, waiting[1])
            found[key].append((off, on))
    if not found:
        return
    print("### On ÷ off, pair by pair (server CPU µs/frame)\n")
    print("| scenario | target | pairs | off (median) | on (median) | on ÷ off (median of the pairs) | 95 % interval of that median | lowest | highest |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (prefix, variant, target), runs in sorted(found.items()):
        ratios = sorted(on / off for off, on in runs)
        interval = median_interval(ratios)
        shown = f"{fmt(interval[0])}–{fmt(interval[1])}" if interval else "–"
        print(f"| {prefix} {variant} | {target} | {len(runs)} | {fmt(median([off for off, _ in runs]))} | "
              f"{fmt(median([on for _, on in runs]))} | {fmt(median(ratios))} | {shown} | "
              f"{fmt(ratios[0])} | {fmt(ratios[-1])} |")
    print()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
