#!/usr/bin/env bash
# The long form of the fault suite (tests/it/faults): the same scenarios as the test command,
# with outages and load scaled up by SCALE (default 5: Redis away 20 s, the store 15 s, FCM
# failing 30 s and hanging past its timeout, five times the traffic), one scenario at a time
# on a release build. Writes docs/reliability.md from the FAULT-REPORT line each scenario
# prints.
# Usage: scripts/faults.sh [SCALE]
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE="${1:-5}"
OUT="${FAULTS_OUT:-docs/reliability.md}"
export BELLHOP_FAULTS_SCALE="$SCALE"
export BELLHOP_TEST_POSTGRES_URL="${BELLHOP_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
ulimit -n 20000
log=$(mktemp)
trap 'rm -f "$log"' EXIT
started=$(date +%s)
set +e
cargo test --release -p bellhop --test it faults:: -- --test-threads=1 --nocapture >"$log" 2>&1
status=$?
set -e
grep -E "^test |FAULT-REPORT" "$log" || true
python3 scripts/reliability_report.py "$log" "$SCALE" "$(( $(date +%s) - started ))" "$status" >"$OUT"
echo "wrote $OUT"
exit "$status"
