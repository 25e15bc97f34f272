#!/usr/bin/env bash
# The bridge's cost per delivered frame through each Redis topology, in one run, and several
# bridges against one on the same load (BENCHMARKS.md, "Redis topologies and several bridges"):
#
#   bench/topologies.sh [--runs 3] [--only topologies|instances]
#
# topologies: the same loads through
#   plain     redis:// to one redis-server
#   tls       rediss:// to a TLS redis-server (certificates made here with openssl)
#   sentinel  the master found through three sentinels (redis-server --sentinel)
#   cluster   a 3-master cluster: the bridge subscribed on one node, messages PUBLISHed on
#             another (they reach it over the cluster bus)
# with two loads: `fanout` (1,000 clients on one topic, 20 msg/s: 20,000 frames/s) and
# `single` (1,000 clients on 1,000 topics, 2,000 msg/s: each message one frame, so that the
# cost of receiving a message from Redis shows).
# instances: 3,000 clients on one topic at 20 msg/s (60,000 frames/s), held by one bridge,
# then by three bridges of 1,000 clients each (the tool connects client i to bridge i mod 3),
# all on the same core; CPU summed over the bridges.
#
# Every configuration is measured once per run, in turn (the machine may be shared: compare
# medians of one invocation). The bridges run on CPU SERVER_CPU (0), the tool and every Redis
# process on TOOL_CPU (1). Results: one JSON line per measurement in
# bench/results/topologies-<UTC time>.jsonl (or $OUT), then a table of medians and ratios.
# Environment: DURATION (8s), NO_BUILD=1, BRIDGE_BIN / BENCH_BIN.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

runs=3
only="topologies instances"
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
DURATION="${DURATION:-8s}"
SERVER_CPU="${SERVER_CPU:-0}"
TOOL_CPU="${TOOL_CPU:-1}"
BRIDGE_BIN="${BRIDGE_BIN:-$root/target/release/redis-ws-bridge}"
BENCH_BIN="${BENCH_BIN:-$root/target/release/bridge-bench}"
mkdir -p bench/results
OUT="${OUT:-bench/results/topologies-$(date -u +%Y%m%d-%H%M%S).jsonl}"
if [ "${NO_BUILD:-0}" != 1 ]; then
  cargo build --release --quiet -p redis-ws-bridge -p bridge-bench
fi

work="$(mktemp -d /tmp/bench-topologies.XXXXXX)"
started=()
cleanup() {
  for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${started[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}

# redis PORT [ARGS...]: a redis-server of ours on PORT, on the tool's core.
redis() {
  local port="$1"; shift
  mkdir -p "$work/redis-$port"
  taskset -c "$TOOL_CPU" redis-server --port "$port" --bind 127.0.0.1 --dir "$work/redis-$port" \
    --save "" --appendonly no --loglevel warning --logfile "$work/redis-$port/log" "$@" &
  started+=($!)
  wait_port "$port"
}
pid_of_port() { redis-cli -p "$1" info server | sed -n 's/^process_id:\([0-9]*\).*/\1/p'; }

printf '{"tool":"bridge-bench","kind":"machine","time":"%s","nproc":%s,"mem_kib":%s,"kernel":"%s","cpu":"%s","loadavg":"%s","commit":"%s","command":"%s"}\n' \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(nproc)" "$(awk '/MemTotal/ {print $2}' /proc/meminfo)" "$(uname -r)" \
  "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)" "$(cut -d' ' -f1-3 /proc/loadavg)" \
  "$(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty)" "bench/topologies.sh --runs $runs --only '$only'" >>"$OUT"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# --- The servers, started once ---------------------------------------------------------
# plain
redis 16600
# tls: certificates for 127.0.0.1, TLS on 16602 (16601 plain, for the publisher)
(
  cd "$work"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=bench-ca -keyout ca.key -out ca.pem 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
    -keyout server.key -out server.csr 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >server.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile server.ext -out server.pem 2>/dev/null
)
redis 16601 --tls-port 16602 --tls-cert-file "$work/server.pem" --tls-key-file "$work/server.key" \
  --tls-ca-cert-file "$work/ca.pem" --tls-auth-clients no
# sentinel: master 16610, replica 16611, sentinels 16612–16614
redis 16610
redis 16611 --replicaof 127.0.0.1 16610
for port in 16612 16613 16614; do
  printf 'port %s\nbind 127.0.0.1\ndir %s\nsentinel monitor m 127.0.0.1 16610 2\nsentinel down-after-milliseconds m 1000\n' \
    "$port" "$work" >"$work/sentinel-$port.conf"
  taskset -c "$TOOL_CPU" redis-server "$work/sentinel-$port.conf" --sentinel --loglevel warning \
    --logfile "$work/sentinel-$port.log" &
  started+=($!)
  wait_port "$port"
done
# cluster: 16620–16622
for port in 16620 16621 16622; do
  redis "$port" --cluster-enabled yes --cluster-config-file "nodes-$port.conf"
done
redis-cli --cluster create 127.0.0.1:16620 127.0.0.1:16621 127.0.0.1:16622 \
  --cluster-replicas 0 --cluster-yes >/dev/null
for _ in $(seq 1 100); do
  redis-cli -p 16622 cluster info | grep -q cluster_state:ok && break
  sleep 0.1
done

# --- The bridge per topology -------------------------------------------------------------
# config TOPOLOGY PORT: a routing file as bench/config/bridge.yaml, with TOPOLOGY's redis.
config() {
  local topology="$1" port="$2" file="$work/bridge-$1-$2.yaml" section
  case "$topology" in
    plain) section="  url: redis://127.0.0.1:16600/0" ;;
    tls) section="  url: rediss://localhost:16602/0
  tls:
    ca_file: $work/ca.pem" ;;
    sentinel) section="  url: redis://sentinel-managed/0
  sentinel:
    master: m
    nodes: [redis://127.0.0.1:16612, redis://127.0.0.1:16613, redis://127.0.0.1:16614]" ;;
    cluster) section="  url: redis://cluster/0
  cluster:
    nodes: [redis://127.0.0.1:16620, redis://127.0.0.1:16621, redis://127.0.0.1:16622]" ;;
  esac
  SECTION="$section" LISTEN="127.0.0.1:$port" python3 - bench/config/bridge.yaml >"$file" <<'PY'
import os, sys
text = open(sys.argv[1]).read()
text = text.replace("${BENCH_LISTEN}", os.environ["LISTEN"])
print(text.replace("  url: ${BENCH_REDIS_URL}", os.environ["SECTION"]), end="")
PY
  echo "$file"
}

# The publisher's target: where the workers of that topology PUBLISH.
publish_url() {
  case "$1" in
    plain) echo redis://127.0.0.1:16600 ;;
    tls) echo redis://127.0.0.1:16601 ;;
    sentinel) echo redis://127.0.0.1:16610 ;;
    cluster) echo redis://127.0.0.1:16621 ;;
  esac
}

# bridges TOPOLOGY N: N bridges on ports 18090…; sets BRIDGE_PIDS (comma list) and URLS.
bridges() {
  local topology="$1" n="$2" i port
  BRIDGE_PIDS=""
  URLS=""
  for i in $(seq 0 $((n - 1))); do
    port=$((18090 + i))
    taskset -c "$SERVER_CPU" "$BRIDGE_BIN" run --config "$(config "$topology" "$port")" \
      --log-level warn >>"$work/bridges.log" 2>&1 &
    started+=($!)
    BRIDGE_PIDS="${BRIDGE_PIDS:+$BRIDGE_PIDS,}$!"
    URLS="${URLS:+$URLS,}ws://127.0.0.1:$port/ws"
    wait_port "$port"
    for _ in $(seq 1 100); do
      curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break
      sleep 0.1
    done
  done
}

stop_bridges() {
  local pid
  for pid in ${BRIDGE_PIDS//,/ }; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  sleep 1
}

measure() {
  local scenario="$1" publish="$2"; shift 2
  local redis_pid
  redis_pid="$(pid_of_port "${publish##*:}")"
  taskset -c "$TOOL_CPU" "$BENCH_BIN" publish --label bridge --scenario "$scenario" \
    --server-pid "$BRIDGE_PIDS" --server-core "$SERVER_CPU" --redis-pid "$redis_pid" \
    --url "$URLS" --publish "$publish" --warmup 2s --duration "$DURATION" --json-out "$OUT" "$@" \
    >/dev/null || echo "!! $scenario failed" >&2
}

for run in $(seq 1 "$runs"); do
  for part in $only; do
    case "$part" in
      topologies)
        for topology in plain tls sentinel cluster; do
          echo "== run $run: $topology" >&2
          bridges "$topology" 1
          measure "topology-$topology-fanout" "$(publish_url "$topology")" --clients 1000 --rate 20
          measure "topology-$topology-single" "$(publish_url "$topology")" --clients 1000 \
            --topics 1000 --rate 2000
          stop_bridges
        done
        ;;
      instances)
        for n in 1 3; do
          echo "== run $run: $n bridge(s)" >&2
          bridges plain "$n"
          measure "instances-$n" "$(publish_url plain)" --clients 3000 --rate 20
          stop_bridges
        done
        ;;
    esac
  done
done

python3 - "$OUT" <<'PY'
import json, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
runs = {}
for line in lines:
    if line.get("kind") == "publish":
        runs.setdefault(line["scenario"], []).append(line)
def med(rs, *path):
    values = []
    for r in rs:
        v = r
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        if v is not None:
            values.append(v)
    return statistics.median(values) if values else None
print("| scenario | runs | deliveries/s | bridge CPU µs/frame | ratio | core µs/frame | p99 ms | ok |")
print("|---|---|---|---|---|---|---|---|")
for name in sorted(runs):
    rs = runs[name]
    cpu = med(rs, "server", "cpu_us_per_frame")
    if name.startswith("topology-"):
        base_name = "topology-plain-" + name.rsplit("-", 1)[1]
    else:
        base_name = "instances-1"
    base = med(runs.get(base_name, []), "server", "cpu_us_per_frame")
    ratio = f"{cpu / base:.2f}×" if cpu and base else "–"
    print(f"| {name} | {len(rs)} | {med(rs, 'deliveries_per_s'):,.0f} | {cpu:.2f} | {ratio} | "
          f"{med(rs, 'server_core', 'us_per_frame') or 0:.2f} | {med(rs, 'latency_ms', 'p99') or 0:.1f} | "
          f"{sum(1 for r in rs if r.get('ok'))}/{len(rs)} |")
PY
echo "results: $OUT" >&2
