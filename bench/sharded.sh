#!/usr/bin/env bash
# Classic PUBLISH against sharded SPUBLISH on a 3-master Redis Cluster (BENCHMARKS.md,
# "Sharded pub/sub"): what the cluster spends per message a subscriber receives, and how many
# subscriber connections each way needs.
#
#   bench/sharded.sh [--runs 3] [--messages 200000] [--channels 1000] [--bytes 100]
#
# Installs what is missing (redis-server; the venv bench/.venv-soak with
# bench/soak-requirements.txt), starts its own cluster on ports 16700–16702 (pinned to CPU 1),
# and appends one JSON line per measurement to bench/results/sharded-<UTC time>.jsonl.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v redis-server >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server
fi
venv="$root/bench/.venv-soak"
if ! "$venv/bin/python" -c 'import websockets, redis' >/dev/null 2>&1; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/soak-requirements.txt
fi
case "${1:-}" in -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
mkdir -p bench/results
out="bench/results/sharded-$(date -u +%Y%m%d-%H%M%S).jsonl"
printf '{"tool":"sharded","kind":"machine","time":"%s","nproc":%s,"cpu":"%s","loadavg":"%s","redis":"%s","command":"%s"}\n' \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(nproc)" "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)" \
  "$(cut -d' ' -f1-3 /proc/loadavg)" "$(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')" \
  "bench/sharded.sh $*" >>"$out"
"$venv/bin/python" bench/sharded.py --out "$out" "$@"
echo "results: $out" >&2
