//! `notify`: the notification pipeline under load. Signed triggers that match the server's
//! rules (an inbox item and an FCM push per trigger, see `scripts/bench_notify.sh`) go out at
//! a steady rate, spread over the nodes; a fake FCM in this process answers like FCM, with
//! a configured latency and failure rate. Measured: triggers accepted per second, pushes
//! accepted per second, the time from a trigger to its push reaching the provider (p50,
//! p99), the jobs backlog, and what was lost or sent twice.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

use super::Pace;
use crate::api::Api;
use crate::fake_fcm::{Behaviour, FakeFcm};
use crate::measure::{self, cpu_json, percentiles_ms};
use crate::report::Report;
use crate::Target;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where the fake FCM listens (the server's `[apps.fcm]` points at it).
    #[arg(long, default_value = "127.0.0.1:9700")]
    pub fcm_listen: SocketAddr,
    /// Recipients (users `u0`…, each with one device): trigger n goes to user n mod U.
    #[arg(long, default_value_t = 500)]
    pub users: u64,
    /// Triggers in total.
    #[arg(long, default_value_t = 5000)]
    pub notifications: u64,
    /// Triggers per second.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// How long the fake FCM takes to answer.
    #[arg(long, default_value_t = 20)]
    pub latency_ms: u64,
    /// Share of sends the fake FCM answers 503 (they are retried).
    #[arg(long, default_value_t = 0.0)]
    pub failure_rate: f64,
    /// How long to wait for the last pushes after the last trigger.
    #[arg(long, default_value_t = 60)]
    pub drain_secs: u64,
    /// Instead of triggers: one reminder per user through `POST /notifications` with
    /// `send_at` this many seconds ahead; measures how late they fire.
    #[arg(long)]
    pub reminders_due_in: Option<u64>,
    /// Spread the reminders' due times evenly over this many seconds (0: all at once).
    #[arg(long, default_value_t = 0)]
    pub reminders_spread_secs: u64,
}

/// Trigger `n`'s send time (µs) once it was accepted.
type Sent = Arc<Mutex<Vec<Option<u64>>>>;

pub async fn run(target: &Target, a: Args) -> anyhow::Result<Report> {
    let behaviour = Behaviour {
        latency: Duration::from_millis(a.latency_ms),
        failure_rate: a.failure_rate.clamp(0.0, 1.0),
    };
    let fcm = FakeFcm::start(a.fcm_listen, behaviour).await?;
    let nodes: Vec<Api> = (0..=target.nodes.len())
        .map(|i| {
            Api::new(&Target {
                api: Some(target.node(i)),
                ..target.clone()
            })
        })
        .collect::<Result<_, _>>()?;
    register_devices(&nodes[0], a.users).await?;
    if let Some(due_in) = a.reminders_due_in {
        return reminders(&nodes[0], &fcm, &a, due_in, target).await;
    }
    let sent: Sent = Arc::new(Mutex::new(vec![None; a.notifications as usize]));
    let refused = Arc::new(AtomicU64::new(0));
    let server_before = measure::sample(target.server_pid);
    let start = Instant::now();
    let mut pace = Pace::new(a.rate);
    let mut tasks = Vec::with_capacity(a.notifications as usize);
    for n in 0..a.notifications {
        pace.tick().await;
        let api = nodes[n as usize % nodes.len()].clone();
        let (sent, refused, users) = (sent.clone(), refused.clone(), a.users);
        tasks.push(tokio::spawn(async move {
            let at = measure::now_us();
            let data = json!({"n": n.to_string()}).to_string();
            match api
                .trigger(&format!("load-u{}", n % users), "order", &data)
                .await
            {
                Ok(()) => sent.lock().unwrap()[n as usize] = Some(at),
                Err(_) => {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let triggered = start.elapsed().as_secs_f64();
    let accepted = sent.lock().unwrap().iter().filter(|s| s.is_some()).count() as u64;
    let backlog = wait_for_pushes(&fcm, accepted, Duration::from_secs(a.drain_secs), target).await;
    let wall = start.elapsed().as_secs_f64();
    let server = cpu_json(server_before, measure::sample(target.server_pid), wall);
    Ok(summarise(
        &a,
        &fcm,
        &sent,
        refused.load(Ordering::Relaxed),
        triggered,
        wall,
        server,
        backlog,
    ))
}

/// `u0`… with one Android device each (`tok-u0`…).
async fn register_devices(api: &Api, users: u64) -> anyhow::Result<()> {
    for u in 0..users {
        let body = json!({"token": format!("tok-u{u}"), "platform": "android"});
        api.post(&format!("users/u{u}/devices"), body.to_string())
            .await?;
    }
    Ok(())
}

/// Waits until every accepted trigger's push arrived or `drain` passed; the most pending
/// jobs seen meanwhile.
async fn wait_for_pushes(fcm: &FakeFcm, accepted: u64, drain: Duration, target: &Target) -> u64 {
    let end = Instant::now() + drain;
    let mut backlog = 0;
    loop {
        backlog = backlog.max(pending_jobs(target).await.unwrap_or(0));
        let arrived = fcm.seen.lock().unwrap().accepted.len() as u64;
        if arrived >= accepted || Instant::now() > end {
            return backlog;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `bellhop_jobs{state="pending"}` from the server's metrics listener (port + 3600 is the
/// bench script's convention; none when it is not there).
async fn pending_jobs(target: &Target) -> Option<u64> {
    let url = format!("http://{}:{}/metrics", target.host, target.port + 3600);
    let text = reqwest::get(url).await.ok()?.text().await.ok()?;
    text.lines()
        .find(|l| l.starts_with("bellhop_jobs{state=\"pending\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
}

#[allow(clippy::too_many_arguments)]
fn summarise(
    a: &Args,
    fcm: &FakeFcm,
    sent: &Sent,
    refused: u64,
    triggered: f64,
    wall: f64,
    server: serde_json::Value,
    backlog: u64,
) -> Report {
    let seen = fcm.seen.lock().unwrap();
    let sent = sent.lock().unwrap();
    let mut hist = measure::histogram();
    let (mut lost, mut duplicated, mut last_push) = (0u64, 0u64, 0u64);
    for (n, at) in sent.iter().enumerate() {
        let Some(at) = at else { continue };
        match seen.accepted.get(&(n as u64)) {
            None => lost += 1,
            Some(times) => {
                duplicated += (times.len() as u64).saturating_sub(1);
                let first = times.iter().min().copied().unwrap_or(*at);
                last_push = last_push.max(first);
                let _ = hist.record(first.saturating_sub(*at).max(1));
            }
        }
    }
    let accepted = sent.iter().filter(|s| s.is_some()).count() as u64;
    let first_sent = sent.iter().flatten().min().copied().unwrap_or(0);
    let push_secs = (last_push.saturating_sub(first_sent) as f64 / 1e6).max(1e-3);
    let pushes_per_sec = hist.len() as f64 / push_secs;
    let latency = percentiles_ms(&hist);
    Report {
        scenario: "notify",
        ok: lost == 0 && duplicated == 0 && refused == 0,
        summary: vec![
            format!(
                "{accepted} triggers accepted ({refused} refused) in {triggered:.1}s at {:.0}/s asked: {:.0} accepted/s",
                a.rate,
                accepted as f64 / triggered
            ),
            format!(
                "{} pushes reached the provider: {pushes_per_sec:.0}/s; lost {lost}, duplicated {duplicated}, provider failures injected {}",
                hist.len(),
                seen.failed
            ),
            format!(
                "trigger -> provider p50 {} ms, p99 {} ms, max {} ms; jobs backlog peak {backlog}",
                latency["p50_ms"], latency["p99_ms"], latency["max_ms"]
            ),
            format!("server {server}; {wall:.1}s in all"),
        ],
        json: json!({
            "accepted": accepted,
            "refused": refused,
            "triggers_per_sec": (accepted as f64 / triggered).round(),
            "pushes": hist.len(),
            "pushes_per_sec": pushes_per_sec.round(),
            "lost": lost,
            "duplicated": duplicated,
            "failures_injected": seen.failed,
            "trigger_to_provider": latency,
            "backlog_peak": backlog,
            "server": server,
        }),
    }
}

/// One reminder per user, all due at the same moment; how late each reached the provider.
async fn reminders(
    api: &Api,
    fcm: &FakeFcm,
    a: &Args,
    due_in: u64,
    target: &Target,
) -> anyhow::Result<Report> {
    let first_due = measure::now_us() + due_in * 1_000_000;
    let spread = a.reminders_spread_secs * 1_000_000;
    let due_of = |u: u64| first_due + spread * u / a.users.max(1);
    let scheduling = Instant::now();
    let requests = futures_util::stream::iter(0..a.users).map(|u| {
        let body = json!({
            "users": [format!("u{u}")], "type": "reminder", "data": {"n": "0"},
            "send_at": due_of(u) / 1000,
            "channels": [{"channel": "fcm", "title": "Your booking", "body": "starts soon",
                          "data": {"n": "0"}}],
        });
        let key = format!("load-reminder-{first_due}-{u}");
        async move {
            api.post_with_key("notifications", body.to_string(), &key)
                .await
        }
    });
    let failed = requests
        .buffer_unordered(16)
        .filter(|r| futures_util::future::ready(r.is_err()))
        .count()
        .await;
    anyhow::ensure!(failed == 0, "{failed} reminders were not accepted");
    let scheduled_in = scheduling.elapsed().as_secs_f64();
    let server_before = measure::sample(target.server_pid);
    let drain = Duration::from_secs(due_in + a.reminders_spread_secs + a.drain_secs);
    let waited = Instant::now();
    let end = waited + drain;
    loop {
        if fcm.seen.lock().unwrap().by_token.len() as u64 >= a.users || Instant::now() > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = waited.elapsed().as_secs_f64();
    let server = cpu_json(server_before, measure::sample(target.server_pid), wall);
    let seen = fcm.seen.lock().unwrap();
    let mut late = measure::histogram();
    let (mut lost, mut duplicated, mut early) = (0u64, 0u64, 0u64);
    for u in 0..a.users {
        match seen.by_token.get(&format!("tok-u{u}")) {
            None => lost += 1,
            Some(times) => {
                let due = due_of(u);
                duplicated += (times.len() as u64).saturating_sub(1);
                let first = times.iter().min().copied().unwrap_or(due);
                // send_at is whole milliseconds; the fake's clock is this process's.
                if first + 1000 < due {
                    early += 1;
                }
                let _ = late.record(first.saturating_sub(due).max(1));
            }
        }
    }
    let lateness = percentiles_ms(&late);
    Ok(Report {
        scenario: "notify-reminders",
        ok: lost == 0 && duplicated == 0 && early == 0,
        summary: vec![
            format!(
                "{} reminders scheduled in {scheduled_in:.1}s, due from {due_in}s later over {}s",
                a.users, a.reminders_spread_secs
            ),
            format!(
                "fired late by p50 {} ms, p99 {} ms, max {} ms; lost {lost}, duplicated {duplicated}, early {early}",
                lateness["p50_ms"], lateness["p99_ms"], lateness["max_ms"]
            ),
            format!("server {server}"),
        ],
        json: json!({
            "reminders": a.users,
            "spread_secs": a.reminders_spread_secs,
            "lost": lost,
            "duplicated": duplicated,
            "early": early,
            "lateness": lateness,
            "server": server,
        }),
    })
}
