//! `trigger`: signed HTTP API throughput alone, Q requests in flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::api::Api;
use crate::measure::{self, cpu_json, percentiles_ms};
use crate::report::Report;
use crate::Target;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Requests in flight.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Requests in total.
    #[arg(long, default_value_t = 20000)]
    pub requests: u64,
    /// Bytes of event data.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
}

pub async fn run(target: &Target, a: Args) -> anyhow::Result<Report> {
    let api = Api::new(target)?;
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let data = "x".repeat(a.payload);
    let server_before = measure::sample(target.server_pid);
    let self_before = measure::sample(None);
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..a.concurrency.max(1) {
        let (api, next, errors, data) = (api.clone(), next.clone(), errors.clone(), data.clone());
        let total = a.requests;
        workers.push(tokio::spawn(async move {
            let mut hist = measure::histogram();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t0 = Instant::now();
                if api.trigger("loadtest-trigger", "e", &data).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                let _ = hist.record((t0.elapsed().as_micros() as u64).max(1));
            }
            hist
        }));
    }
    let mut hist = measure::histogram();
    for w in workers {
        if let Ok(h) = w.await {
            let _ = hist.add(h);
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let server = cpu_json(server_before, measure::sample(target.server_pid), wall);
    let generator = cpu_json(self_before, measure::sample(None), wall);
    let rps = hist.len() as f64 / wall;
    let latency = percentiles_ms(&hist);
    let errors = errors.load(Ordering::Relaxed);
    Ok(Report {
        scenario: "trigger",
        ok: errors == 0,
        summary: vec![
            format!(
                "{} requests at concurrency {} in {wall:.2}s: {rps:.0} req/s, errors {errors}",
                hist.len(),
                a.concurrency
            ),
            format!(
                "latency p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
                latency["p50_ms"], latency["p90_ms"], latency["p99_ms"], latency["max_ms"]
            ),
            format!("server {server}; generator {generator}"),
        ],
        json: json!({
            "requests": hist.len(),
            "concurrency": a.concurrency,
            "requests_per_sec": rps.round(),
            "errors": errors,
            "latency": latency,
            "server": server,
            "generator": generator,
        }),
    })
}
