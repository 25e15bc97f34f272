#!/usr/bin/env bash
# Runs every check CI runs, on a fresh Debian 12 machine as well as on a developer's:
# installs what is missing (redis-server, nginx, openssl, systemd-analyze, as root or through
# sudo; prometheus-client into .venv), then formatting, lints and all tests (the Debian
# package is built from the debug binary and installed in a throwaway root by the tests).
# The tests start their own redis-server and nginx on free ports, so a system Redis or nginx
# left running by their packages does not matter.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# What the tests run for real: Redis, nginx (wss end to end), openssl (its certificate),
# systemd-analyze (the unit), Python's venv (the Prometheus parser below).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v adduser >/dev/null 2>&1 || [ -x /usr/sbin/adduser ] || missing+=(adduser)
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
redis-server --version

# The ops tests parse /metrics with the Prometheus client library's own parser.
if ! .venv/bin/python -c 'import prometheus_client' >/dev/null 2>&1; then
  echo "== creating .venv with prometheus-client" >&2
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check 'prometheus-client>=0.20,<1'
fi
export BRIDGE_TEST_PYTHON="$PWD/.venv/bin/python"

echo "== cargo fmt --check" >&2
cargo fmt --check

echo "== cargo clippy --all-targets -- -D warnings" >&2
cargo clippy --all-targets -- -D warnings

echo "== cargo test" >&2
cargo test

echo "== fuzz targets (FUZZ_SECONDS=${FUZZ_SECONDS:-30} each)" >&2
bash scripts/fuzz.sh
