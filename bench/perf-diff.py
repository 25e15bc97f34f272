#!/usr/bin/env python3
"""Where two perf profiles of the bridge differ: samples per binary, then per function, the
functions that gained the most first.

    python3 bench/perf-diff.py BEFORE.data[,BEFORE2.data...] AFTER.data[,AFTER2.data...] [--top N]

Both profiles sample at the same rate over the same time (`PERF_OUT` of bench/run.sh), so a
difference in samples is a difference in CPU time. One pair is as noisy as the load it
sampled: profiles listed with commas are summed, as many on each side. Runs `perf report`.
"""

import argparse
import re
import subprocess
from collections import Counter

LINE = re.compile(r"\s*[\d.]+%\s+(\d+)\s+(\S+)\s+\[.\]\s+(.*)")


def samples(path: str) -> Counter:
    report = subprocess.run(
        ["perf", "report", "-i", path, "-n", "--no-children", "--sort", "dso,sym", "-g", "none"],
        capture_output=True, text=True, check=True,
    ).stdout
    counts: Counter = Counter()
    for line in report.splitlines():
        match = LINE.match(line)
        if match and not line.startswith("#"):
            counts[(match.group(2), match.group(3).strip())] += int(match.group(1))
    return counts


def summed(paths: str) -> Counter:
    total: Counter = Counter()
    for path in paths.split(","):
        total.update(samples(path))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    before, after = summed(args.before), summed(args.after)
    total_before, total_after = sum(before.values()), sum(after.values())
    print(f"samples: {total_before} → {total_after} ({total_after / max(total_before, 1):.3f}×)")
    for name, counts in (("before", before), ("after", after)):
        by_binary: Counter = Counter()
        for (binary, _), n in counts.items():
            by_binary[binary] += n
        print(f"{name}: " + ", ".join(f"{binary} {n}" for binary, n in by_binary.most_common(4)))
    print(f"\n{'Δ':>6} {'before':>7} {'after':>7}  function")
    keys = sorted(set(before) | set(after), key=lambda key: before[key] - after[key])
    for key in keys[: args.top]:
        binary, function = key
        print(f"{after[key] - before[key]:+6d} {before[key]:7d} {after[key]:7d}  {binary[:16]:16} {function[:90]}")


if __name__ == "__main__":
    main()
