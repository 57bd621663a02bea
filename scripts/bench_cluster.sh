#!/usr/bin/env bash
# Measures the cluster: one node on the in-memory bus vs one node on the Redis bus (the cost
# of the bus), and cross-node delivery (every subscriber on node B, every trigger through
# node A), plus presence churn across two nodes. Servers and a private redis-server share
# core 0; the load generator runs on core 1. REPEATS runs each (default 3); writes
# docs/cluster-benchmarks.md. Usage: scripts/bench_cluster.sh [row-name ...] (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
REPEATS="${REPEATS:-3}"
PORT_A="${BENCH_PORT:-6199}"
PORT_B=$((PORT_A + 1))
REDIS_PORT=$((PORT_A + 2))
OUT="${BENCH_OUT:-docs/cluster-benchmarks.md}"
cargo build --release -q -p bellhop -p bellhop-loadtest
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
SERVER="$TARGET_DIR/release/bellhop"
LOADTEST="$TARGET_DIR/release/bellhop-loadtest"
ulimit -n 20000
results=$(mktemp -d)
data=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$results" "$data"; }
trap cleanup EXIT

start_node() { # port node-id [redis-url]; nodes of one run share $PREFIX
  local env=(BELLHOP_PORT="$1" BELLHOP_METRICS_PORT=0 BELLHOP_APP_CLIENT_EVENTS=true BELLHOP_WORKERS=1
    BELLHOP_LOG=warn BELLHOP_NODE_ID="$2" BELLHOP_DATA_DIR="$data/$2-$RANDOM")
  [ -n "${3:-}" ] && env+=(BELLHOP_REDIS_URL="$3" BELLHOP_REDIS_PREFIX="$PREFIX")
  env "${env[@]}" taskset -c 0 "$SERVER" >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 1 50); do curl -fsS "http://127.0.0.1:$1/ready" >/dev/null 2>&1 && return; sleep 0.1; done
}
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; pids=(); }

FANOUT="fanout --subscribers 1000 --events 1500 --rate 100"
# name | topology | loadtest arguments
MATRIX=(
  "fanout-1k-memory-bus|memory|--port $PORT_A $FANOUT"
  "fanout-1k-redis-bus|redis1|--port $PORT_A $FANOUT"
  "fanout-1k-cross-node|redis2|--port $PORT_B --api 127.0.0.1:$PORT_A $FANOUT"
  "trigger-q16-memory-bus|memory|--port $PORT_A trigger --concurrency 16 --requests 30000"
  "trigger-q16-redis-bus|redis1|--port $PORT_A trigger --concurrency 16 --requests 30000"
  "presence-churn-2-nodes|redis2|--port $PORT_A --node 127.0.0.1:$PORT_B presence-churn --users 200 --channels 10 --cycles 5"
)
want=("$@")
for row in "${MATRIX[@]}"; do
  IFS='|' read -r name topo args <<<"$row"
  if [ ${#want[@]} -gt 0 ] && [[ ! " ${want[*]} " =~ " $name " ]]; then continue; fi
  for i in $(seq 1 "$REPEATS"); do
    PREFIX="bench$RANDOM"
    redis_url=""
    if [ "$topo" != memory ]; then
      taskset -c 0 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
      pids+=($!)
      for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
      redis_url="redis://127.0.0.1:$REDIS_PORT"
    fi
    start_node "$PORT_A" node-a "$redis_url"
    server_pid=${pids[-1]}
    if [ "$topo" = redis2 ]; then start_node "$PORT_B" node-b "$redis_url"; server_pid=${pids[-1]}; fi
    echo "== $name run $i: $args" >&2
    # shellcheck disable=SC2086
    taskset -c 1 "$LOADTEST" --server-pid "$server_pid" \
      --source-ips 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4 $args \
      | tee -a /dev/stderr | tail -n 1 >> "$results/$name.jsonl" || true
    stop_all
  done
done

BENCH_TITLE="Cluster benchmarks" BENCH_INTRO="Measured with \`scripts/bench_cluster.sh\`: release builds, every bellhop node and a private redis-server pinned to core 0 (one worker thread each), the load generator pinned to core 1, $REPEATS runs per row, fresh processes per run; min / median / max. *memory-bus* is one node alone; *redis-bus* is one node publishing through Redis (the bus and ledger cost); *cross-node* has all 1,000 subscribers on node B and every trigger sent to node A, so every delivery crosses Redis; server figures are node B's. presence-churn joins and leaves users on two nodes and counts the member events observers receive." \
  python3 scripts/bench_report.py "$results" "$REPEATS" > "$OUT.new"
mv "$OUT.new" "$OUT"
echo "wrote $OUT" >&2
