//! `client-events`: pairs of clients on private channels (the tool signs channel auth). One
//! side sends `client-ping` stamped with its send time; the other answers `client-pong` with
//! the same stamp; the first measures the round trip.

use std::time::{Duration, Instant};

use serde_json::json;

use super::Pace;
use crate::client::{self, Field};
use crate::measure::{self, cpu_json, now_us, percentiles_ms};
use crate::report::Report;
use crate::Target;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Client pairs.
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Events per second sent by each pinging client (Pusher's default limit is 10).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
}

fn event(name: &str, channel: &str, stamp: &str) -> String {
    format!(r#"{{"event":"{name}","channel":"{channel}","data":"{stamp}"}}"#)
}

async fn pair(target: Target, i: usize, a: &Args) -> anyhow::Result<(measure::Hist, u64)> {
    let channel = format!("private-loadtest-pair-{i}");
    let mut ping =
        client::connect(target.node(2 * i), &target.key, target.source_ip(2 * i)).await?;
    let mut pong = client::connect(
        target.node(2 * i + 1),
        &target.key,
        target.source_ip(2 * i + 1),
    )
    .await?;
    for c in [&mut ping, &mut pong] {
        let auth = c.sign(&target.key, &target.secret, &channel, None)?;
        c.subscribe(&channel, Some(auth), None).await?;
    }
    let echo_channel = channel.clone();
    let echo = tokio::spawn(async move {
        let data = Field::new("data");
        loop {
            let t = client::next_text(&mut pong.ws).await?;
            if let Some(stamp) = data.find(&t) {
                if t.contains("client-ping") {
                    pong.send_text(event("client-pong", &echo_channel, stamp))
                        .await?;
                }
            }
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    });
    let mut sent = 0u64;
    let end = Instant::now() + Duration::from_secs(a.duration);
    let mut pace = Pace::new(a.rate);
    let (mut sink, mut stream) = futures_util::StreamExt::split(ping.ws);
    let reader = tokio::spawn(async move {
        let mut hist = measure::histogram();
        let data = Field::new("data");
        use futures_util::StreamExt;
        while let Some(Ok(msg)) = stream.next().await {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                if let Some(stamp) = data.find(&t) {
                    if let Ok(sent) = stamp.parse::<u64>() {
                        let _ = hist.record(now_us().saturating_sub(sent).max(1));
                    }
                }
            }
        }
        hist
    });
    while Instant::now() < end {
        pace.tick().await;
        use futures_util::SinkExt;
        let frame = event("client-ping", &channel, &now_us().to_string());
        sink.send(tokio_tungstenite::tungstenite::Message::Text(frame))
            .await?;
        sent += 1;
    }
    // Let the last round trips land, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    use futures_util::SinkExt;
    let _ = sink.close().await;
    echo.abort();
    let hist = match tokio::time::timeout(Duration::from_secs(2), reader).await {
        Ok(Ok(h)) => h,
        _ => measure::histogram(),
    };
    Ok((hist, sent))
}

pub async fn run(target: &Target, a: Args) -> anyhow::Result<Report> {
    let server_before = measure::sample(target.server_pid);
    let self_before = measure::sample(None);
    let start = Instant::now();
    let a = std::sync::Arc::new(a);
    let tasks: Vec<_> = (0..a.pairs)
        .map(|i| {
            let (t, a) = (target.clone(), a.clone());
            tokio::spawn(async move { pair(t, i, &a).await })
        })
        .collect();
    let mut hist = measure::histogram();
    let (mut sent, mut failed) = (0u64, 0u64);
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok((h, s))) => {
                hist.add(h).ok();
                sent += s;
            }
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(_) => failed += 1,
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let received = hist.len();
    let latency = percentiles_ms(&hist);
    let server = cpu_json(server_before, measure::sample(target.server_pid), wall);
    let generator = cpu_json(self_before, measure::sample(None), wall);
    let lost = sent.saturating_sub(received);
    Ok(Report {
        scenario: "client-events",
        ok: failed == 0 && lost == 0,
        summary: vec![
            format!(
                "{} pairs x {}/s for {}s: {sent} pings, {received} round trips, lost {lost}, failed pairs {failed}{}",
                a.pairs,
                a.rate,
                a.duration,
                first_error.as_ref().map(|e| format!(" (first: {e})")).unwrap_or_default()
            ),
            format!(
                "round trip p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
                latency["p50_ms"], latency["p90_ms"], latency["p99_ms"], latency["max_ms"]
            ),
            format!("server {server}; generator {generator}"),
        ],
        json: json!({
            "pairs": a.pairs, "rate": a.rate, "duration": a.duration,
            "sent": sent, "round_trips": received, "lost": lost, "failed_pairs": failed,
            "round_trip": latency, "server": server, "generator": generator,
        }),
    })
}
