#!/usr/bin/env bash
# The soak test (not run by CI): N clients on M topics for a set time, while messages are
# published, the routing file is reloaded (renamed over, and SIGHUP) and Redis is restarted;
# reports lost, duplicated, reordered and late frames, disconnections and the bridge's RSS
# over time, and ends with PASS (exit 0) or FAIL (exit 1) and the reasons.
#
#   bench/soak.sh [--minutes 30] [--clients 1000] [--topics 200] [--rate 300] [...]
#
# --help lists every option. Installs what is missing (redis-server from apt; the
# venv bench/.venv-soak with bench/soak-requirements.txt from PyPI), builds the release binary
# (`cargo build --release`, in $CARGO_TARGET_DIR when set) unless NO_BUILD=1 (BRIDGE_BIN
# names another binary), then runs bench/soak.py, which starts its own redis-server and bridge
# on their own ports and writes bench/results/soak-<UTC time>.jsonl (plus the .bridge.log and
# .redis.log beside it). Whatever it started is stopped on exit, Ctrl-C included.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing redis-server" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server
fi

venv="$root/bench/.venv-soak"
if ! "$venv/bin/python" -c 'import websockets, redis' >/dev/null 2>&1; then
  echo "== creating $venv" >&2
  command -v python3 >/dev/null 2>&1 && python3 -m venv --help >/dev/null 2>&1 || {
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv
  }
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/soak-requirements.txt
fi

for arg in "$@"; do
  case "$arg" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; echo; exec "$venv/bin/python" bench/soak.py --help ;; esac
done

BRIDGE_BIN="${BRIDGE_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/redis-ws-bridge}"
if [ "${NO_BUILD:-0}" != 1 ]; then
  cargo build --release --quiet --bin redis-ws-bridge
fi

# The routing file and Redis's directory; soak.py lists in `pids` what it runs, so that what
# it could not stop itself (killed hard) is stopped here, and only if it still runs from here.
workdir="$(mktemp -d /tmp/soak.XXXXXX)"
soak=""
cleanup() {
  if [ -n "$soak" ] && kill -0 "$soak" 2>/dev/null; then
    kill -TERM "$soak" 2>/dev/null || true
    wait "$soak" 2>/dev/null || true
  fi
  if [ -f "$workdir/pids" ]; then
    while read -r pid; do
      # Ours: the bridge names the routing file in its command line; redis-server rewrites its
      # command line, but runs in its directory here.
      if grep -qF "$workdir" "/proc/$pid/cmdline" 2>/dev/null ||
        [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == "$workdir"/* ]]; then
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done <"$workdir/pids"
  fi
  rm -rf "$workdir"
}
trap cleanup EXIT

"$venv/bin/python" bench/soak.py --bridge-bin "$BRIDGE_BIN" --workdir "$workdir" "$@" &
soak=$!
trap 'kill -TERM "$soak" 2>/dev/null || true' INT TERM
status=0
wait "$soak" || status=$?
# `wait` returns early when a trapped signal arrives: wait again for the real exit status.
while kill -0 "$soak" 2>/dev/null; do
  status=0
  wait "$soak" || status=$?
done
soak=""
exit "$status"
