#!/usr/bin/env bash
# Runs Nchan in the foreground on 127.0.0.1:PORT (default 18083) with its files in a
# temporary prefix: bench/peers/nchan/run.sh [PORT]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
port="${1:-18083}"
prefix="$(mktemp -d /tmp/bench-nchan.XXXXXX)"
# NCHAN_BUFFER: the messages each channel keeps (nchan_message_buffer_length, default 1).
sed -e "s#@PREFIX@#$prefix#g" -e "s#@PORT@#$port#g" -e "s#@BUFFER@#${NCHAN_BUFFER:-1}#g" \
  "$here/nginx.conf.in" > "$prefix/nginx.conf"
exec nginx -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log"
