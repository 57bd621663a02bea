//! Webhooks across a crash: an event observed just before `kill -9` still arrives, and the
//! channels and members that died with a process get their `channel_vacated` /
//! `member_removed` once (after a restart alone; from the survivors in a cluster).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use super::tally::Tally;
use crate::client::Client;
use crate::cluster::{nodes_with, Redis};
use crate::harness::{Server, Setup};
use crate::receiver::Receiver;
use crate::webhooks::{events, hooks};

/// "kind channel user" → how many times the receiver heard it.
fn heard(rx: &Receiver) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in events(&rx.requests()) {
        let key = format!(
            "{} {} {}",
            e["name"].as_str().unwrap(),
            e["channel"].as_str().unwrap(),
            e["user_id"].as_str().unwrap_or("-")
        );
        *out.entry(key).or_default() += 1;
    }
    out
}

/// Waits until `want` all arrived, then for one more event (a sentinel channel on `server`),
/// so that a duplicate due before it would have arrived too.
async fn settle(rx: &Receiver, server: &Server, want: &[String], secs: u64) -> Duration {
    let started = Instant::now();
    while !want.iter().all(|k| heard(rx).contains_key(k)) {
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "missing after {secs} s: {:?}",
            want.iter()
                .filter(|k| !heard(rx).contains_key(*k))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    let mut sentinel = Client::connect(server).await;
    let name = format!("sentinel-{}", rand::random::<u32>());
    sentinel.subscribe(&name).await;
    let key = format!("channel_occupied {name} -");
    while !heard(rx).contains_key(&key) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    took
}

fn tally_of(heard: &BTreeMap<String, usize>, want: &[String]) -> Tally {
    let mut tally = Tally::default();
    for (i, key) in want.iter().enumerate() {
        tally.accepted.push(i as u64);
        for _ in 0..heard.get(key).copied().unwrap_or(0) {
            tally.arrived(i as u64);
        }
    }
    tally
}

/// Subscribes 10 channels and 3 presence members, kills the node `after` the last
/// `subscription_succeeded`, restarts it, and answers what the receiver heard of each.
async fn crash_after(after: Duration) -> (Vec<String>, BTreeMap<String, usize>) {
    let rx = Receiver::start(vec![]).await;
    let data = tempfile::tempdir().unwrap();
    let setup = Setup::new()
        .env("BELLHOP_APP_WEBHOOKS", &hooks(&rx.url("/h"), &[]))
        .env("BELLHOP_WEBHOOK_DELAY_MS", "1000")
        .data_dir(data.path());
    let server = setup.clone().start();
    let mut clients = Vec::new();
    for i in 0..10 {
        let mut c = Client::connect(&server).await;
        c.subscribe(&format!("room-{i}")).await;
        clients.push(c);
    }
    for u in ["ana", "ben", "cy"] {
        let mut c = Client::connect(&server).await;
        c.subscribe_presence("presence-desk", u, json!({})).await;
        clients.push(c);
    }
    tokio::time::sleep(after).await;
    server.kill();
    drop(clients);
    let server = setup.start();
    let mut want = Vec::new();
    for i in 0..10 {
        want.push(format!("channel_occupied room-{i} -"));
        want.push(format!("channel_vacated room-{i} -"));
    }
    for u in ["ana", "ben", "cy"] {
        want.push(format!("member_added presence-desk {u}"));
        want.push(format!("member_removed presence-desk {u}"));
    }
    want.push("channel_occupied presence-desk -".into());
    want.push("channel_vacated presence-desk -".into());
    if after.is_zero() {
        // The last joins may have been inside their commit: wait for the leave of each join
        // that was heard (they come after the cancel window), then the sentinel.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let joined: Vec<String> = want
            .chunks(2)
            .filter(|p| heard(&rx).contains_key(&p[0]))
            .map(|p| p[1].clone())
            .collect();
        settle(&rx, &server, &joined, 20).await;
    } else {
        settle(&rx, &server, &want, 20).await;
    }
    (want, heard(&rx))
}

/// An event is written to the store within one commit of being observed: a kill inside that
/// commit loses the join and its leave together (the receiver never hears of either); one
/// after it loses nothing, and the channels and members that died get their leave once.
#[tokio::test]
async fn events_observed_just_before_kill_9_arrive_and_the_dead_channels_are_vacated() {
    let (want, heard) = crash_after(Duration::ZERO).await;
    for pair in want.chunks(2) {
        let (join, leave) = (heard.get(&pair[0]), heard.get(&pair[1]));
        assert_eq!(
            join, leave,
            "{pair:?}: a join and its leave, both or neither"
        );
        assert!(
            join.is_none_or(|n| *n == 1),
            "{pair:?} heard {join:?} times"
        );
    }
    let (want, heard) = crash_after(Duration::from_millis(100)).await;
    tally_of(&heard, &want).report(
        "kill -9 100 ms after 10 channels + 3 members joined (1 node)",
        None,
        None,
    );
}

#[tokio::test]
async fn survivors_vacate_what_a_killed_cluster_node_held() {
    let rx = Receiver::start(vec![]).await;
    let redis = Redis::start();
    let mut nodes = nodes_with(
        &redis,
        2,
        &[
            ("BELLHOP_APP_WEBHOOKS", &hooks(&rx.url("/h"), &[])),
            ("BELLHOP_WEBHOOK_DELAY_MS", "1000"),
        ],
    );
    let mut clients = Vec::new();
    for i in 0..30 {
        let mut c = Client::connect(&nodes[0]).await;
        c.subscribe(&format!("floor-{i}")).await;
        clients.push(c);
    }
    for u in ["ana", "ben"] {
        let mut c = Client::connect(&nodes[0]).await;
        c.subscribe_presence("presence-desk", u, json!({})).await;
        clients.push(c);
    }
    let mut want: Vec<String> = (0..30)
        .map(|i| format!("channel_occupied floor-{i} -"))
        .collect();
    settle(&rx, &nodes[1], &want, 10).await;
    let killed = Instant::now();
    nodes.remove(0).kill();
    drop(clients);
    for i in 0..30 {
        want.push(format!("channel_vacated floor-{i} -"));
    }
    for u in ["ana", "ben"] {
        want.push(format!("member_added presence-desk {u}"));
        want.push(format!("member_removed presence-desk {u}"));
    }
    // Dead after 5 s of silence, noticed at the next beat (1 s), then the 1 s cancel window.
    settle(&rx, &nodes[0], &want, 15).await;
    let recovery = killed.elapsed();
    let tally = tally_of(&heard(&rx), &want);
    tally.report(
        "kill -9 of a cluster node holding 30 channels + 2 members",
        Some(recovery),
        None,
    );
}
