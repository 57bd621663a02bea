//! Cluster-wide state across several bellhop processes on one private Redis: one presence
//! members list, counts and channel lists answered by any node, exactly-once member events and
//! webhooks (also when a node is killed, and when one user flaps across nodes), watchlists,
//! terminate_connections and limits that hold across the cluster, and a rebuild after Redis
//! comes back empty.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::Api;
use crate::client::{data, Client, Received};
use crate::cluster::{nodes_with, Redis};
use crate::receiver::Receiver;
use crate::surface::signin_frame;
use crate::webhooks::{events, hooks};

const KINDS: [&str; 4] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
];

/// Webhook events as "kind channel user" strings, counted, so duplicates show.
fn tally(events: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in events {
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

fn expected(items: &[(&str, usize)]) -> BTreeMap<String, usize> {
    items.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

/// Waits until the receiver's events tally to `want`, then a little longer to catch extras.
async fn settle_webhooks(rx: &Receiver, want: &BTreeMap<String, usize>, secs: u64) {
    let end = Instant::now() + Duration::from_secs(secs);
    while tally(&events(&rx.requests())) != *want && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(tally(&events(&rx.requests())), *want);
}

/// The member events (added/removed, user id) a client receives within `wait`.
async fn member_events(c: &mut Client, wait: Duration) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Some(Received::Event(ev)) = c.next_within(wait).await {
        let name = ev["event"].as_str().unwrap_or("");
        if let Some(kind) = name.strip_prefix("pusher_internal:member_") {
            let user = data(&ev)["user_id"].as_str().unwrap().to_owned();
            out.push((kind.to_owned(), user));
        }
    }
    out
}

/// The member events (added/removed, user id) a client receives before the sentinel
/// `member_added` of `sentinel`, which a test causes after the moment it cares about: the
/// ledger publishes a channel's member frames in the order its script ran, so nothing of
/// before can come after it. Any other frame fails.
async fn member_events_until(c: &mut Client, sentinel: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    loop {
        let ev = c.next_event().await;
        let name = ev["event"].as_str().unwrap_or("");
        let Some(kind) = name.strip_prefix("pusher_internal:member_") else {
            panic!("expected member events until {sentinel} joins, got {ev}");
        };
        let user = data(&ev)["user_id"].as_str().unwrap().to_owned();
        if kind == "added" && user == sentinel {
            return out;
        }
        out.push((kind.to_owned(), user));
    }
}

#[tokio::test]
async fn presence_is_one_members_list_across_nodes() {
    let redis = Redis::start();
    let rx = Receiver::start(vec![]).await;
    let h = hooks(&rx.url("/hook"), &KINDS);
    let nodes = nodes_with(
        &redis,
        3,
        &[
            ("BELLHOP_APP_WEBHOOKS", &h),
            ("BELLHOP_WEBHOOK_DELAY_MS", "300"),
            ("BELLHOP_WEBHOOK_BATCH_MS", "50"),
        ],
    );
    let mut ann = Client::connect(&nodes[0]).await;
    let ok = ann
        .subscribe_presence("presence-staff", "1", json!({"name": "Ann"}))
        .await;
    assert_eq!(
        data(&ok),
        json!({"presence": {"ids": ["1"], "hash": {"1": {"name": "Ann"}}, "count": 1}})
    );

    let mut bob = Client::connect(&nodes[1]).await;
    let ok = bob
        .subscribe_presence("presence-staff", "2", json!({"name": "Bob"}))
        .await;
    let d = data(&ok);
    assert_eq!(d["presence"]["count"], 2);
    assert_eq!(d["presence"]["hash"]["1"], json!({"name": "Ann"}));
    assert_eq!(d["presence"]["hash"]["2"], json!({"name": "Bob"}));
    let added = ann.expect("pusher_internal:member_added").await;
    assert_eq!(
        data(&added),
        json!({"user_id": "2", "user_info": {"name": "Bob"}})
    );

    // Bob's second socket, on a third node, adds nobody.
    let mut bob2 = Client::connect(&nodes[2]).await;
    let ok = bob2
        .subscribe_presence("presence-staff", "2", json!({"name": "Bob"}))
        .await;
    assert_eq!(data(&ok)["presence"]["count"], 2);

    // Any node answers for the whole cluster.
    let users = Api::new(&nodes[2])
        .get("/channels/presence-staff/users", &[])
        .await;
    assert_eq!(users.body, json!({"users": [{"id": "1"}, {"id": "2"}]}));
    let info = Api::new(&nodes[0])
        .get(
            "/channels/presence-staff",
            &[("info", "user_count,subscription_count")],
        )
        .await;
    assert_eq!(
        info.body,
        json!({"occupied": true, "user_count": 2, "subscription_count": 3})
    );
    let list = Api::new(&nodes[1])
        .get(
            "/channels",
            &[("filter_by_prefix", "presence-"), ("info", "user_count")],
        )
        .await;
    assert_eq!(
        list.body,
        json!({"channels": {"presence-staff": {"user_count": 2}}})
    );

    // A sentinel member joining after bob2's join was answered (a presence join waits for
    // the ledger): its member_added is the next frame everyone gets, so bob was told nothing
    // of himself and nobody anything of bob2.
    let mut s1 = Client::connect(&nodes[2]).await;
    s1.subscribe_presence("presence-staff", "sentinel-1", json!({}))
        .await;
    for c in [&mut ann, &mut bob, &mut bob2] {
        c.expect_only_member("pusher_internal:member_added", "sentinel-1")
            .await;
    }

    // One of Bob's sockets leaving removes nothing; the last one does, once.
    bob2.close().await;
    // Once the ledger counts bob2 gone, the sentinel's leave comes after anything it caused.
    let api = Api::new(&nodes[1]);
    api.wait_subscription_count("presence-staff", 3).await;
    s1.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "presence-staff"}}))
        .await;
    for c in [&mut ann, &mut bob] {
        c.expect_only_member("pusher_internal:member_removed", "sentinel-1")
            .await;
    }
    bob.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "presence-staff"}}))
        .await;
    let removed = ann.expect("pusher_internal:member_removed").await;
    assert_eq!(data(&removed), json!({"user_id": "2"}));
    // Removed once: the next member frame is a later sentinel's.
    let mut s2 = Client::connect(&nodes[1]).await;
    s2.subscribe_presence("presence-staff", "sentinel-2", json!({}))
        .await;
    ann.expect_only_member("pusher_internal:member_added", "sentinel-2")
        .await;
    ann.close().await;
    s2.close().await;

    settle_webhooks(
        &rx,
        &expected(&[
            ("channel_occupied presence-staff -", 1),
            ("channel_vacated presence-staff -", 1),
            ("member_added presence-staff 1", 1),
            ("member_added presence-staff 2", 1),
            ("member_added presence-staff sentinel-1", 1),
            ("member_added presence-staff sentinel-2", 1),
            ("member_removed presence-staff 1", 1),
            ("member_removed presence-staff 2", 1),
            ("member_removed presence-staff sentinel-1", 1),
            ("member_removed presence-staff sentinel-2", 1),
        ]),
        10,
    )
    .await;
    let gone = Api::new(&nodes[1])
        .get(
            "/channels/presence-staff",
            &[("info", "subscription_count")],
        )
        .await;
    assert_eq!(
        gone.body,
        json!({"occupied": false, "subscription_count": 0})
    );
}

#[tokio::test]
async fn a_rejoin_on_another_node_within_the_window_sends_no_webhooks() {
    let redis = Redis::start();
    let rx = Receiver::start(vec![]).await;
    let h = hooks(&rx.url("/hook"), &KINDS);
    let nodes = nodes_with(
        &redis,
        2,
        &[
            ("BELLHOP_APP_WEBHOOKS", &h),
            ("BELLHOP_WEBHOOK_DELAY_MS", "1500"),
            ("BELLHOP_WEBHOOK_BATCH_MS", "50"),
        ],
    );
    let mut first = Client::connect(&nodes[0]).await;
    first
        .subscribe_presence("presence-desk", "7", json!({}))
        .await;
    let joined = expected(&[
        ("channel_occupied presence-desk -", 1),
        ("member_added presence-desk 7", 1),
    ]);
    settle_webhooks(&rx, &joined, 5).await;

    // The user's socket moves from node 0 to node 1 within the cancel window.
    first.close().await;
    let mut again = Client::connect(&nodes[1]).await;
    again
        .subscribe_presence("presence-desk", "7", json!({}))
        .await;
    // A sentinel: a leave on node 0 after first's waits out the same window and is due
    // after it, so once the sentinel's channel_vacated is in, a leave of desk not cancelled
    // would be too.
    let mut sentinel = Client::connect(&nodes[0]).await;
    sentinel.subscribe("sentinel-room").await;
    sentinel.close().await;
    let mut want = joined.clone();
    want.insert("channel_occupied sentinel-room -".into(), 1);
    want.insert("channel_vacated sentinel-room -".into(), 1);
    settle_webhooks(&rx, &want, 10).await;

    // A real leave is sent once the window closes.
    again.close().await;
    let mut all = want.clone();
    all.insert("member_removed presence-desk 7".into(), 1);
    all.insert("channel_vacated presence-desk -".into(), 1);
    settle_webhooks(&rx, &all, 6).await;
}

#[tokio::test]
async fn a_killed_nodes_members_are_removed_once_within_dead_after_plus_a_beat() {
    let redis = Redis::start();
    let rx = Receiver::start(vec![]).await;
    let h = hooks(&rx.url("/hook"), &KINDS);
    let env = [
        ("BELLHOP_APP_WEBHOOKS", h.as_str()),
        ("BELLHOP_WEBHOOK_DELAY_MS", "0"),
        ("BELLHOP_WEBHOOK_BATCH_MS", "50"),
    ];
    let mut nodes = nodes_with(&redis, 3, &env);
    let mut ann = Client::connect(&nodes[0]).await;
    ann.subscribe_presence("presence-floor", "1", json!({}))
        .await;
    let mut carol = Client::connect(&nodes[2]).await;
    carol
        .subscribe_presence("presence-floor", "3", json!({}))
        .await;
    carol.subscribe("room-204").await;
    ann.expect("pusher_internal:member_added").await;
    let before = expected(&[
        ("channel_occupied presence-floor -", 1),
        ("channel_occupied room-204 -", 1),
        ("member_added presence-floor 1", 1),
        ("member_added presence-floor 3", 1),
    ]);
    settle_webhooks(&rx, &before, 5).await;

    let killed = nodes.pop().unwrap();
    let t0 = Instant::now();
    killed.kill();
    let removed = ann
        .expect_within("pusher_internal:member_removed", 10)
        .await;
    // The README's promise: noticed within node_dead_after_ms (5 s) plus one beat (1 s) of
    // the node's last beat, which came at most a beat before the kill; half a second more
    // for the member frame to travel.
    assert!(
        t0.elapsed() < Duration::from_millis(6_500),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(data(&removed), json!({"user_id": "3"}));

    let users = Api::new(&nodes[1])
        .get("/channels/presence-floor/users", &[])
        .await;
    assert_eq!(users.body, json!({"users": [{"id": "1"}]}));
    let list = Api::new(&nodes[0]).get("/channels", &[]).await;
    assert_eq!(list.body, json!({"channels": {"presence-floor": {}}}));
    let mut after = before.clone();
    after.insert("member_removed presence-floor 3".into(), 1);
    after.insert("channel_vacated room-204 -".into(), 1);
    // Both survivors beat (a beat is a second); only one may take the dead node's share.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Carol was removed once: the next member frame ann gets is a sentinel's, joining now.
    let mut sentinel = Client::connect(&nodes[1]).await;
    sentinel
        .subscribe_presence("presence-floor", "sentinel", json!({}))
        .await;
    ann.expect_only_member("pusher_internal:member_added", "sentinel")
        .await;
    after.insert("member_added presence-floor sentinel".into(), 1);
    settle_webhooks(&rx, &after, 5).await;
}

#[tokio::test]
async fn a_flood_of_joins_and_leaves_of_one_user_across_nodes_stays_exact() {
    let redis = Redis::start();
    let rx = Receiver::start(vec![]).await;
    let h = hooks(&rx.url("/hook"), &["member_added", "member_removed"]);
    let nodes = nodes_with(
        &redis,
        3,
        &[
            ("BELLHOP_APP_WEBHOOKS", &h),
            ("BELLHOP_WEBHOOK_DELAY_MS", "0"),
            ("BELLHOP_WEBHOOK_BATCH_MS", "50"),
        ],
    );
    let mut watcher = Client::connect(&nodes[0]).await;
    watcher
        .subscribe_presence("presence-flood", "watcher", json!({}))
        .await;

    // One socket per node for user "u", each joining and leaving 15 times at its own pace.
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let url = node.ws_url(crate::harness::KEY);
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect_to(&url).await;
            for round in 0..15u64 {
                c.subscribe_presence("presence-flood", "u", json!({"node": i}))
                    .await;
                tokio::time::sleep(Duration::from_millis((round * 7 + i as u64 * 5) % 23)).await;
                c.send(
                    json!({"event": "pusher:unsubscribe", "data": {"channel": "presence-flood"}}),
                )
                .await;
                tokio::time::sleep(Duration::from_millis((round * 11 + i as u64 * 3) % 17)).await;
            }
            c.close().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every join was answered (after the ledger) and every leave is applied once the ledger
    // lists the watcher alone; a sentinel joining after that is the last member frame.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let users = Api::new(&nodes[2])
            .get("/channels/presence-flood/users", &[])
            .await;
        if users.body == json!({"users": [{"id": "watcher"}]}) {
            break;
        }
        assert!(Instant::now() < end, "u never left: {:?}", users.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut sentinel = Client::connect(&nodes[1]).await;
    sentinel
        .subscribe_presence("presence-flood", "sentinel", json!({}))
        .await;
    let seen = member_events_until(&mut watcher, "sentinel").await;
    assert!(!seen.is_empty());
    // Strictly alternating, starting with an add and ending with a remove.
    for (i, (kind, user)) in seen.iter().enumerate() {
        assert_eq!(user, "u");
        let want = if i % 2 == 0 { "added" } else { "removed" };
        assert_eq!(kind, want, "event {i} of {seen:?}");
    }
    assert_eq!(seen.len() % 2, 0, "{seen:?}");

    // The webhooks tell the same story: one per change the watcher saw.
    let pairs = seen.len() / 2;
    settle_webhooks(
        &rx,
        &expected(&[
            ("member_added presence-flood u", pairs),
            ("member_added presence-flood watcher", 1),
            ("member_added presence-flood sentinel", 1),
            ("member_removed presence-flood u", pairs),
        ]),
        10,
    )
    .await;
}

#[tokio::test]
async fn watchlists_terminate_and_limits_hold_across_nodes() {
    let redis = Redis::start();
    let nodes = nodes_with(
        &redis,
        3,
        &[
            ("BELLHOP_APP_MAX_CONNECTIONS", "3"),
            ("BELLHOP_APP_MAX_EVENTS_PER_SECOND", "6"),
        ],
    );
    // Watchlist across nodes: online when the user's first socket anywhere signs in.
    let mut manager = Client::connect(&nodes[0]).await;
    let f = signin_frame(&manager, r#"{"id":"mgr","watchlist":["porter-1"]}"#);
    manager.send(f).await;
    manager.expect("pusher:signin_success").await;
    let mut porter = Client::connect(&nodes[1]).await;
    let f = signin_frame(&porter, r#"{"id":"porter-1"}"#);
    porter.send(f).await;
    porter.expect("pusher:signin_success").await;
    let ev = manager.expect("pusher_internal:watchlist_events").await;
    assert_eq!(
        data(&ev),
        json!({"events": [{"name": "online", "user_ids": ["porter-1"]}]})
    );

    // The connection limit counts every node: the third connection fills it.
    let mut third = Client::connect(&nodes[2]).await;
    third.subscribe("lobby").await;
    let mut fourth = Client::connect_raw_client(&nodes[2].ws_url(crate::harness::KEY)).await;
    fourth.expect_refusal(4004).await;

    // GET /channels on a node with no subscriber of its own.
    let list = Api::new(&nodes[0])
        .get("/channels", &[("info", "subscription_count")])
        .await;
    assert_eq!(
        list.body,
        json!({"channels": {"lobby": {"subscription_count": 1}}})
    );

    // terminate_connections through node 2 closes the porter's socket on node 1.
    let r = Api::new(&nodes[2])
        .post("users/porter-1/terminate_connections", &json!({}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    porter.expect_refusal(4009).await;
    let ev = manager.expect("pusher_internal:watchlist_events").await;
    assert_eq!(
        data(&ev),
        json!({"events": [{"name": "offline", "user_ids": ["porter-1"]}]})
    );

    // The backend event rate is shared: 4 messages through node 0 and 4 through node 1 in
    // the same second exceed 6.
    let channels = json!(["a", "b", "c", "d"]);
    let mut refused = None;
    for _ in 0..3 {
        // Start just after a second boundary so both requests fall in one window.
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        tokio::time::sleep(Duration::from_millis(u64::from(1010 - ms))).await;
        let body = json!({"name": "e", "channels": channels, "data": "x"});
        let a = Api::new(&nodes[0]).post("events", &body).await;
        let b = Api::new(&nodes[1]).post("events", &body).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        if b.status == 429 {
            refused = Some(b);
            break;
        }
    }
    let refused = refused.expect("the second request in one second was not refused");
    assert!(refused.body["error"]
        .as_str()
        .is_some_and(|m| m.contains("6 messages")));
}

#[tokio::test]
async fn presence_is_rebuilt_when_redis_comes_back_empty() {
    let redis = Redis::start();
    let port = redis.port;
    let nodes = nodes_with(&redis, 2, &[]);
    let mut ann = Client::connect(&nodes[0]).await;
    ann.subscribe_presence("presence-team", "1", json!({"n": "Ann"}))
        .await;
    let mut bob = Client::connect(&nodes[1]).await;
    bob.subscribe_presence("presence-team", "2", json!({"n": "Bob"}))
        .await;
    ann.expect("pusher_internal:member_added").await;

    drop(redis);
    assert!(nodes[0].ready_becomes(503, Duration::from_secs(5)).await);
    let _redis = Redis::start_on(port);
    for n in &nodes {
        assert!(n.ready_becomes(200, Duration::from_secs(10)).await);
    }
    // Each node restores its share of the members list from its own sockets.
    let end = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let users = Api::new(&nodes[1])
            .get("/channels/presence-team/users", &[])
            .await;
        if users.body == json!({"users": [{"id": "1"}, {"id": "2"}]}) || Instant::now() > end {
            break users.body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body, json!({"users": [{"id": "1"}, {"id": "2"}]}));
    // Nobody was told anything changed, and the rebuilt list works as before: carol's
    // member_added is the next frame ann gets, then bob's member_removed.
    let mut carol = Client::connect(&nodes[0]).await;
    let ok = carol
        .subscribe_presence("presence-team", "3", json!({}))
        .await;
    assert_eq!(data(&ok)["presence"]["count"], 3);
    assert_eq!(data(&ok)["presence"]["hash"]["2"], json!({"n": "Bob"}));
    ann.expect_only_member("pusher_internal:member_added", "3")
        .await;
    bob.close().await;
    ann.expect_only_member("pusher_internal:member_removed", "2")
        .await;
}

/// Waits for a `subscription_count` event announcing `n`, skipping earlier counts.
async fn count_reaches(c: &mut Client, n: u64) {
    loop {
        let ev = c.wait_for("pusher_internal:subscription_count").await;
        if data(&ev)["subscription_count"] == n {
            return;
        }
    }
}

#[tokio::test]
async fn counts_user_events_and_key_ttls_across_nodes() {
    let redis = Redis::start();
    let prefix = format!("ttl{:x}", rand::random::<u32>());
    let nodes = nodes_with(
        &redis,
        2,
        &[
            ("BELLHOP_REDIS_PREFIX", &prefix),
            ("BELLHOP_APP_SUBSCRIPTION_COUNT", "true"),
        ],
    );
    // subscription_count events carry the cluster-wide count to every node's subscribers.
    let mut a = Client::connect(&nodes[0]).await;
    a.subscribe("hall").await;
    let mut b = Client::connect(&nodes[1]).await;
    b.subscribe("hall").await;
    count_reaches(&mut a, 2).await;
    count_reaches(&mut b, 2).await;

    // sendToUser through one node reaches the user's socket on another.
    let mut guest = Client::connect(&nodes[1]).await;
    let f = signin_frame(&guest, r#"{"id":"guest-9"}"#);
    guest.send(f).await;
    guest.expect("pusher:signin_success").await;
    guest.subscribe("#server-to-user-guest-9").await;
    let r = Api::new(&nodes[0])
        .trigger(
            "#server-to-user-guest-9",
            "booking-confirmed",
            "{\"room\":12}",
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let ev = guest.wait_for("booking-confirmed").await;
    assert_eq!(data(&ev), json!({"room": 12}));

    // Nothing the cluster writes lives for ever: every key under the prefix has a TTL.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli is installed with redis-server");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let pattern = format!("{prefix}:*");
    let keys = cli(&["--scan", "--pattern", &pattern]);
    let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
    assert!(keys.len() >= 5, "{keys:?}");
    for k in keys {
        let ttl: i64 = cli(&["TTL", k]).trim().parse().unwrap();
        assert!(ttl > 0, "{k} has no TTL ({ttl})");
    }
}

#[tokio::test]
async fn the_presence_member_limit_holds_across_nodes() {
    let redis = Redis::start();
    let prefix = format!("full{:x}", rand::random::<u32>());
    let toml = "[[apps]]\nid = '100'\nkey = 'test-key'\nsecret = 'test-secret'\nmax_presence_members = 2\n";
    let nodes: Vec<_> = (0..3)
        .map(|i| {
            crate::harness::Setup::default()
                .toml(toml)
                .env("BELLHOP_REDIS_URL", &redis.url())
                .env("BELLHOP_REDIS_PREFIX", &prefix)
                .env("BELLHOP_NODE_ID", &format!("node-{i}"))
                .start()
        })
        .collect();
    let mut a = Client::connect(&nodes[0]).await;
    a.subscribe_presence("presence-small", "1", json!({})).await;
    let mut b = Client::connect(&nodes[1]).await;
    b.subscribe_presence("presence-small", "2", json!({})).await;
    // A third user on a third node finds the channel full.
    let mut c = Client::connect(&nodes[2]).await;
    let cd = json!({"user_id": "3"}).to_string();
    let auth = c.sign("presence-small", Some(&cd));
    c.subscribe_with("presence-small", Some(&auth), Some(&cd))
        .await;
    let ev = c.expect("pusher:subscription_error").await;
    assert_eq!(ev["data"]["type"], "LimitReached");
    assert_eq!(ev["data"]["status"], 400);
    // An existing member may add a socket anywhere; the refusal counted nothing.
    let mut b2 = Client::connect(&nodes[2]).await;
    b2.subscribe_presence("presence-small", "2", json!({}))
        .await;
    let info = Api::new(&nodes[0])
        .get(
            "/channels/presence-small",
            &[("info", "user_count,subscription_count")],
        )
        .await;
    assert_eq!(
        info.body,
        json!({"occupied": true, "user_count": 2, "subscription_count": 3})
    );
    a.expect_only_member("pusher_internal:member_added", "2")
        .await;
    // The channel is full, so the sentinel is a leave: once user 2's sockets are gone, their
    // member_removed is the next frame a gets (no member_added for 3, nothing for b2).
    b.close().await;
    b2.close().await;
    a.expect_only_member("pusher_internal:member_removed", "2")
        .await;
}

#[tokio::test]
async fn a_node_taken_for_dead_comes_back_without_ghost_members() {
    let redis = Redis::start();
    let nodes = nodes_with(&redis, 2, &[("BELLHOP_NODE_DEAD_AFTER_MS", "2000")]);
    let mut ann = Client::connect(&nodes[0]).await;
    ann.subscribe_presence("presence-desk", "ann", json!({}))
        .await;
    let mut carol = Client::connect(&nodes[1]).await;
    carol
        .subscribe_presence("presence-desk", "carol", json!({}))
        .await;
    ann.expect("pusher_internal:member_added").await;

    // Node 1 freezes long enough to be reaped; carol leaves while it is frozen.
    nodes[1].signal("STOP");
    let removed = ann
        .expect_within("pusher_internal:member_removed", 10)
        .await;
    assert_eq!(data(&removed), json!({"user_id": "carol"}));
    carol.close().await;
    nodes[1].signal("CONT");
    // Back, it restores its share and reads carol's close, in whichever order: the last word
    // on carol is that she left (never a ghost), and the list agrees.
    let seen = member_events(&mut ann, Duration::from_secs(3)).await;
    let last = seen.iter().rev().find(|(_, u)| u == "carol");
    assert!(
        last.is_none_or(|(kind, _)| kind == "removed"),
        "carol came back: {seen:?}"
    );
    let users = Api::new(&nodes[0])
        .get("/channels/presence-desk/users", &[])
        .await;
    assert_eq!(users.body, json!({"users": [{"id": "ann"}]}));
    // And a member it still has is restored: dave joins on node 1 and stays.
    let mut dave = Client::connect(&nodes[1]).await;
    dave.subscribe_presence("presence-desk", "dave", json!({}))
        .await;
    ann.expect("pusher_internal:member_added").await;
}

/// A client's view of a presence channel: its snapshot, then every member event after it.
fn view(snapshot: &Value, events: &[(String, String)]) -> std::collections::BTreeSet<String> {
    let mut members: std::collections::BTreeSet<String> = snapshot["presence"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    for (kind, user) in events {
        match kind.as_str() {
            "added" => assert!(members.insert(user.clone()), "{user} added twice"),
            _ => assert!(members.remove(user), "{user} removed but not a member"),
        }
    }
    members
}

#[tokio::test]
async fn users_joining_at_once_on_every_node_all_see_the_same_members() {
    let redis = Redis::start();
    let nodes = nodes_with(&redis, 3, &[]);
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| n.ws_url(crate::harness::KEY))
        .collect();
    let mut joins = Vec::new();
    for i in 0..30 {
        let url = urls[i % 3].clone();
        joins.push(tokio::spawn(async move {
            let mut c = Client::connect_to(&url).await;
            let ok = c
                .subscribe_presence("presence-shift", &format!("u{i}"), json!({}))
                .await;
            (c, data(&ok))
        }));
    }
    let mut clients = Vec::new();
    for j in joins {
        clients.push(j.await.unwrap());
    }
    let everyone: std::collections::BTreeSet<String> = (0..30).map(|i| format!("u{i}")).collect();
    // Every join was answered after the ledger ran it: a sentinel joining now is the last
    // member frame each client gets.
    let mut sentinel = Client::connect(&nodes[0]).await;
    sentinel
        .subscribe_presence("presence-shift", "sentinel", json!({}))
        .await;
    let views =
        futures_util::future::join_all(clients.iter_mut().map(|(c, snapshot)| async move {
            let events = member_events_until(c, "sentinel").await;
            view(snapshot, &events)
        }))
        .await;
    for v in views {
        assert_eq!(v, everyone);
    }
}
