"""Turns the load generator's JSON lines into docs/benchmarks.md (min / median / max)."""
import json, os, platform, statistics, subprocess, sys

results, repeats = sys.argv[1], sys.argv[2]

def get(d, path):
    for p in path.split("."):
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d

METRICS = {
    "connect": [("connect_per_sec", "connections/s"), ("latency.p99_ms", "p99 connect+subscribe ms"),
                ("server_rss_per_connection_kb", "server RSS KB/conn"), ("failures", "failures"),
                ("generator.cpu_percent", "generator CPU %")],
    "fanout": [("deliveries_per_sec", "deliveries/s"), ("latency.p50_ms", "p50 ms"), ("latency.p99_ms", "p99 ms"),
               ("server_cpu_us_per_delivery", "server CPU µs/delivery"), ("server.cpu_percent", "server CPU %"),
               ("lost", "lost"), ("duplicated", "duplicated"), ("generator.cpu_percent", "generator CPU %")],
    "trigger": [("requests_per_sec", "requests/s"), ("latency.p50_ms", "p50 ms"), ("latency.p99_ms", "p99 ms"),
                ("errors", "errors"), ("server.cpu_percent", "server CPU %"), ("generator.cpu_percent", "generator CPU %")],
    "client-events": [("round_trip.p50_ms", "RTT p50 ms"), ("round_trip.p99_ms", "RTT p99 ms"), ("lost", "lost"),
                      ("server.cpu_percent", "server CPU %"), ("generator.cpu_percent", "generator CPU %")],
    "presence-churn": [("member_added", "member_added"), ("member_removed", "member_removed"),
                       ("expected", "expected each")],
}
METRICS["channels"] = METRICS["fanout"]
# Every scenario also shows the hypervisor's steal on the worse core: a latency tail shorter
# than its slices need not be the server's.
STEAL = ("host_steal.max_percent", "host steal % (worse core)")

def fmt(v):
    if isinstance(v, float):
        return f"{v:.2f}" if v < 100 else f"{v:.0f}"
    return str(v)

def sh(cmd):
    try:
        return subprocess.check_output(cmd, shell=True, text=True).strip()
    except Exception:
        return "?"

print(f"# {os.environ.get('BENCH_TITLE', 'Benchmarks')}\n")
print(os.environ.get("BENCH_INTRO") or (
      "Measured with `scripts/bench.sh` (the load generator in `loadtest/`): a release build of "
      "bellhop pinned to core 0 (`taskset -c 0`, one worker thread), the generator pinned to core 1, "
      f"{repeats} runs per row, a fresh server per run; min / median / max across runs."))
print()
cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")
mem = sh("grep MemTotal /proc/meminfo")
print(f"- machine: {sh('nproc')} cores, {mem}, {cpu}, kernel {platform.release()}")
print(f"- commit: {sh('git rev-parse --short HEAD')} ({sh('git log -1 --format=%cs')})")
print(f"- rustc: {sh('rustc --version')}\n")
print("Server CPU per delivery is the server's CPU seconds (from /proc) over the run divided by "
      "deliveries; on loopback it includes the kernel's receive path for the client side too.\n")

for name in sorted(os.listdir(results)):
    rows = [json.loads(l) for l in open(os.path.join(results, name)) if l.strip().startswith("{")]
    if not rows:
        continue
    scen = rows[0].get("scenario", "")
    print(f"## {name[:-6]}\n")
    print("| metric | min | median | max |\n|---|---|---|---|")
    for path, label in METRICS.get(scen, []) + [STEAL]:
        vals = [get(r, path) for r in rows]
        vals = [v for v in vals if isinstance(v, (int, float))]
        if not vals:
            continue
        print(f"| {label} | {fmt(min(vals))} | {fmt(statistics.median(vals))} | {fmt(max(vals))} |")
    print()
