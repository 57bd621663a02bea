//! `churn`: connections that connect, subscribe, unsubscribe and disconnect at R per second
//! for D seconds, beside a base of idle subscribed connections, while the server's RSS is
//! sampled every few seconds. After a warm-up (allocator pools and tables reach their
//! working size) the RSS must stay within a band around its first sample: a leak of one
//! allocation per connection shows as a steady climb.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::Pace;
use crate::client;
use crate::measure::{self, cpu_json};
use crate::report::Report;
use crate::Target;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Connect-subscribe-unsubscribe-disconnect cycles per second.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Seconds of churn, warm-up included.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Seconds before the first RSS sample that the others are compared with.
    #[arg(long, default_value_t = 20)]
    pub warmup: u64,
    /// Seconds between RSS samples.
    #[arg(long, default_value_t = 5)]
    pub sample_every: u64,
    /// Idle subscribed connections held for the whole run.
    #[arg(long, default_value_t = 1000)]
    pub base: usize,
    /// Distinct channels the churning connections use.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// The allowed band, in percent of the first sample.
    #[arg(long, default_value_t = 5.0)]
    pub tolerance: f64,
}

async fn cycle(target: &Target, i: usize, channels: usize) -> anyhow::Result<()> {
    let mut conn = client::connect(target.node(i), &target.key, target.source_ip(i)).await?;
    let channel = format!("churn-{}", i % channels);
    conn.subscribe(&channel, None, None).await?;
    conn.send_text(
        json!({"event": "pusher:unsubscribe", "data": {"channel": channel}}).to_string(),
    )
    .await?;
    // A clean close: the server answers and closes the TCP connection first, so TIME_WAIT
    // sits on its side and the generator's ports are reused at once.
    conn.ws.close(None).await?;
    while let Some(m) = futures_util::StreamExt::next(&mut conn.ws).await {
        if m.is_err() {
            break;
        }
    }
    Ok(())
}

pub async fn run(target: &Target, a: Args) -> anyhow::Result<Report> {
    let release = Arc::new(tokio::sync::Notify::new());
    let mut base = Vec::with_capacity(a.base);
    for i in 0..a.base {
        let mut conn = client::connect(target.node(i), &target.key, target.source_ip(i)).await?;
        conn.subscribe(&format!("churn-base-{}", i % 10), None, None)
            .await?;
        let release = release.clone();
        base.push(tokio::spawn(async move {
            let released = release.notified();
            tokio::pin!(released);
            loop {
                tokio::select! {
                    _ = &mut released => break,
                    r = client::next_text(&mut conn.ws) => { if r.is_err() { break; } }
                }
            }
        }));
    }
    let server_before = measure::sample(target.server_pid);
    let self_before = measure::sample(None);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let start = Instant::now();
    let end = start + Duration::from_secs(a.duration);
    let sampler = {
        let pid = target.server_pid;
        let (warmup, every) = (a.warmup, a.sample_every.max(1));
        tokio::spawn(async move {
            let mut samples = Vec::new();
            tokio::time::sleep(Duration::from_secs(warmup)).await;
            while Instant::now() < end {
                if let Some(s) = measure::sample(pid) {
                    samples.push((start.elapsed().as_secs(), s.rss_kb));
                }
                tokio::time::sleep(Duration::from_secs(every)).await;
            }
            samples
        })
    };
    let mut pace = Pace::new(a.rate);
    let mut i = a.base;
    let mut inflight = tokio::task::JoinSet::new();
    while Instant::now() < end {
        pace.tick().await;
        let target = target.clone();
        let (done, failed, first_error) = (done.clone(), failed.clone(), first_error.clone());
        let channels = a.channels.max(1);
        inflight.spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), cycle(&target, i, channels)).await {
                Ok(Ok(())) => {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    first_error
                        .lock()
                        .unwrap()
                        .get_or_insert_with(|| format!("{e:#}"));
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    first_error
                        .lock()
                        .unwrap()
                        .get_or_insert_with(|| "a cycle took over 10 s".into());
                }
            }
        });
        i += 1;
        while inflight.try_join_next().is_some() {}
    }
    while inflight.join_next().await.is_some() {}
    let wall = start.elapsed().as_secs_f64();
    let server_after = measure::sample(target.server_pid);
    let self_after = measure::sample(None);
    release.notify_waiters();
    for b in base {
        let _ = b.await;
    }
    let samples = sampler.await.unwrap_or_default();
    let (done, failed) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let first = samples.first().map(|s| s.1 as f64);
    let (lo, hi) = samples.iter().fold((f64::MAX, 0f64), |(lo, hi), s| {
        (lo.min(s.1 as f64), hi.max(s.1 as f64))
    });
    let pct = |v: f64| first.map(|f| ((v - f) / f * 1000.0).round() / 10.0);
    let last = samples.last().map(|s| s.1 as f64);
    let band = first.map(|f| (pct(lo).unwrap_or(0.0), pct(hi).unwrap_or(0.0), f));
    let flat = band.is_some_and(|(lo, hi, _)| lo >= -a.tolerance && hi <= a.tolerance);
    let server = cpu_json(server_before, server_after, wall);
    let generator = cpu_json(self_before, self_after, wall);
    let summary = vec![
        format!(
            "{done} cycles in {wall:.0}s ({:.0}/s) beside {} idle connections, failures {failed}{}",
            done as f64 / wall.max(1e-9),
            a.base,
            first_error.lock().unwrap().as_ref().map(|e| format!(" (first: {e})")).unwrap_or_default()
        ),
        match band {
            Some((lo, hi, f)) => format!(
                "server RSS after {}s warm-up {f:.0} KB; then {lo:+}% .. {hi:+}% over {} samples, last {:+}% ({})",
                a.warmup,
                samples.len(),
                last.and_then(pct).unwrap_or(0.0),
                if flat { "flat" } else { "NOT flat" }
            ),
            None => "no RSS samples (give --server-pid and a duration longer than the warm-up)".into(),
        },
        format!("server {server}; generator {generator}"),
    ];
    Ok(Report {
        scenario: "churn",
        ok: failed == 0 && (target.server_pid.is_none() || flat),
        summary,
        json: json!({
            "rate": a.rate,
            "duration_secs": a.duration,
            "cycles": done,
            "failures": failed,
            "cycles_per_sec": (done as f64 / wall.max(1e-9)).round(),
            "base_connections": a.base,
            "rss_samples_kb": samples,
            "rss_first_kb": first,
            "rss_min_pct": band.map(|b| b.0),
            "rss_max_pct": band.map(|b| b.1),
            "rss_last_pct": last.and_then(pct),
            "rss_flat": flat,
            "server": server,
            "generator": generator,
        }),
    })
}
