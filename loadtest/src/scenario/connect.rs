//! `connect`: N connections ramped at R/s, each subscribed to one of a few channels, held
//! for T seconds while answering pings. Reports the connect rate, handshake latency,
//! failures, and the server's RSS per connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::Pace;
use crate::client;
use crate::measure::{self, cpu_json, percentiles_ms};
use crate::report::Report;
use crate::Target;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// New connections per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds to hold every connection open after the last one is up.
    #[arg(long, default_value_t = 5)]
    pub hold: u64,
    /// Distinct channels the connections subscribe to.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
}

pub async fn run(target: &Target, a: Args) -> anyhow::Result<Report> {
    let server_before = measure::sample(target.server_pid);
    let self_before = measure::sample(None);
    let up = Arc::new(AtomicU64::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let start = Instant::now();
    let mut pace = Pace::new(a.rate);
    let mut tasks = Vec::with_capacity(a.connections);
    for i in 0..a.connections {
        pace.tick().await;
        let target = target.clone();
        let up = up.clone();
        let release = release.clone();
        let channels = a.channels.max(1);
        tasks.push(tokio::spawn(async move {
            let released = release.notified();
            let t0 = Instant::now();
            let mut conn =
                client::connect(target.node(i), &target.key, target.source_ip(i)).await?;
            conn.subscribe(&format!("connect-{}", i % channels), None, None)
                .await?;
            let setup = t0.elapsed();
            up.fetch_add(1, Ordering::Relaxed);
            tokio::pin!(released);
            loop {
                tokio::select! {
                    _ = &mut released => break,
                    r = client::next_text(&mut conn.ws) => { r?; }
                }
            }
            anyhow::Ok(setup)
        }));
    }
    let ramp_secs = start.elapsed().as_secs_f64();
    // Wait for the stragglers to finish their handshakes (bounded), then hold.
    let limit = Instant::now() + Duration::from_secs(30);
    // Before the release, a finished task is a failed one.
    while (up.load(Ordering::Relaxed) as usize) + tasks.iter().filter(|t| t.is_finished()).count()
        < a.connections
        && Instant::now() < limit
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_up_secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(a.hold)).await;
    let server_held = measure::sample(target.server_pid);
    let self_held = measure::sample(None);
    release.notify_waiters();

    let mut hist = measure::histogram();
    let mut failures = 0u64;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(setup)) => {
                let _ = hist.record((setup.as_micros() as u64).max(1));
            }
            Ok(Err(e)) => {
                failures += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(e) => {
                failures += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let ok_count = hist.len();
    let connect_rate = ok_count as f64 / all_up_secs.max(1e-9);
    let rss_per_conn_kb = match (server_before, server_held) {
        (Some(b), Some(h)) if ok_count > 0 => {
            Some(((h.rss_kb as f64 - b.rss_kb as f64) / ok_count as f64 * 100.0).round() / 100.0)
        }
        _ => None,
    };
    let latency = percentiles_ms(&hist);
    let server = cpu_json(server_before, server_held, all_up_secs + a.hold as f64);
    let generator = cpu_json(self_before, self_held, all_up_secs + a.hold as f64);
    let summary = vec![
        format!(
            "{ok_count}/{} connections up, ramp {ramp_secs:.2}s, all up after {all_up_secs:.2}s ({connect_rate:.0}/s), failures {failures}{}",
            a.connections,
            first_error.as_ref().map(|e| format!(" (first: {e})")).unwrap_or_default()
        ),
        format!(
            "connect+subscribe latency p50 {} ms, p99 {} ms, max {} ms",
            latency["p50_ms"], latency["p99_ms"], latency["max_ms"]
        ),
        format!(
            "server {server}; RSS per connection {} KB; generator {generator}",
            rss_per_conn_kb.map_or("n/a".into(), |v| v.to_string())
        ),
    ];
    Ok(Report {
        scenario: "connect",
        ok: failures == 0,
        summary,
        json: json!({
            "connections": a.connections,
            "rate": a.rate,
            "up": ok_count,
            "failures": failures,
            "first_error": first_error,
            "connect_per_sec": connect_rate.round(),
            "latency": latency,
            "server": server,
            "server_rss_before_kb": server_before.map(|s| s.rss_kb),
            "server_rss_per_connection_kb": rss_per_conn_kb,
            "generator": generator,
        }),
    })
}
