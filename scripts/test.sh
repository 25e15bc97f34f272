#!/usr/bin/env bash
# Runs every check CI runs, on a fresh Debian 12 machine as well as on a developer's:
# installs what is missing (redis-server, as root or through sudo), then formatting,
# lints and all tests. The tests start their own redis-server on free ports, so a system
# Redis left running on 6379 by the package does not matter.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing redis-server" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends redis-server
fi
redis-server --version

echo "== cargo fmt --check" >&2
cargo fmt --check

echo "== cargo clippy --all-targets -- -D warnings" >&2
cargo clippy --all-targets -- -D warnings

echo "== cargo test" >&2
cargo test
