//! `fanout` (S subscribers on one channel) and `channels` (C channels x K subscribers): a
//! publisher triggers M events at rate R through the HTTP API, each stamped with its sequence
//! number and send time; subscribers count lost and duplicated deliveries and the end-to-end
//! latency. The server's CPU seconds per delivery is read from /proc.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::sync::Semaphore;

use super::Pace;
use crate::api::Api;
use crate::client;
use crate::measure::{self, cpu_json, now_us, percentiles_ms};
use crate::report::Report;
use crate::Target;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Subscribers on the channel.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    #[command(flatten)]
    pub publish: Publish,
}

#[derive(clap::Args, Debug)]
pub struct ChannelsArgs {
    /// Number of channels.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Subscribers per channel.
    #[arg(long, default_value_t = 10)]
    pub subscribers_per_channel: usize,
    #[command(flatten)]
    pub publish: Publish,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Publish {
    /// Events to publish in total.
    #[arg(long, default_value_t = 1000)]
    pub events: u64,
    /// Events per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Bytes of padding in each event's data.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// New connections per second while setting up subscribers.
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// Seconds to wait for stragglers after the last event.
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
    /// Trigger requests in flight at most.
    #[arg(long, default_value_t = 32)]
    pub publishers: usize,
}

pub struct Plan {
    name: &'static str,
    channels: usize,
    per_channel: usize,
    publish: Publish,
}

impl From<Args> for Plan {
    fn from(a: Args) -> Self {
        Plan {
            name: "fanout",
            channels: 1,
            per_channel: a.subscribers,
            publish: a.publish,
        }
    }
}

impl From<ChannelsArgs> for Plan {
    fn from(a: ChannelsArgs) -> Self {
        Plan {
            name: "channels",
            channels: a.channels,
            per_channel: a.subscribers_per_channel,
            publish: a.publish,
        }
    }
}

/// What one subscriber saw.
struct Seen {
    received: u64,
    duplicates: u64,
    latencies_us: Vec<u32>,
}

fn channel_name(i: usize) -> String {
    format!("loadtest-{i}")
}

/// Events on channel `c` are those whose sequence number is `c` modulo the channel count.
fn expected_for(channel: usize, channels: usize, events: u64) -> u64 {
    let c = channel as u64;
    let n = channels as u64;
    if c >= events {
        0
    } else {
        (events - 1 - c) / n + 1
    }
}

async fn subscriber(
    target: Target,
    index: usize,
    channel: usize,
    plan_events: u64,
    expected: u64,
    ready: Arc<AtomicU64>,
    deadline: Arc<tokio::sync::Notify>,
) -> anyhow::Result<Seen> {
    let mut conn =
        client::connect(target.node(index), &target.key, target.source_ip(index)).await?;
    conn.subscribe(&channel_name(channel), None, None).await?;
    ready.fetch_add(1, Ordering::Relaxed);
    let mut bits = vec![0u64; (plan_events as usize).div_ceil(64)];
    let mut seen = Seen {
        received: 0,
        duplicates: 0,
        latencies_us: Vec::with_capacity(expected as usize),
    };
    let data_field = client::Field::new("data");
    let give_up = deadline.notified();
    tokio::pin!(give_up);
    while seen.received < expected {
        let text = tokio::select! {
            biased;
            t = client::next_text(&mut conn.ws) => t?,
            _ = &mut give_up => break,
        };
        let Some(data) = data_field.find(&text) else {
            continue;
        };
        let mut parts = data.split(' ');
        let (Some(seq), Some(sent)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(seq), Ok(sent)) = (seq.parse::<u64>(), sent.parse::<u64>()) else {
            continue;
        };
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word < bits.len() && bits[word] & (1 << bit) != 0 {
            seen.duplicates += 1;
            continue;
        }
        if word < bits.len() {
            bits[word] |= 1 << bit;
        }
        seen.received += 1;
        seen.latencies_us
            .push(now_us().saturating_sub(sent).min(u32::MAX as u64) as u32);
    }
    Ok(seen)
}

pub async fn run(target: &Target, plan: Plan) -> anyhow::Result<Report> {
    let p = &plan.publish;
    let total_subs = plan.channels * plan.per_channel;
    let api = Api::new(target)?;
    let ready = Arc::new(AtomicU64::new(0));
    let deadline = Arc::new(tokio::sync::Notify::new());

    // Set up subscribers, ramped.
    let mut tasks = Vec::with_capacity(total_subs);
    let mut pace = Pace::new(p.connect_rate);
    let setup_start = Instant::now();
    for i in 0..total_subs {
        pace.tick().await;
        let channel = i % plan.channels;
        let expected = expected_for(channel, plan.channels, p.events);
        tasks.push(tokio::spawn(subscriber(
            target.clone(),
            i,
            channel,
            p.events,
            expected,
            ready.clone(),
            deadline.clone(),
        )));
    }
    let setup_limit = Instant::now() + Duration::from_secs(60);
    while (ready.load(Ordering::Relaxed) as usize) < total_subs && Instant::now() < setup_limit {
        if tasks.iter().any(|t| t.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let subscribed = ready.load(Ordering::Relaxed) as usize;
    let setup_secs = setup_start.elapsed().as_secs_f64();

    // Publish.
    let server_before = measure::sample(target.server_pid);
    let self_before = measure::sample(None);
    let start = Instant::now();
    let in_flight = Arc::new(Semaphore::new(p.publishers.max(1)));
    let errors = Arc::new(AtomicU64::new(0));
    let padding = "x".repeat(p.payload);
    let mut pace = Pace::new(p.rate);
    let mut publishes = Vec::new();
    for seq in 0..p.events {
        pace.tick().await;
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .context("semaphore")?;
        let api = api.clone();
        let errors = errors.clone();
        let channel = channel_name((seq % plan.channels as u64) as usize);
        let data = format!("{seq} {} {padding}", now_us());
        publishes.push(tokio::spawn(async move {
            if api.trigger(&channel, "loadtest", &data).await.is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        }));
    }
    for t in publishes {
        let _ = t.await;
    }
    let publish_secs = start.elapsed().as_secs_f64();

    // Drain: wait for everyone, at most drain_secs after the last publish.
    let drain_deadline = deadline.clone();
    let drain_secs = p.drain_secs;
    let timer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(drain_secs)).await;
        drain_deadline.notify_waiters();
    });
    let mut hist = measure::histogram();
    let (mut received, mut duplicates, mut failed) = (0u64, 0u64, 0u64);
    for t in tasks {
        match t.await {
            Ok(Ok(seen)) => {
                received += seen.received;
                duplicates += seen.duplicates;
                for l in seen.latencies_us {
                    let _ = hist.record(u64::from(l).max(1));
                }
            }
            _ => failed += 1,
        }
    }
    timer.abort();
    let wall = start.elapsed().as_secs_f64();
    let server_after = measure::sample(target.server_pid);
    let self_after = measure::sample(None);

    let expected = p.events * plan.per_channel as u64;
    let expected_total = expected;
    let lost = expected_total.saturating_sub(received);
    let rate = received as f64 / wall;
    let server_cpu = cpu_json(server_before, server_after, wall);
    let cpu_per_delivery_us = match (server_before, server_after) {
        (Some(b), Some(a)) if received > 0 => {
            Some(((a.cpu_secs - b.cpu_secs) / received as f64 * 1e6 * 100.0).round() / 100.0)
        }
        _ => None,
    };
    let generator_cpu = cpu_json(self_before, self_after, wall);
    let latency = percentiles_ms(&hist);
    let ok = lost == 0 && duplicates == 0 && failed == 0 && errors.load(Ordering::Relaxed) == 0;
    let summary = vec![
        format!(
            "{} channel(s) x {} subscribers = {total_subs} ({subscribed} ready in {setup_secs:.1}s), {} events at {}/s, {} B padding",
            plan.channels, plan.per_channel, p.events, p.rate, p.payload
        ),
        format!(
            "deliveries {received}/{expected_total} ({rate:.0}/s over {wall:.2}s; publishing took {publish_secs:.2}s), lost {lost}, duplicated {duplicates}, failed subscribers {failed}, trigger errors {}",
            errors.load(Ordering::Relaxed)
        ),
        format!(
            "latency p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
            latency["p50_ms"], latency["p90_ms"], latency["p99_ms"], latency["max_ms"]
        ),
        format!(
            "server cpu {server_cpu} ({} µs per delivery); generator cpu {generator_cpu}",
            cpu_per_delivery_us.map_or("n/a".into(), |v| v.to_string())
        ),
    ];
    Ok(Report {
        scenario: plan.name,
        ok,
        summary,
        json: json!({
            "channels": plan.channels,
            "subscribers_per_channel": plan.per_channel,
            "events": p.events,
            "rate": p.rate,
            "payload": p.payload,
            "subscribed": subscribed,
            "deliveries": received,
            "expected": expected_total,
            "lost": lost,
            "duplicated": duplicates,
            "failed_subscribers": failed,
            "trigger_errors": errors.load(Ordering::Relaxed),
            "deliveries_per_sec": rate.round(),
            "wall_secs": wall,
            "latency": latency,
            "server": server_cpu,
            "server_cpu_us_per_delivery": cpu_per_delivery_us,
            "generator": generator_cpu,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_counts_split_events_over_channels() {
        assert_eq!(expected_for(0, 1, 10), 10);
        assert_eq!(expected_for(0, 3, 10), 4);
        assert_eq!(expected_for(1, 3, 10), 3);
        assert_eq!(expected_for(2, 3, 10), 3);
        assert_eq!(expected_for(5, 10, 3), 0);
    }
}
