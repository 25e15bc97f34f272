#!/usr/bin/env bash
# One command per benchmark scenario of BENCHMARKS.md:
#
#   bench/run.sh SCENARIO [--target bridge|node|python|nchan|all] [--runs N] [-- TOOL ARGS...]
#
# SCENARIO: smoke | idle | fanout | fanout-max | topics | topics-max | storm | reload |
#           compress | history | resume | history-memory | history-instructions | all
#
# Each run starts its own redis-server (127.0.0.1:16379) and the target server, pins the
# server to CPU 0 and the load tool and redis-server to CPU 1 (taskset), runs
# target/release/bridge-bench, stops what it started, and appends one JSON line per
# measurement to bench/results/<date>.jsonl (or $OUT). `--target all` measures the bridge
# and every installed peer one after the other in the same invocation; `--runs N` repeats
# each measurement N times (bench/summarize.py reports medians and ratios to the bridge).
# Extra arguments after `--` go to bridge-bench as they are (they override the scenario's).
#
# Environment: CLIENTS (override the scenario's client count), DURATION (per step, default
# 10s), OUT (results file), BRIDGE_BIN / BENCH_BIN (binaries; default target/release/…),
# BRIDGE_CONFIG_DIR (the bridge's bridge.yaml and bridge-jwt.yaml; default bench/config),
# NO_BUILD=1 (do not run cargo build --release first), SERVER_CPU / TOOL_CPU (taskset CPU lists
# of the server and of the tool + Redis; default 0 and 1). PERF_OUT=DIR (history only): a
# perf profile of 10 s of each run's bridge, kernel included, into DIR (bench/perf-diff.py
# compares two, or two sums). HISTORY_VARIANTS / HISTORY_MODES (history and
# history-instructions): the loads and the modes (`off on`) to run; `HISTORY_MODES=on` with
# two BRIDGE_BINs compares two builds.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

usage() { sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
scenario="$1"; shift
targets="bridge"
runs=1
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --target) targets="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) usage ;;
    *) echo "unknown argument $1" >&2; usage ;;
  esac
done
[ "$targets" = all ] && targets="bridge node python nchan"

REDIS_PORT=16379
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
DURATION="${DURATION:-10s}"
# Not a secret: a throwaway key shared by the tool and the servers under test.
export BENCH_JWT_SECRET="${BENCH_JWT_SECRET:-bridge-bench-secret-0123456789abcdef0123456789}"
# Not a secret either: the history scenarios read the bridge's epoch from /ws/stats with it.
BENCH_ADMIN_TOKEN="bridge-bench-admin-0123456789"
mkdir -p bench/results
OUT="${OUT:-bench/results/$(date -u +%Y%m%d-%H%M%S).jsonl}"
# The servers' own output (logs, tracebacks of dropped connections) goes here, always under
# the ignored bench/results/, even when OUT points into a committed folder.
LOG="bench/results/$(basename "${OUT%.jsonl}").servers.log"
BRIDGE_BIN="${BRIDGE_BIN:-$root/target/release/redis-ws-bridge}"
# The bridge's routing files; another build of the bridge (BRIDGE_BIN) may need its own.
BRIDGE_CONFIG_DIR="${BRIDGE_CONFIG_DIR:-$root/bench/config}"
BENCH_BIN="${BENCH_BIN:-$root/target/release/bridge-bench}"
SERVER_CPU="${SERVER_CPU:-0}"
TOOL_CPU="${TOOL_CPU:-1}"

command -v redis-server >/dev/null || { echo "bench/run.sh needs redis-server (apt-get install -y redis-server)" >&2; exit 1; }
if [ "${NO_BUILD:-0}" != 1 ]; then
  cargo build --release --quiet -p redis-ws-bridge -p bridge-bench
fi

# Rounds of the history scenario so far: they alternate which side runs first.
history_round=0
# A command the bridge runs under (valgrind, for history-instructions).
bridge_wrapper=()
started=()
cleanup() {
  for pid in "${started[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${started[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

wait_port() {
  local port="$1"
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$port" >&2
  return 1
}

machine_line() {
  local cpu mem kernel
  cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
  mem="$(awk '/MemTotal/ {print $2}' /proc/meminfo)"
  kernel="$(uname -r)"
  printf '{"tool":"bridge-bench","kind":"machine","time":"%s","nproc":%s,"mem_kib":%s,"kernel":"%s","cpu":"%s","loadavg":"%s","commit":"%s","command":"%s"}\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(nproc)" "$mem" "$kernel" "$cpu" \
    "$(cut -d' ' -f1-3 /proc/loadavg)" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo +dirty)" \
    "bench/run.sh $scenario --target $targets --runs $runs${extra[*]:+ -- ${extra[*]}}" >> "$OUT"
}

start_redis() {
  if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    REDIS_PID="$(redis-cli -p "$REDIS_PORT" info server | sed -n 's/^process_id:\([0-9]*\).*/\1/p')"
    return
  fi
  local dir
  dir="$(mktemp -d /tmp/bench-redis.XXXXXX)"
  taskset -c "$TOOL_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$dir" \
    --save "" --appendonly no --loglevel warning >"$dir/log" 2>&1 &
  REDIS_PID=$!
  started+=("$REDIS_PID")
  wait_port "$REDIS_PORT"
}

# Starts the target; sets SERVER_PIDS, URL_BASE (ws://…), AUTH_QUERY, SUB_ARGS, PUB_ARGS.
start_server() {
  local target="$1" auth="$2"
  local config="$BRIDGE_CONFIG_DIR/bridge.yaml"
  [ "$auth" = jwt ] && config="$BRIDGE_CONFIG_DIR/bridge-jwt.yaml"
  AUTH_QUERY=""
  [ "$auth" = jwt ] && AUTH_QUERY="?token={token}"
  SUB_ARGS=()
  PUB_ARGS=(--publish "$REDIS_URL")
  METRICS_ARGS=()
  case "$target" in
    bridge)
      BENCH_LISTEN=127.0.0.1:18080 BENCH_REDIS_URL="$REDIS_URL/0" \
        taskset -c "$SERVER_CPU" "${bridge_wrapper[@]}" "$BRIDGE_BIN" run --config "${CONFIG_OVERRIDE:-$config}" --log-level warn >>"$LOG" 2>&1 &
      SERVER_PIDS=$!
      started+=("$SERVER_PIDS")
      wait_port 18080
      URL_BASE="ws://127.0.0.1:18080/ws"
      METRICS_ARGS=(--metrics-url http://127.0.0.1:18080/metrics)
      ;;
    node)
      [ -d bench/peers/node/node_modules ] || { echo "node peer not installed: bench/peers/install.sh node" >&2; return 1; }
      local secret=""
      [ "$auth" = jwt ] && secret="$BENCH_JWT_SECRET"
      PORT=18081 REDIS_URL="$REDIS_URL" JWT_SECRET="$secret" DEFLATE="${NODE_DEFLATE:-0}" \
        taskset -c "$SERVER_CPU" node bench/peers/node/server.js >>"$LOG" 2>&1 &
      SERVER_PIDS=$!
      started+=("$SERVER_PIDS")
      wait_port 18081
      URL_BASE="ws://127.0.0.1:18081/ws"
      ;;
    python)
      [ -x bench/peers/python/.venv/bin/python ] || { echo "python peer not installed: bench/peers/install.sh python" >&2; return 1; }
      local secret=""
      [ "$auth" = jwt ] && secret="$BENCH_JWT_SECRET"
      PORT=18082 REDIS_URL="$REDIS_URL" JWT_SECRET="$secret" \
        taskset -c "$SERVER_CPU" bench/peers/python/.venv/bin/python bench/peers/python/server.py >>"$LOG" 2>&1 &
      SERVER_PIDS=$!
      started+=("$SERVER_PIDS")
      wait_port 18082
      URL_BASE="ws://127.0.0.1:18082/ws"
      ;;
    nchan)
      [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || { echo "nchan not installed: bench/peers/install.sh nchan" >&2; return 1; }
      NCHAN_BUFFER="${NCHAN_BUFFER:-1}" taskset -c "$SERVER_CPU" bench/peers/nchan/run.sh 18083 >>"$LOG" 2>&1 &
      local master=$!
      started+=("$master")
      wait_port 18083
      sleep 0.3
      SERVER_PIDS="$master$(pgrep -P "$master" | sed 's/^/,/' | tr -d '\n')"
      # Nchan subscribes by URL (multiplexed channels, comma-separated) and has no JWT.
      URL_BASE="ws://127.0.0.1:18083/sub"
      AUTH_QUERY=""
      SUB_ARGS=(--subscribe none --ack none)
      PUB_ARGS=(--publish "http://127.0.0.1:18083/pub?id={channel}")
      ;;
    *) echo "unknown target $target" >&2; return 1 ;;
  esac
}

stop_server() {
  local pid="${SERVER_PIDS%%,*}"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local kept=()
  for p in "${started[@]}"; do [ "$p" != "$pid" ] && kept+=("$p"); done
  started=("${kept[@]}")
  sleep 1
}

# url TEMPLATE_QUERY: the target's URL with the scenario's query (Nchan: ?id=topics).
url_for() {
  if [ "$1" = nchan ]; then
    echo "$URL_BASE?id={topics_csv}"
  else
    echo "$URL_BASE$AUTH_QUERY"
  fi
}

bench() {
  taskset -c "$TOOL_CPU" "$BENCH_BIN" "$@" --json-out "$OUT"
}

common() {
  local target="$1" name="$2"
  # The core-based figure needs the server alone on one core.
  local core=()
  [[ "$SERVER_CPU" =~ ^[0-9]+$ ]] && core=(--server-core "$SERVER_CPU")
  echo --label "$target" --scenario "$name" --server-pid "$SERVER_PIDS" "${core[@]}" --redis-pid "$REDIS_PID"
}

# history_config FILE SIZE: the bridge's routing file with `history: {size: SIZE}` on its
# route (none when SIZE is 0), room for what the scenarios retain, and the admin token that
# /ws/stats (the epoch) needs.
history_config() {
  local file="$1" size="$2"
  {
    sed '/^routes:$/,$d' "$BRIDGE_CONFIG_DIR/bridge.yaml"
    echo "history_max_bytes: 4294967296"
    echo "admin: { token: \"$BENCH_ADMIN_TOKEN\" }"
    sed -n '/^routes:$/,$p' "$BRIDGE_CONFIG_DIR/bridge.yaml"
    [ "$size" -gt 0 ] && echo "    history: { size: $size, ttl: 1h }"
  } >"$file"
}

# bridge_metric NAME: one value of the bridge's /metrics (0 when absent).
bridge_metric() {
  curl -s http://127.0.0.1:18080/metrics | awk -v name="$1" '$1 == name {print $2; found=1} END {if (!found) print 0}'
}

# publish_retained TOPICS PER_TOPIC LAST_MARK: PER_TOPIC messages to each of job:0 …
# job:TOPICS-1 through redis-cli --pipe, each 100 bytes of JSON, the size of the tool's own
# payloads (a ring full of smaller frames would free chunks the tool's frames cannot reuse,
# and the heap would grow as it never does in a bridge whose traffic keeps its size); the
# last of each topic carries LAST_MARK (the tool's --ack waits for it). Round-robin over
# topics, as a live stream would interleave them.
publish_retained() {
  local topics="$1" per="$2" mark="$3"
  python3 - "$topics" "$per" "$mark" <<'PY' | redis-cli -p "$REDIS_PORT" --pipe >/dev/null
import sys
topics, per, mark = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
out = sys.stdout.buffer
for n in range(1, per + 1):
    for t in range(topics):
        end = f',"end":"{mark}"' if n == per else ""
        head = f'{{"n":{n}{end},"pad":"'
        payload = (head + "x" * (100 - len(head) - 2) + '"}').encode()
        channel = f"job:{t}".encode()
        out.write(b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                  % (len(channel), channel, len(payload), payload))
PY
}

# wait_metric NAME VALUE [SECONDS]: until the bridge's metric reaches VALUE (at most SECONDS, 300).
wait_metric() {
  local name="$1" want="$2" seconds="${3:-300}" value
  for _ in $(seq 1 $((seconds * 10))); do
    value="$(bridge_metric "$name")"
    [ "${value%.*}" -ge "$want" ] && return 0
    sleep 0.1
  done
  echo "$name stayed at $value, not $want" >&2
  return 1
}

# profile NAME: in the background, once the bridge has delivered 3 s of the load's frames,
# 10 s of its CPU (user and kernel, with call chains) into $PERF_OUT/NAME.data.
profile() {
  command -v perf >/dev/null || { echo "PERF_OUT needs perf (apt-get install -y linux-perf)" >&2; return 1; }
  mkdir -p "$PERF_OUT"
  (
    wait_metric 'bridge_messages_delivered_total{route="bench"}' 30000 120 &&
      perf record --quiet -F 2000 -g -p "$SERVER_PIDS" -o "$PERF_OUT/$1.data" -- sleep 10 >/dev/null 2>&1
  ) &
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# run_one SCENARIO TARGET: one measurement.
run_one() {
  local name="$1" target="$2"
  local auth=none
  case "$name" in idle|storm) auth=jwt ;; esac
  start_server "$target" "$auth"
  local url
  url="$(url_for "$target")"
  # shellcheck disable=SC2046
  case "$name" in
    smoke)
      bench publish $(common "$target" "$name") --url "$url" --clients "${CLIENTS:-200}" \
        "${SUB_ARGS[@]}" "${PUB_ARGS[@]}" --rate 10,100 --duration 3s --settle 1s "${METRICS_ARGS[@]}" "${extra[@]}"
      ;;
    idle)
      local n first=1
      for n in ${CLIENTS:-10000 19500}; do
        # A fresh server per size: RSS per connection is measured from its start.
        [ "$first" = 1 ] || { stop_server; start_server "$target" "$auth"; }
        first=0
        local ids=(--topics "$n")
        bench idle $(common "$target" "idle-$n") --url "$url" --clients "$n" \
          "${ids[@]}" --subscribe none --ack none "${SUB_ARGS[@]}" --settle 5s --hold 10s "${extra[@]}"
      done
      ;;
    fanout)
      local n first=1
      for n in ${CLIENTS:-1000 10000}; do
        [ "$first" = 1 ] || { stop_server; start_server "$target" "$auth"; }
        first=0
        bench publish $(common "$target" "fanout-$n") --url "$url" --clients "$n" "${SUB_ARGS[@]}" \
          "${PUB_ARGS[@]}" --rate 10 --warmup 2s --duration "$DURATION" "${METRICS_ARGS[@]}" "${extra[@]}"
      done
      ;;
    fanout-max)
      local n rates first=1
      for n in ${CLIENTS:-1000 10000}; do
        [ "$first" = 1 ] || { stop_server; start_server "$target" "$auth"; }
        first=0
        if [ "$n" -le 2000 ]; then rates=50,100,200,400,600,800,1000,1500; else rates=2,5,10,20,30,40,60; fi
        # The highest rate without loss: latency is reported, not a criterion (5 s bound).
        bench publish $(common "$target" "fanout-max-$n") --url "$url" --clients "$n" "${SUB_ARGS[@]}" \
          "${PUB_ARGS[@]}" --rate "$rates" --stop-on-fail --max-p99 5s --warmup 2s --duration "$DURATION" "${METRICS_ARGS[@]}" "${extra[@]}"
      done
      ;;
    topics|topics-max)
      local rates=10000
      [ "$name" = topics-max ] && rates=5000,10000,20000,30000,40000,60000,80000
      bench publish $(common "$target" "$name") --url "$url" --clients "${CLIENTS:-10000}" \
        --topics 100000 --topics-per-client 10 "${SUB_ARGS[@]}" "${PUB_ARGS[@]}" --rate "$rates" \
        --stop-on-fail --warmup 2s --duration "$DURATION" "${METRICS_ARGS[@]}" "${extra[@]}"
      ;;
    storm)
      bench storm $(common "$target" "storm") --url "$url" --clients "${CLIENTS:-10000}" \
        --topics "${CLIENTS:-10000}" --subscribe none --ack none --concurrency 256 "${extra[@]}"
      ;;
    reload)
      if [ "$target" != bridge ]; then echo "reload: the bridge only" >&2; stop_server; return 0; fi
      stop_server
      # The same fan-out three times on a fresh server each: without reloads, with the file
      # rewritten (renamed over) every 100 ms, and with SIGHUP every 100 ms.
      local n="${CLIENTS:-10000}" variant dir
      for variant in baseline file sighup; do
        dir="$(mktemp -d /tmp/bench-reload.XXXXXX)"
        cp bench/config/bridge.yaml "$dir/bridge.yaml"
        CONFIG_OVERRIDE="$dir/bridge.yaml" start_server bridge none
        local reload_args=()
        [ "$variant" = file ] && reload_args=(--reload-file "$dir/bridge.yaml" --reload-every 100ms)
        [ "$variant" = sighup ] && reload_args=(--reload-sighup --reload-every 100ms)
        bench publish $(common bridge "reload-$variant-$n") --url "$url" --clients "$n" \
          "${PUB_ARGS[@]}" --rate 10 --warmup 2s --duration "$DURATION" "${METRICS_ARGS[@]}" \
          "${reload_args[@]}" "${extra[@]}"
        [ "$variant" = sighup ] || stop_server
        rm -rf "$dir"
      done
      ;;
    compress)
      # JSON events of 1 KiB, 16 KiB and 256 KiB to N subscribers, compression off then on
      # (the bridge: websocket.compression; Node: ws's perMessageDeflate, which compresses per
      # recipient). The tool offers permessage-deflate only in the `on` runs.
      stop_server
      case "$target" in bridge|node) ;; *) echo "compress: the bridge and node only" >&2; return 0 ;; esac
      local n size mode rate dir
      for n in ${CLIENTS:-1000 10000}; do
        for size in ${COMPRESS_SIZES:-1024 16384 262144}; do
          # About 20 MB/s (1,000 subscribers) or 20 to 160 MB/s (10,000) of plain frames, which
          # the tool can read on its one core; 256 KiB to 10,000 subscribers would be 2.5 GB a
          # message, beyond this machine's loopback: left out.
          case "$n:$size" in
            1000:1024) rate=20 ;; 1000:16384) rate=5 ;; 1000:262144) rate=1 ;;
            10000:1024) rate=2 ;; 10000:16384) rate=1 ;; *) continue ;;
          esac
          for mode in off on; do
            local deflate_args=()
            [ "$mode" = on ] && deflate_args=(--deflate)
            if [ "$target" = bridge ]; then
              dir="$(mktemp -d /tmp/bench-compress.XXXXXX)"
              sed "s/^websocket:$/websocket:\n  compression: { enabled: $([ "$mode" = on ] && echo true || echo false), min_bytes: 512, level: 1 }/" \
                "$BRIDGE_CONFIG_DIR/bridge.yaml" >"$dir/bridge.yaml"
              CONFIG_OVERRIDE="$dir/bridge.yaml" start_server bridge none
            else
              NODE_DEFLATE=$([ "$mode" = on ] && echo 1 || echo 0) start_server "$target" none
            fi
            bench publish $(common "$target" "compress-$mode-$size-$n") --url "$(url_for "$target")" \
              --clients "$n" "${SUB_ARGS[@]}" "${PUB_ARGS[@]}" --rate "$rate" --warmup 2s \
              --duration "$DURATION" --payload-bytes "$size" --payload-shape events \
              "${deflate_args[@]}" "${METRICS_ARGS[@]}" "${extra[@]}"
            stop_server
            [ "$target" = bridge ] && rm -rf "$dir"
          done
        done
      done
      return 0
      ;;
    history)
      # CPU per delivered frame with the route's history on and off, alternated in one run:
      # the fan-out (one topic, 1,000 and 10,000 subscribers, 10 msg/s) and the many topics
      # (100,000 topics, 10,000 clients × 10, 10,000 msg/s), and the same once every topic has
      # its 10 frames (`topics-full`: 1,000,000 messages published first, the bridge only;
      # set HISTORY_VARIANTS to run it). The bridge: no history, then
      # `history: {size: 10}`; Nchan: a message buffer of 1 (its setting in the other
      # scenarios), then of 10. Node and Python keep no history: not measured.
      stop_server
      case "$target" in bridge|nchan) ;; *) echo "history: the bridge and nchan only" >&2; return 0 ;; esac
      local variant mode dir
      # Off first in odd rounds, on first in even ones: a machine that drifts during the run
      # (other tenants, its memory) weighs on both sides alike.
      # HISTORY_MODES=on runs history on only: two builds (BRIDGE_BIN) compared run by run
      # (also for `history-instructions`).
      history_round=$((history_round + 1))
      local modes="${HISTORY_MODES:-off on}"
      [ $((history_round % 2)) = 0 ] && modes="$(echo "$modes" | awk '{for (i = NF; i > 0; i--) printf "%s%s", $i, (i > 1 ? " " : "")}')"
      for variant in ${HISTORY_VARIANTS:-fanout-1000 fanout-10000 topics}; do
        [ "$target" = nchan ] && [ "$variant" = topics-full ] && continue
        for mode in $modes; do
          if [ "$target" = bridge ]; then
            dir="$(mktemp -d /tmp/bench-history.XXXXXX)"
            history_config "$dir/bridge.yaml" "$([ "$mode" = on ] && echo 10 || echo 0)"
            CONFIG_OVERRIDE="$dir/bridge.yaml" start_server bridge none
          else
            NCHAN_BUFFER=$([ "$mode" = on ] && echo 10 || echo 1) start_server nchan none
          fi
          url="$(url_for "$target")"
          case "$variant" in
            fanout-*)
              bench publish $(common "$target" "history-$mode-$variant") --url "$url" \
                --clients "${variant#fanout-}" "${SUB_ARGS[@]}" "${PUB_ARGS[@]}" --rate 10 \
                --warmup 2s --duration "$DURATION" "${METRICS_ARGS[@]}" "${extra[@]}"
              ;;
            topics|topics-full)
              if [ "$variant" = topics-full ]; then
                # Every topic's ring full before the clients connect, as in a bridge that has
                # run for a while (the other variant measures the rings being made).
                publish_retained 100000 10 prefill
                wait_metric bridge_redis_messages_received_total 1000000
              fi
              [ -n "${PERF_OUT:-}" ] && [ "$target" = bridge ] && profile "$mode-$variant-$history_round"
              bench publish $(common "$target" "history-$mode-$variant") --url "$url" \
                --clients "${CLIENTS:-10000}" --topics 100000 --topics-per-client 10 \
                "${SUB_ARGS[@]}" "${PUB_ARGS[@]}" --rate 10000 --warmup 2s \
                --duration "$DURATION" "${METRICS_ARGS[@]}" "${extra[@]}"
              ;;
          esac
          stop_server
          [ "$target" = bridge ] && rm -rf "$dir"
        done
      done
      return 0
      ;;
    resume)
      # The resume storm: N clients (10,000) each on a topic of its own, whose 20 frames the
      # bridge retains, connect at once and subscribe with `since` position 0 of the bridge's
      # epoch: each gets its 20 frames replayed, the last of which the tool waits for
      # (--ack), so `all_acked_s` is the time until every client is live. Alternated with the
      # same storm resuming from position 20, where nothing is left to replay: the
      # difference in server CPU, over N × 20, is the CPU per replayed frame.
      stop_server
      if [ "$target" != bridge ]; then echo "resume: the bridge only" >&2; return 0; fi
      local n="${CLIENTS:-10000}" per=20 dir epoch from
      dir="$(mktemp -d /tmp/bench-resume.XXXXXX)"
      history_config "$dir/bridge.yaml" "$per"
      for from in 0 "$per"; do
        CONFIG_OVERRIDE="$dir/bridge.yaml" start_server bridge none
        publish_retained "$n" "$per" replay_end
        wait_metric bridge_history_frames $((n * per))
        epoch="$(curl -s -H "Authorization: Bearer $BENCH_ADMIN_TOKEN" http://127.0.0.1:18080/ws/stats |
          python3 -c 'import json, sys; print(json.load(sys.stdin)["epoch"])')"
        local ack=replay_end
        [ "$from" = 0 ] || ack='"subscribed"'
        bench storm $(common bridge "resume-from-$from-$n") --url "$URL_BASE" --clients "$n" \
          --topics "$n" --concurrency 256 --ack "$ack" --ack-timeout 120s \
          --subscribe "{\"type\":\"subscribe\",\"topics\":[\"{topic}\"],\"since\":{\"epoch\":\"$epoch\",\"seq\":{\"{topic}\":$from}}}" \
          "${extra[@]}"
        echo "{\"tool\":\"run.sh\",\"scenario\":\"resume-from-$from-$n\",\"replayed_frames\":$(bridge_metric bridge_history_replayed_frames_total),\"gaps\":$(bridge_metric 'bridge_history_gaps_total{reason="history_exhausted"}')}" >>"$OUT"
        stop_server
      done
      rm -rf "$dir"
      return 0
      ;;
    history-memory)
      # Memory at 100,000 topics × 10 retained frames, no client: the bridge's RSS before and
      # after 1,000,000 messages, with `history: {size: 10}` and without (the difference is
      # what history costs), and its own count of retained bytes; then again after 2,000,000
      # more (`rss_steady_kib`), once every ring has replaced its frames twice and the global
      # order holds, as it does in a bridge that has run for a while, an entry for each frame
      # dropped since it was last compacted. The messages go in rounds of one per topic, each
      # waited for: a single burst of a million leaves the bridge's read buffers grown by a
      # varying 80-150 MB in both runs, which hides the difference.
      stop_server
      if [ "$target" != bridge ]; then echo "history-memory: the bridge only" >&2; return 0; fi
      local topics="${HISTORY_TOPICS:-100000}" per=10 size dir before after steady frames bytes
      for size in 0 "$per"; do
        dir="$(mktemp -d /tmp/bench-memory.XXXXXX)"
        history_config "$dir/bridge.yaml" "$size"
        CONFIG_OVERRIDE="$dir/bridge.yaml" start_server bridge none
        before="$(rss_kib "$SERVER_PIDS")"
        for round in $(seq 1 $((3 * per))); do
          publish_retained "$topics" 1 last
          wait_metric bridge_redis_messages_received_total $((topics * round))
          if [ "$round" -eq "$per" ]; then
            sleep 2
            after="$(rss_kib "$SERVER_PIDS")"
            frames="$(bridge_metric bridge_history_frames)"
            bytes="$(bridge_metric bridge_history_bytes)"
          fi
        done
        sleep 2
        steady="$(rss_kib "$SERVER_PIDS")"
        echo "{\"tool\":\"run.sh\",\"scenario\":\"history-memory-$size\",\"topics\":$topics,\"messages\":$((topics * per)),\"rss_before_kib\":$before,\"rss_after_kib\":$after,\"rss_steady_kib\":$steady,\"history_frames\":$frames,\"history_bytes\":$bytes}" | tee -a "$OUT" >&2
        stop_server
        rm -rf "$dir"
      done
      return 0
      ;;
    history-instructions)
      # What history adds per delivered frame, counted by callgrind instead of timed: its
      # instructions and simulated cache misses are the same from one run to the next, where
      # this machine's CPU time per frame varies by ±15 %. The many-topics load (`topics`,
      # and `topics-full` with every ring full first), history off then on; counting starts
      # once the clients receive and lasts WINDOW seconds (default 30). Valgrind slows the
      # bridge down, so the tool publishes at RATE (default 1,000/s, about what it keeps up
      # with then). Pings are off: at this rate they would be as many as the frames. Only
      # what runs in the bridge's process is counted, not the kernel's work (its sends, and
      # the page faults of a growing heap).
      stop_server
      if [ "$target" != bridge ]; then echo "history-instructions: the bridge only" >&2; return 0; fi
      command -v valgrind >/dev/null || { echo "history-instructions needs valgrind (apt-get install -y valgrind)" >&2; return 1; }
      # The slowed bridge falls behind: Redis must keep what it has not read yet.
      redis-cli -p "$REDIS_PORT" config set client-output-buffer-limit "pubsub 0 0 0" >/dev/null
      local variant mode dir window="${WINDOW:-30}" delivered='bridge_messages_delivered_total{route="bench"}'
      local first last
      for variant in ${HISTORY_VARIANTS:-topics topics-full}; do
        for mode in ${HISTORY_MODES:-off on}; do
          dir="$(mktemp -d /tmp/bench-instructions.XXXXXX)"
          history_config "$dir/bridge.yaml" "$([ "$mode" = on ] && echo 10 || echo 0)"
          sed -i 's/^\(  ping_interval:\).*/\1 1h/; s/^\(  idle_timeout:\).*/\1 2h/' "$dir/bridge.yaml"
          # The last level as this machine's: 32 MiB, 16 ways (valgrind reads it wrong here).
          bridge_wrapper=(valgrind --tool=callgrind --instr-atstart=no --cache-sim=yes
            --LL=33554432,16,64
            "--callgrind-out-file=$dir/callgrind.out" "--log-file=$dir/valgrind.log")
          CONFIG_OVERRIDE="$dir/bridge.yaml" start_server bridge none
          bridge_wrapper=()
          if [ "$variant" = topics-full ]; then
            publish_retained 100000 10 prefill
            wait_metric bridge_redis_messages_received_total 1000000 1800
          fi
          taskset -c "$TOOL_CPU" "$BENCH_BIN" publish --label bridge --scenario "instructions-$mode-$variant" \
            --url "$URL_BASE" --clients "${CLIENTS:-10000}" --topics 100000 --topics-per-client 10 \
            "${PUB_ARGS[@]}" --rate "${RATE:-1000}" --warmup 1s --duration "$((window + 60))s" \
            --json-out "$dir/tool.jsonl" "${extra[@]}" >>"$LOG" 2>&1 &
          local tool=$!
          # Counting starts once frames flow to the clients (all connected and subscribed).
          wait_metric "$delivered" 1000
          callgrind_control -i on "$SERVER_PIDS" >/dev/null
          first="$(bridge_metric "$delivered")"
          sleep "$window"
          callgrind_control -i off "$SERVER_PIDS" >/dev/null
          last="$(bridge_metric "$delivered")"
          kill "$tool" 2>/dev/null || true
          wait "$tool" 2>/dev/null || true
          # Callgrind writes its counts as the bridge exits.
          stop_server
          python3 - "$dir/callgrind.out" "$((last - first))" "$mode" "$variant" "$window" >>"$OUT" <<'PY'
import json, sys
path, frames, mode, variant, window = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
events, totals, caches = None, None, []
for line in open(path):
    if line.startswith("events:"):
        events = line.split()[1:]
    elif line.startswith(("summary:", "totals:")):
        totals = [int(v) for v in line.split()[1:]]
    elif line.startswith("desc: ") and "cache" in line:
        caches.append(line[6:].strip())
counts = dict(zip(events, totals))
print(json.dumps({
    "tool": "run.sh", "kind": "instructions", "scenario": f"instructions-{mode}-{variant}",
    "target": "bridge", "window_s": int(window), "frames": frames, "caches": caches,
    "per_frame": {event: round(count / frames, 2) for event, count in counts.items()},
}))
PY
          tail -1 "$OUT" >&2
          # Kept for callgrind_annotate: where the instructions went, function by function.
          mv "$dir/callgrind.out" "${OUT%.jsonl}.callgrind-$mode-$variant.out"
          rm -rf "$dir"
        done
      done
      return 0
      ;;
    *) echo "unknown scenario $name" >&2; exit 2 ;;
  esac
  stop_server
}

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (a busy machine makes the figures preliminary)" >&2
machine_line
start_redis
scenarios="$scenario"
[ "$scenario" = all ] && scenarios="idle fanout fanout-max topics storm reload"
for name in $scenarios; do
  for target in $targets; do
    for _ in $(seq 1 "$runs"); do
      echo "== $name / $target" >&2
      run_one "$name" "$target" || echo "!! $name / $target failed" >&2
    done
  done
done
echo "results: $OUT  (summary: python3 bench/summarize.py $OUT)" >&2
