#!/usr/bin/env bash
# Runs the bridge for real with bridge.example.yaml, starting a local Redis on 127.0.0.1:6379
# when none answers there (installing redis-server first when it is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  data_dir=$(mktemp -d)
  echo "starting redis-server on 127.0.0.1:6379 (data in $data_dir)" >&2
  redis-server --bind 127.0.0.1 --port 6379 --dir "$data_dir" --save "" --appendonly no --daemonize yes >/dev/null
  for _ in $(seq 1 50); do
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
    sleep 0.1
  done
fi

cargo build --release --quiet
exec target/release/redis-ws-bridge run --config bridge.example.yaml "$@"
