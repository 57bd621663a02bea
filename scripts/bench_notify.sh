#!/usr/bin/env bash
# The notification pipeline's figures. A release server (core 0; a second node on the same
# core when two) whose rule turns each trigger on `load-{user}` into an inbox item and an FCM
# push; the load generator (core 1) triggers and plays FCM (`loadtest notify`). On SQLite and
# Postgres, one node and two; then the cost of 50 rules that match nothing on the trigger path,
# and 10,000 reminders due at once. Prints one JSON line per run; writes
# docs/notify-benchmarks.md.
# Usage: scripts/bench_notify.sh [row ...]
#   (rows: sqlite-1 sqlite-1k sqlite-full pg-500 pg-1 pg-2 rules reminders reminders-burst)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${BENCH_PORT:-6299}"
PG="${BELLHOP_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
OUT="${BENCH_OUT:-docs/notify-benchmarks.md}"
cargo build --release -q -p bellhop -p bellhop-loadtest
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
SERVER="$TARGET_DIR/release/bellhop"
LOADTEST="$TARGET_DIR/release/bellhop-loadtest"
ulimit -n 20000
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; pkill -f "redis-server --port 6398" 2>/dev/null || true; rm -rf "$work"' EXIT

# A service account whose token_uri is the generator's fake FCM.
python3 - "$work/sa.json" <<'PY'
import json, sys
key = open("tests/fixtures/fcm-test-key.pem").read()
json.dump({"type": "service_account", "project_id": "load", "private_key_id": "k1",
           "private_key": key, "client_email": "load@load.iam.gserviceaccount.com",
           "token_uri": "http://127.0.0.1:9700/token"}, open(sys.argv[1], "w"))
PY

config() {  # $1: extra rules (TOML)
  cat <<TOML
[[apps]]
id = '1'
key = 'app-key'
secret = 'app-secret'
max_event_bytes = 10240

[apps.fcm]
service_account_file = '$work/sa.json'
base_url = 'http://127.0.0.1:9700'

[[apps.rules]]
name = 'order'
channel = 'load-{user}'
event = 'order'
type = 'order'
recipients = [{ user = '{{ user }}' }]

[[apps.rules.deliver]]
channel = 'in_app'
title = 'Order {{ n }}'

[[apps.rules.deliver]]
channel = 'fcm'
title = 'Order {{ n }}'
body = 'A new order'
data = { n = '{{ n }}' }
$1
TOML
}

start() {  # $1: name, $2: port, $3: database URL, $4: redis URL or "", $5: config file
  env BELLHOP_CONFIG="$5" BELLHOP_PORT="$2" BELLHOP_METRICS_PORT=$(( $2 + 3600 )) \
    BELLHOP_SQLITE_SYNCHRONOUS="${SYNC:-normal}" \
    BELLHOP_DATABASE_URL="$3" BELLHOP_REDIS_URL="$4" BELLHOP_NODE_ID="$1" BELLHOP_WORKERS=1 \
    BELLHOP_JOB_CONCURRENCY=64 BELLHOP_LOG=warn BELLHOP_DATA_DIR="$work/$1" \
    taskset -c 0 "$SERVER" >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$2/ready" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "node $1 did not come up" >&2; exit 1
}

fresh_pg() {
  local schema="bench_$(date +%s%N)"
  psql -q "$PG" -c "CREATE SCHEMA $schema" >/dev/null
  echo "$PG?options=-c%20search_path%3D$schema"
}

stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; pids=(); }

run_notify() {  # $1: row name, $2..: loadtest args
  local name=$1; shift
  echo "== $name: $*" >&2
  taskset -c 1 "$LOADTEST" --port "$PORT" --server-pid "${pids[0]}" notify "$@" \
    | tee -a /dev/stderr | tail -n 1 | python3 -c "import json,sys; r=json.load(sys.stdin); r['row']='$name'; print(json.dumps(r))" >> "$work/results.jsonl" || true
}

want=("$@")
wants() { [ ${#want[@]} -eq 0 ] || [[ " ${want[*]} " =~ " $1 " ]]; }
config "" > "$work/notify.toml"

if wants sqlite-1; then
  start n1 "$PORT" "sqlite://$work/n1.db" "" "$work/notify.toml"
  run_notify "sqlite, 1 node, 500/s" --notifications 10000 --rate 500 --users 500
  stop_all
fi
if wants sqlite-1k; then
  start n1 "$PORT" "sqlite://$work/n1k.db" "" "$work/notify.toml"
  run_notify "sqlite, 1 node, 1000/s" --notifications 20000 --rate 1000 --users 500
  stop_all
fi
if wants sqlite-full; then
  SYNC=full start n1 "$PORT" "sqlite://$work/nfull.db" "" "$work/notify.toml"
  run_notify "sqlite (synchronous = full), 1 node, 500/s" --notifications 10000 --rate 500 --users 500
  stop_all
fi
if wants pg-500; then
  start n1 "$PORT" "$(fresh_pg)" "" "$work/notify.toml"
  run_notify "postgres, 1 node, 500/s" --notifications 10000 --rate 500 --users 500
  stop_all
fi
if wants pg-1; then
  start n1 "$PORT" "$(fresh_pg)" "" "$work/notify.toml"
  run_notify "postgres, 1 node, 1000/s" --notifications 20000 --rate 1000 --users 500
  stop_all
fi
if wants pg-2; then
  redis-server --port 6398 --save '' --appendonly no --daemonize yes >/dev/null
  db=$(fresh_pg)
  start n1 "$PORT" "$db" redis://127.0.0.1:6398 "$work/notify.toml"
  start n2 $(( PORT + 1 )) "$db" redis://127.0.0.1:6398 "$work/notify.toml"
  run_notify "postgres, 2 nodes, 1000/s" --node 127.0.0.1:$(( PORT + 1 )) --notifications 20000 --rate 1000 --users 500
  stop_all
  redis-cli -p 6398 shutdown nosave >/dev/null 2>&1 || true
fi
if wants rules; then
  noise=""
  for i in $(seq 1 50); do
    noise+=$'\n'"[[apps.rules]]"$'\n'"name = 'noise-$i'"$'\n'"channel = 'noise-$i-{x}'"$'\n'"event = 'order'"$'\n'"type = 'noise'"$'\n'"recipients = [{ user = '{{ x }}' }]"$'\n'"[[apps.rules.deliver]]"$'\n'"channel = 'in_app'"$'\n'"title = 'n'"$'\n'
  done
  config "$noise" > "$work/noise.toml"
  printf "[[apps]]\nid = '1'\nkey = 'app-key'\nsecret = 'app-secret'\n" > "$work/bare.toml"
  for variant in bare noise; do
    for i in 1 2 3; do
      start n1 "$PORT" "sqlite://$work/$variant-$i.db" "" "$work/$variant.toml"
      echo "== trigger, $variant rules, run $i" >&2
      taskset -c 1 "$LOADTEST" --port "$PORT" --server-pid "${pids[0]}" trigger --concurrency 16 --requests 30000 \
        | tee -a /dev/stderr | tail -n 1 | python3 -c "import json,sys; r=json.load(sys.stdin); r['row']='trigger, $variant'; print(json.dumps(r))" >> "$work/results.jsonl" || true
      stop_all
    done
  done
fi
if wants reminders; then
  start n1 "$PORT" "$(fresh_pg)" "" "$work/notify.toml"
  run_notify "postgres, 10,000 reminders due over 20 s" --users 10000 --reminders-due-in 30 --reminders-spread-secs 20 --drain-secs 60
  stop_all
fi
if wants reminders-burst; then
  start n1 "$PORT" "$(fresh_pg)" "" "$work/notify.toml"
  run_notify "postgres, 10,000 reminders due at once" --users 10000 --reminders-due-in 30 --drain-secs 120
  stop_all
fi

python3 scripts/bench_notify_report.py "$work/results.jsonl" > "$OUT"
echo "wrote $OUT" >&2
