"""Turns the FAULT-REPORT lines of a fault-suite run into docs/reliability.md.

Usage: reliability_report.py LOG SCALE SECONDS EXIT_STATUS
"""
import json
import platform
import subprocess
import sys
from datetime import datetime, timezone

log, scale, seconds, status = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rows = []
for line in open(log, encoding="utf-8", errors="replace"):
    if "FAULT-REPORT " in line:
        rows.append(json.loads(line.split("FAULT-REPORT ", 1)[1]))

commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "tests"], capture_output=True, text=True).stdout.strip()
now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def cell(v, suffix=""):
    return "–" if v is None else f"{v}{suffix}"


print("# Reliability: the fault suite's figures\n")
print(f"Commit `{commit}`{' (with local changes)' if dirty else ''}, {now}, on {platform.node()} "
      f"({platform.machine()}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores). "
      f"`scripts/faults.sh {scale}`: every scenario of `tests/it/faults` with outages and traffic "
      f"scaled by {scale}, one at a time, release build; {seconds} s in all; "
      f"{'every scenario passed' if status == 0 else 'SOME SCENARIOS FAILED'}.\n")
print("The test command runs the same scenarios at scale 1. *Accepted* is what the system "
      "answered 2xx (or committed); *delivered* what arrived at the subscribers, webhook "
      "receivers or provider fakes; *refused* what was answered 503 or never answered (a node "
      "down); *recovery* the time from the fault's end (a restart, a kill, the provider back) "
      "to the first acceptance or delivery after it; *RSS* the server's growth over idle.\n")
print("| scenario | accepted | delivered | lost | duplicated | refused | recovery | RSS growth |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['scenario']} | {cell(r.get('accepted'))} | {cell(r.get('delivered'))} | "
          f"{cell(r.get('lost'))} | {cell(r.get('duplicated'))} | {cell(r.get('refused'))} | "
          f"{cell(r.get('recovery_s'), ' s')} | {cell(r.get('grown_kb'), ' KB')} |")
