//! Clients that try to exhaust a node: request heads trickled a byte at a time (slowloris),
//! subscribers that stop reading, and connect/subscribe/disconnect churn. The node closes the
//! abusers, keeps serving everyone else (nothing accepted is lost for them), and its memory
//! and connection count come back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::tally::{report_memory, scale, Tally};
use crate::api::Api;
use crate::client::{Client, Received};
use crate::harness::{Server, Setup};

/// Reads `n` events until the `done` sentinel on `c`.
async fn numbered_until_done(c: &mut Client, tally: &mut Tally) {
    loop {
        match c.next_within(Duration::from_secs(15)).await {
            Some(Received::Event(ev)) if ev["event"] == "done" => return,
            Some(Received::Event(ev)) if ev["event"] == "n" => {
                tally.arrived(ev["data"].as_str().unwrap().parse().unwrap());
            }
            Some(Received::Event(_)) => {}
            other => panic!("the subscriber stopped: {other:?}"),
        }
    }
}

async fn metric(server: &Server, name: &str) -> f64 {
    let url = format!("http://{}/metrics", server.metrics_addr.unwrap());
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn slowloris_heads_are_cut_off_and_everyone_else_is_served() {
    let server = Setup::new()
        .env("BELLHOP_HEADER_TIMEOUT_MS", "1500")
        .start();
    let api = Api::new(&server);
    assert_eq!(api.trigger("warm", "e", "{}").await.status, 200);
    let idle = server.rss_kb();
    let stop = Arc::new(AtomicBool::new(false));
    let mut slow = Vec::new();
    for i in 0..500 {
        let addr = server.addr;
        let stop = stop.clone();
        slow.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let started = Instant::now();
            let head = format!("GET /app/key{i}?protocol=7 HTTP/1.1\r\nHost: x\r\nX-Slow: ");
            for b in head.bytes().chain(std::iter::repeat(b'a')) {
                if stop.load(Ordering::Relaxed) || s.write_all(&[b]).await.is_err() {
                    break;
                }
                // A byte every 200 ms keeps a naive idle timer happy for ever.
                let mut buf = [0u8; 256];
                match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    _ => {}
                }
            }
            started.elapsed()
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Meanwhile: a trigger and a WebSocket go through at once.
    let t = Instant::now();
    assert_eq!(api.trigger("meanwhile", "e", "{}").await.status, 200);
    let mut c = Client::connect(&server).await;
    c.subscribe("meanwhile").await;
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let peak = server.rss_kb();
    let watchdog = tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            stop.store(true, Ordering::Relaxed);
        }
    });
    let mut longest = Duration::ZERO;
    for s in slow {
        longest = longest.max(s.await.unwrap());
    }
    watchdog.abort();
    assert!(
        !stop.load(Ordering::Relaxed),
        "a slow head was still open after 10 s"
    );
    assert!(longest < Duration::from_secs(4), "{longest:?}");
    let grown = peak.max(server.rss_kb()).saturating_sub(idle);
    report_memory("500 slowloris heads, a byte every 200 ms", idle, grown);
    assert!(grown < 30 * 1024, "RSS grew by {grown} KB");
}

#[tokio::test]
async fn subscribers_that_stop_reading_are_closed_and_the_others_get_everything() {
    let server = Setup::new()
        .toml("[server]\noutbox_capacity = 256\n")
        .start();
    let api = Api::new(&server);
    let mut fast = Client::connect(&server).await;
    fast.subscribe("flood").await;
    let mut stalled = Vec::new();
    for _ in 0..5 {
        let mut c = Client::connect(&server).await;
        c.subscribe("flood").await;
        stalled.push(c);
    }
    let idle = server.rss_kb();
    let payload = "x".repeat(4000);
    let mut tally = Tally::default();
    let reader = tokio::spawn(async move {
        let mut arrived = Tally::default();
        numbered_until_done(&mut fast, &mut arrived).await;
        arrived
    });
    for n in 0..(1500 * scale()) {
        let r = api
            .post(
                "batch_events",
                &json!({"batch": [{"name": "n", "channel": "flood", "data": n.to_string()},
                                  {"name": "pad", "channel": "flood", "data": payload}]}),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        tally.accepted.push(n);
    }
    assert_eq!(api.trigger("flood", "done", "{}").await.status, 200);
    let arrived = reader.await.unwrap();
    for n in tally.accepted.clone() {
        for _ in 0..arrived.arrived_count(n) {
            tally.arrived(n);
        }
    }
    let grown = server.rss_kb().saturating_sub(idle);
    // Each stalled socket was closed as too slow (4100) once its outbox filled.
    for mut c in stalled {
        let mut code = None;
        while let Some(r) = c.next_within(Duration::from_secs(5)).await {
            if let Received::Closed(c) = r {
                code = c;
                break;
            }
        }
        assert_eq!(code, Some(4100));
    }
    tally.report(
        "5 subscribers stop reading under a 6 MB flood",
        None,
        Some(grown),
    );
    report_memory("5 stalled subscribers under a flood", idle, grown);
    assert!(grown < 40 * 1024, "RSS grew by {grown} KB");
}

#[tokio::test]
async fn churn_gives_back_every_connection_and_channel() {
    let server = Setup::new().start();
    let api = Api::new(&server);
    let mut stable = Client::connect(&server).await;
    stable.subscribe("lobby").await;
    let idle = server.rss_kb();
    let run_for = Duration::from_secs(3 * scale());
    let mut churners = Vec::new();
    for w in 0..20 {
        let url = server.ws_url(crate::harness::KEY);
        churners.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut cycles = 0u32;
            while started.elapsed() < run_for {
                let mut ws = Client::connect_raw(&url).await;
                for ch in 0..5 {
                    let sub = json!({"event": "pusher:subscribe",
                                     "data": {"channel": format!("churn-{w}-{ch}")}});
                    ws.send(Message::Text(sub.to_string())).await.unwrap();
                }
                // Half leave cleanly, half just drop the socket.
                if cycles.is_multiple_of(2) {
                    let _ = ws.close(None).await;
                }
                drop(ws);
                cycles += 1;
            }
            cycles
        }));
    }
    let mut tally = Tally::default();
    let mut n = 0u64;
    let started = Instant::now();
    while started.elapsed() < run_for {
        assert_eq!(api.trigger("lobby", "n", &n.to_string()).await.status, 200);
        tally.accepted.push(n);
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut cycles = 0;
    for c in churners {
        cycles += c.await.unwrap();
    }
    assert_eq!(api.trigger("lobby", "done", "{}").await.status, 200);
    numbered_until_done(&mut stable, &mut tally).await;
    // Everything the churners held is given back.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let connected = metric(&server, "bellhop_connected").await;
        let channels = api.get("/channels", &[]).await.body["channels"]
            .as_object()
            .map_or(0, |c| c.len());
        if connected == 1.0 && channels == 1 {
            break;
        }
        assert!(
            Instant::now() < end,
            "still {connected} connections and {channels} channels"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grown = server.rss_kb().saturating_sub(idle);
    eprintln!("churn: {cycles} cycles of connect + 5 subscribes + disconnect");
    tally.report(
        &format!("{cycles} connect/subscribe/disconnect cycles beside a subscriber"),
        None,
        Some(grown),
    );
}
