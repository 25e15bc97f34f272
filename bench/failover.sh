#!/usr/bin/env bash
# The failover blind time of BENCHMARKS.md: a master, a replica, three sentinels, the bridge
# and a publisher that follows the failovers; 5 SENTINEL FAILOVERs, then 5 masters killed with
# SIGKILL; per failover the time from its start until the client receives messages again, and
# the median and worst of each kind.
#
#   bench/failover.sh [--planned 5] [--killed 5] [--out FILE]
#
# Installs what is missing (redis-server; the venv bench/.venv-soak with
# bench/soak-requirements.txt), builds the release binary unless NO_BUILD=1 (BRIDGE_BIN names
# another), and appends one JSON line per failover to bench/results/failover-<UTC time>.jsonl
# (or --out). Uses ports 16500–16512 and 18085.
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
BRIDGE_BIN="${BRIDGE_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/redis-ws-bridge}"
if [ "${NO_BUILD:-0}" != 1 ]; then
  cargo build --release --quiet --bin redis-ws-bridge
fi
mkdir -p bench/results
out="bench/results/failover-$(date -u +%Y%m%d-%H%M%S).jsonl"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done
printf '{"tool":"failover","kind":"machine","time":"%s","nproc":%s,"cpu":"%s","loadavg":"%s","commit":"%s","command":"%s"}\n' \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(nproc)" "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)" \
  "$(cut -d' ' -f1-3 /proc/loadavg)" "$(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty)" \
  "bench/failover.sh ${args[*]}" >>"$out"
"$venv/bin/python" bench/failover.py --bridge-bin "$BRIDGE_BIN" --out "$out" "${args[@]}"
echo "results: $out" >&2
