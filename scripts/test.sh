#!/usr/bin/env bash
# Runs every check CI runs, on a fresh Debian 12 machine as well as on a developer's:
# installs what is missing (redis-server, nginx, openssl, systemd-analyze, prometheus,
# lintian, rpm, rpmlint, chromium, node and npm, as root or through sudo; prometheus-client,
# redis and websockets into .venv; node-redis into tests/publishers/node; ws into tests/clients/node;
# playwright-core and typescript into tests/clients/browser), then formatting, lints and all
# tests (the Debian and RPM packages are built from the debug binary by the tests, the .deb
# installed in a throwaway root).
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
# The alert rules run in promtool and in a real Prometheus; the packages are checked with
# lintian (the .deb), rpmbuild and rpmlint (the .rpm).
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v lintian >/dev/null 2>&1 || missing+=(lintian)
command -v rpmbuild >/dev/null 2>&1 || missing+=(rpm)
command -v rpmlint >/dev/null 2>&1 || missing+=(rpmlint)
# The browser tests drive Debian's Chromium (never a downloaded browser) with playwright-core.
[ -x /usr/bin/chromium ] || missing+=(chromium)
# The compatibility tests publish from a real Node worker (tests/publishers/node); the console
# tests run the browser client under Node (tests/clients/node).
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
redis-server --version

# The ops tests parse /metrics with the Prometheus client library's own parser; the
# compatibility tests publish as the Python workers do, with redis-py; the compression tests
# connect with `websockets`, which offers permessage-deflate by default.
if ! .venv/bin/python -c 'import prometheus_client, redis, websockets' >/dev/null 2>&1; then
  echo "== creating .venv with prometheus-client, redis and websockets" >&2
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check 'prometheus-client>=0.20,<1' 'redis>=5,<9' \
    'websockets>=13,<16'
fi
export BRIDGE_TEST_PYTHON="$PWD/.venv/bin/python"

# ...and as mangamotion's Node worker does, with node-redis; the browser client runs under
# Node with `ws`, and in Chromium driven by playwright-core, its declarations checked by
# typescript. Each at the versions of its committed package-lock.json (again whenever that
# file changed since the last install).
for node_dir in tests/publishers/node tests/clients/node tests/clients/browser; do
  if [ ! -f "$node_dir/node_modules/.package-lock.json" ] ||
    [ "$node_dir/package-lock.json" -nt "$node_dir/node_modules/.package-lock.json" ]; then
    echo "== npm ci in $node_dir" >&2
    npm ci --prefix "$node_dir" --no-audit --no-fund --loglevel=error
  fi
done

echo "== cargo fmt --all --check" >&2
cargo fmt --all --check

# --workspace: the load tool (bench/bridge-bench) is built, linted and unit-tested too.
echo "== cargo clippy --workspace --all-targets -- -D warnings" >&2
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test --workspace" >&2
cargo test --workspace

echo "== fuzz targets (FUZZ_SECONDS=${FUZZ_SECONDS:-30} each)" >&2
bash scripts/fuzz.sh
