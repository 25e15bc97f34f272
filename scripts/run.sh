#!/usr/bin/env bash
# Runs the bridge for real with bridge.example.yaml, starting a local Redis on 127.0.0.1:6379
# when none answers there (installing redis-server first when it is missing).
#
# The example verifies JWTs with the HMAC secret in ./jwt.secret: made here on the first run,
# random, never committed. Two demo tokens signed with it are printed (a user and an admin),
# valid for 8 hours.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
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

if [ ! -s jwt.secret ]; then
  echo "creating jwt.secret (a random HMAC secret for the example's auth.jwt)" >&2
  (umask 077 && openssl rand -base64 48 >jwt.secret)
fi

# A JWT signed with HS256 and the secret as the bridge reads it (the file's text without its
# trailing newline, which $(...) drops too).
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
demo_token() {
  local header payload signature
  header=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
  payload=$(printf '{"sub":"%s","roles":["%s"],"exp":%d}' "$1" "$2" $(($(date +%s) + 8 * 3600)) | b64url)
  signature=$(printf '%s.%s' "$header" "$payload" |
    openssl dgst -sha256 -mac HMAC -macopt "key:$(cat jwt.secret)" -binary | b64url)
  printf '%s.%s.%s' "$header" "$payload" "$signature"
}
user_token=$(demo_token demo user)
admin_token=$(demo_token ops admin)
cat >&2 <<EOF
demo tokens (valid 8 hours, signed with ./jwt.secret):
  user "demo":  websocat 'ws://127.0.0.1:8080/ws?token=$user_token'
  admin "ops":  curl -H 'Authorization: Bearer $admin_token' http://127.0.0.1:8080/ws/stats
EOF

cargo build --release --quiet
exec target/release/redis-ws-bridge run --config bridge.example.yaml "$@"
