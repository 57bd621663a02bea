"""Turns scripts/bench_notify.sh's JSON lines into docs/notify-benchmarks.md."""
import json
import platform
import statistics
import subprocess
import sys
from datetime import datetime, timezone

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
print("# Notification pipeline benchmarks\n")
print(f"Commit `{commit}`, {now}, {platform.node()} (2 cores): the server pinned to core 0 (both "
      "nodes when two), the load generator and its fake FCM on core 1. `scripts/bench_notify.sh`; "
      "each trigger makes an inbox item and an FCM push. One run per row unless stated.\n")
print("| run | triggers accepted/s | pushes/s | trigger → provider p50 / p99 | backlog peak | lost | duplicated | server CPU |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    if r.get("scenario") != "notify":
        continue
    lat = r["trigger_to_provider"]
    cpu = r.get("server", {}).get("cpu_percent", "–")
    print(f"| {r['row']} | {r['triggers_per_sec']:.0f} | {r['pushes_per_sec']:.0f} | "
          f"{lat['p50_ms']} / {lat['p99_ms']} ms | {r['backlog_peak']} | {r['lost']} | "
          f"{r['duplicated']} | {cpu} % |")
trig = {}
for r in rows:
    if r.get("scenario") == "trigger":
        trig.setdefault(r["row"], []).append(r["requests_per_sec"])
if trig:
    print("\n## Rules that match nothing, on the trigger path\n")
    print("Signed triggers at 16 in flight (`loadtest trigger`), three runs each, medians:\n")
    print("| app | req/s (median of 3) | runs |")
    print("|---|---|---|")
    for name, v in trig.items():
        print(f"| {name.split(', ')[1]} | {statistics.median(v):.0f} | {', '.join(f'{x:.0f}' for x in v)} |")
    if "trigger, bare" in trig and "trigger, noise" in trig:
        bare, noise = statistics.median(trig["trigger, bare"]), statistics.median(trig["trigger, noise"])
        print(f"\n50 rules that match nothing cost {100 * (bare - noise) / bare:.1f} % of the trigger rate.")
for r in rows:
    if r.get("scenario") == "notify-reminders":
        lat = r["lateness"]
        when = f"due over {r['spread_secs']} s" if r.get("spread_secs") else "due at once"
        print(f"\n## {r['reminders']:,} reminders {when} (Postgres)\n")
        print(f"Fired late by p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms; "
              f"lost {r['lost']}, duplicated {r['duplicated']}, early {r['early']}.")
