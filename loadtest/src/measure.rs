//! What a run measures: latency percentiles (HDR histogram), and CPU time and RSS of a
//! process read from /proc (the server's, given its pid, and the generator's own).

use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Microseconds since the Unix epoch; payloads carry it so receivers can compute latency.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub type Hist = Histogram<u64>;

pub fn histogram() -> Histogram<u64> {
    // unwrap: constant, valid bounds (1 µs to 10 min, 3 significant figures).
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap()
}

/// p50/p90/p99/max in milliseconds.
pub fn percentiles_ms(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
    })
}

/// CPU seconds (user + system) and RSS of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub cpu_secs: f64,
    pub rss_kb: u64,
}

fn ticks_per_sec() -> f64 {
    // Linux has used 100 Hz USER_HZ for /proc on every mainstream architecture.
    100.0
}

/// Reads `/proc/{pid}` (`self` when `pid` is None). None when it cannot be read.
pub fn sample(pid: Option<u32>) -> Option<ProcSample> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_owned(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some(ProcSample {
        cpu_secs: (utime + stime) / ticks_per_sec(),
        rss_kb,
    })
}

/// CPU use of a process between two samples over `wall_secs`.
pub fn cpu_json(before: Option<ProcSample>, after: Option<ProcSample>, wall_secs: f64) -> Value {
    match (before, after) {
        (Some(b), Some(a)) => {
            let cpu = a.cpu_secs - b.cpu_secs;
            json!({
                "cpu_secs": (cpu * 1000.0).round() / 1000.0,
                "cpu_percent": (cpu / wall_secs.max(1e-9) * 1000.0).round() / 10.0,
                "rss_kb": a.rss_kb,
            })
        }
        _ => Value::Null,
    }
}

/// Per-core steal ticks from `/proc/stat`: time the hypervisor ran something else while
/// this VM's core had work. A request that lands in a stolen slice waits it out, so a
/// latency tail can be the host's and not the server's; every report carries this.
pub fn steal_ticks() -> Option<Vec<u64>> {
    parse_steal(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_steal(stat: &str) -> Option<Vec<u64>> {
    let cores: Vec<u64> = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        // cpuN user nice system idle iowait irq softirq steal ...
        .map(|l| l.split_whitespace().nth(8).and_then(|v| v.parse().ok()))
        .collect::<Option<_>>()?;
    (!cores.is_empty()).then_some(cores)
}

/// Steal per core between two samples over `wall_secs`, and the worst core's share.
pub fn steal_json(before: Option<Vec<u64>>, after: Option<Vec<u64>>, wall_secs: f64) -> Value {
    let (Some(b), Some(a)) = (before, after) else {
        return Value::Null;
    };
    let ms: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(a, b)| a.saturating_sub(*b) as f64 * 1000.0 / ticks_per_sec())
        .collect();
    let worst = ms.iter().copied().fold(0.0, f64::max);
    json!({
        "per_core_ms": ms,
        "max_percent": (worst / (wall_secs.max(1e-9) * 1000.0) * 1000.0).round() / 10.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_steal_per_core() {
        let stat = "cpu  117870 0 10118 55050 615 0 364 1492 0 0\n\
                    cpu0 58183 0 4461 29032 130 0 161 827 0 0\n\
                    cpu1 59686 0 5656 26018 484 0 202 665 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(parse_steal(stat), Some(vec![827, 665]));
        let j = steal_json(Some(vec![827, 665]), Some(vec![862, 665]), 7.0);
        assert_eq!(j["per_core_ms"][0], 350.0);
        assert_eq!(j["max_percent"], 5.0);
        assert!(steal_ticks().is_some());
    }

    #[test]
    fn reads_own_proc() {
        let s = sample(None).unwrap();
        assert!(s.rss_kb > 0);
    }

    #[test]
    fn percentiles_in_ms() {
        let mut h = histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let p = percentiles_ms(&h);
        assert_eq!(p["count"], 1000);
        assert!((p["p50_ms"].as_f64().unwrap() - 500.0).abs() < 1.0);
    }
}
