//! Redis killed under steady triggers and started again empty: every trigger answered 2xx
//! reaches the subscriber on the other node, once; the rest are refused (503), never dropped.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::tally::{scale, Tally};
use crate::api::Api;
use crate::client::{Client, Received};
use crate::cluster::{nodes, Redis};
use crate::harness::{APP_ID, KEY, SECRET};

/// What the trigger loop saw: the accepted ids and when the first 2xx after the outage came.
#[derive(Default)]
struct Triggers {
    tally: Tally,
    back_at: Option<Instant>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_answered_2xx_around_a_redis_restart_all_arrive() {
    let outage = Duration::from_secs(4 * scale());
    let redis = Redis::start();
    let port = redis.port;
    let nodes = nodes(&redis, 2);
    let mut far = Client::connect(&nodes[1]).await;
    far.subscribe("outage").await;

    let seen = Arc::new(Mutex::new(Triggers::default()));
    let restarted: Arc<Mutex<Option<Instant>>> = Arc::default();
    let sender = {
        let (seen, restarted) = (seen.clone(), restarted.clone());
        let addr = nodes[0].addr;
        let run_for = outage + Duration::from_secs(6);
        tokio::spawn(async move { steady_triggers(addr, run_for, seen, restarted).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(redis);
    tokio::time::sleep(outage).await;
    let _redis = Redis::start_on(port);
    *restarted.lock().unwrap() = Some(Instant::now());
    let in_flight = sender.await.unwrap();
    for t in in_flight {
        t.await.unwrap();
    }

    // A sentinel after everything: what has not arrived before it will not.
    let api = Api::new(&nodes[0]);
    let end = Instant::now() + Duration::from_secs(15);
    while api.trigger("outage", "done", "{}").await.status != 200 {
        assert!(
            Instant::now() < end,
            "the cluster never accepted the sentinel"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    loop {
        match far.next_within(Duration::from_secs(10)).await {
            Some(Received::Event(ev)) if ev["event"] == "done" => break,
            Some(Received::Event(ev)) if ev["event"] == "n" => {
                let n = ev["data"].as_str().unwrap().parse().unwrap();
                seen.tally.arrived(n);
            }
            Some(Received::Event(_)) => {}
            other => panic!("the subscriber on the other node stopped: {other:?}"),
        }
    }
    let restarted = restarted.lock().unwrap().unwrap();
    let recovery = seen.back_at.map(|t| t.saturating_duration_since(restarted));
    assert!(
        seen.tally.refused > 0,
        "the outage refused nothing: was it one?"
    );
    assert!(
        recovery.is_some(),
        "no trigger was accepted after the restart"
    );
    seen.tally
        .report("redis restarted empty under triggers", recovery, None);
}

/// Triggers `n = 0, 1, …` every 50 ms for `run_for`, each in its own task (a request held up
/// by the outage does not hold up the next), recording which were answered 2xx.
async fn steady_triggers(
    addr: std::net::SocketAddr,
    run_for: Duration,
    seen: Arc<Mutex<Triggers>>,
    restarted: Arc<Mutex<Option<Instant>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut n = 0u64;
    while started.elapsed() < run_for {
        let (seen, restarted) = (seen.clone(), restarted.clone());
        tasks.push(tokio::spawn(async move {
            let reply = Api::at(addr, APP_ID, KEY, SECRET)
                .post(
                    "events",
                    &json!({"name": "n", "channel": "outage", "data": n.to_string()}),
                )
                .await;
            let mut seen = seen.lock().unwrap();
            if (200..300).contains(&reply.status) {
                seen.tally.accepted.push(n);
                let after_restart = restarted.lock().unwrap().is_some();
                if after_restart && seen.back_at.is_none() {
                    seen.back_at = Some(Instant::now());
                }
            } else {
                assert_eq!(reply.status, 503, "{:?}", reply.body);
                seen.tally.refused += 1;
            }
        }));
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tasks
}
