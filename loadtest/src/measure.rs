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

#[cfg(test)]
mod tests {
    use super::*;

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
