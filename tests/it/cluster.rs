//! Several bellhop processes sharing one Redis (started by the test on a free port):
//! events triggered on any node reach every subscriber on every node exactly once, and a
//! Redis outage is reported, not hidden.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::api::Api;
use crate::client::Client;
use crate::harness::{Server, Setup};

/// A private redis-server, killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    pub fn start_on(port: u16) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                dir.path().to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::park_timeout(Duration::from_millis(20));
        }
        Redis {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn nodes(redis: &Redis, n: usize) -> Vec<Server> {
    nodes_with(redis, n, &[])
}

/// `n` nodes on one Redis (a prefix of their own), each with `env` added.
pub fn nodes_with(redis: &Redis, n: usize, env: &[(&str, &str)]) -> Vec<Server> {
    let prefix = format!("t{:x}", rand::random::<u32>());
    (0..n)
        .map(|i| {
            let mut setup = Setup::new()
                .env("BELLHOP_REDIS_URL", &redis.url())
                .env("BELLHOP_REDIS_PREFIX", &prefix)
                .env("BELLHOP_NODE_ID", &format!("node-{i}"));
            for (k, v) in env {
                setup = setup.env(k, v);
            }
            setup.start()
        })
        .collect()
}

#[tokio::test]
async fn events_reach_every_node_exactly_once() {
    let redis = Redis::start();
    let nodes = nodes(&redis, 3);
    let mut clients = Vec::new();
    for node in &nodes {
        let mut c = Client::connect(node).await;
        c.subscribe("hotel-1-staff").await;
        c.subscribe("private-room-204").await;
        clients.push(c);
    }
    // Triggered on node 1, excluding a socket on node 2.
    let api = Api::new(&nodes[1]);
    let except = clients[2].socket_id.clone();
    let r = api
        .post(
            "events",
            &json!({"name": "order", "channel": "hotel-1-staff", "data": "{\"room\":204}", "socket_id": except}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    for c in &mut clients[..2] {
        assert_eq!(c.expect("order").await["data"], "{\"room\":204}");
    }
    // The bus keeps one publisher's order on a channel: a sentinel triggered through the
    // same node on the same channel is the next thing nodes 0 and 1 get (order came once)
    // and the first thing the excluded socket on node 2 gets.
    assert_eq!(
        api.trigger("hotel-1-staff", "sentinel", "1").await.status,
        200
    );
    for c in &mut clients {
        assert_eq!(c.expect_only_until("sentinel").await["data"], "1");
    }

    // A client event on node 0 reaches nodes 1 and 2, not its sender.
    clients[0]
        .send(json!({"event": "client-typing", "channel": "private-room-204", "data": {"x": 1}}))
        .await;
    clients[1].expect("client-typing").await;
    clients[2].expect("client-typing").await;
    // Node 0 handed the client event to its channel before sharing it, so a trigger through
    // node 0 on that channel now comes after it: the first thing the sender gets.
    let api0 = Api::new(&nodes[0]);
    assert_eq!(
        api0.trigger("private-room-204", "sentinel", "2")
            .await
            .status,
        200
    );
    for c in &mut clients {
        assert_eq!(c.expect_only_until("sentinel").await["data"], "2");
    }

    // Cache channels remember events triggered on another node.
    assert_eq!(api0.trigger("cache-menu", "menu", "v1").await.status, 200);
    // Node 2 remembers it when the bus brings it, a moment after the 200: subscribe until
    // it answers with the event rather than a miss (10 s at most).
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut late = Client::connect(&nodes[2]).await;
        late.subscribe("cache-menu").await;
        let ev = late.next_event().await;
        if ev["event"] == "menu" {
            assert_eq!(ev["data"], "v1");
            break;
        }
        assert_eq!(ev["event"], "pusher:cache_miss", "{ev}");
        assert!(
            tokio::time::Instant::now() < end,
            "node 2 never remembered the event triggered on node 0"
        );
        late.close().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_redis_outage_fails_triggers_and_readiness_then_recovers() {
    let redis = Redis::start();
    let port = redis.port;
    let nodes = nodes(&redis, 2);
    let mut far = Client::connect(&nodes[1]).await;
    far.subscribe("lobby").await;
    let api = Api::new(&nodes[0]);
    assert_eq!(api.trigger("lobby", "before", "1").await.status, 200);
    far.expect("before").await;

    drop(redis);
    // Once node 0 reports the outage, a trigger through it must fail.
    assert!(nodes[0].ready_becomes(503, Duration::from_secs(2)).await);
    let r = api.trigger("lobby", "during", "2").await;
    assert_eq!(
        r.status, 503,
        "a trigger that cannot reach other nodes must fail: {:?}",
        r.body
    );
    // "during" never reaches far: every frame far gets from here on is checked in order
    // (a client event, then "after", triggered through node 0 on lobby once Redis is back,
    // which comes after anything node 0 published on lobby before it).
    // Delivery on one node keeps working without Redis: a client event between two sockets
    // of node 1 still arrives.
    let mut near = Client::connect(&nodes[1]).await;
    near.subscribe("private-lobby").await;
    far.subscribe("private-lobby").await;
    near.send(json!({"event": "client-ping", "channel": "private-lobby", "data": {}}))
        .await;
    far.expect("client-ping").await;

    let _redis = Redis::start_on(port);
    let ok = nodes[0].ready_becomes(200, Duration::from_secs(10)).await
        && nodes[1].ready_becomes(200, Duration::from_secs(10)).await;
    assert!(ok, "nodes did not reconnect to Redis");
    assert_eq!(api.trigger("lobby", "after", "3").await.status, 200);
    assert_eq!(far.expect_only_until("after").await["data"], "3");
}
