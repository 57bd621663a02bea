#!/usr/bin/env bash
# Runs the load matrix against a freshly built release server pinned to core 0, with the
# load generator pinned to core 1; REPEATS runs each (default 3); writes docs/benchmarks.md.
# Usage: scripts/bench.sh [scenario-name ...]   (default: the whole matrix)
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS="${REPEATS:-3}"
PORT="${BENCH_PORT:-6199}"
OUT="${BENCH_OUT:-docs/benchmarks.md}"
cargo build --release -q -p bellhop -p bellhop-loadtest
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
SERVER="$TARGET_DIR/release/bellhop"
LOADTEST="$TARGET_DIR/release/bellhop-loadtest"
ulimit -n 20000
results=$(mktemp -d)
trap 'pkill -f "$SERVER" 2>/dev/null || true; rm -rf "$results"' EXIT

# name | loadtest arguments
MATRIX=(
  "connect-10k|connect --connections 10000 --rate 10000 --hold 3"
  "connect-10k-at-7k|connect --connections 10000 --rate 7000 --hold 3"
  "connect-19k|connect --connections 19000 --rate 10000 --hold 3"
  "fanout-1k|fanout --subscribers 1000 --events 3000 --rate 150"
  "fanout-1k-400|fanout --subscribers 1000 --events 8000 --rate 400"
  "fanout-1k-800|fanout --subscribers 1000 --events 16000 --rate 800"
  "fanout-10k|fanout --subscribers 10000 --events 240 --rate 12 --connect-rate 10000"
  "fanout-10k-40|fanout --subscribers 10000 --events 800 --rate 40 --connect-rate 10000"
  "channels-100x10|channels --channels 100 --subscribers-per-channel 10 --events 20000 --rate 2000"
  "trigger-q16|trigger --concurrency 16 --requests 50000"
  "client-events-100|client-events --pairs 100 --rate 10 --duration 10"
  "presence-churn|presence-churn --users 200 --channels 10 --cycles 5"
)

want=("$@")
for row in "${MATRIX[@]}"; do
  name="${row%%|*}"; args="${row#*|}"
  if [ ${#want[@]} -gt 0 ] && [[ ! " ${want[*]} " =~ " $name " ]]; then continue; fi
  for i in $(seq 1 "$REPEATS"); do
    BELLHOP_PORT=$PORT BELLHOP_METRICS_PORT=0 BELLHOP_APP_CLIENT_EVENTS=true BELLHOP_WORKERS=1 BELLHOP_LOG=warn \
      taskset -c 0 "$SERVER" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 50); do
      curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
      sleep 0.1
    done
    echo "== $name run $i: $args" >&2
    # shellcheck disable=SC2086
    taskset -c 1 "$LOADTEST" --port "$PORT" --server-pid "$pid" \
      --source-ips 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4 $args \
      | tee -a /dev/stderr | tail -n 1 >> "$results/$name.jsonl" || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
done

python3 scripts/bench_report.py "$results" "$REPEATS" > "$OUT.new"
mv "$OUT.new" "$OUT"
echo "wrote $OUT" >&2
