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
        c.expect_silence().await;
    }
    clients[2].expect_silence().await;

    // A client event on node 0 reaches nodes 1 and 2, not its sender.
    clients[0]
        .send(json!({"event": "client-typing", "channel": "private-room-204", "data": {"x": 1}}))
        .await;
    clients[1].expect("client-typing").await;
    clients[2].expect("client-typing").await;
    clients[0].expect_silence().await;

    // Cache channels remember events triggered on another node.
    Api::new(&nodes[0])
        .trigger("cache-menu", "menu", "v1")
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut late = Client::connect(&nodes[2]).await;
    late.subscribe("cache-menu").await;
    assert_eq!(late.expect("menu").await["data"], "v1");
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = api.trigger("lobby", "during", "2").await;
    assert_eq!(
        r.status, 503,
        "a trigger that cannot reach other nodes must fail: {:?}",
        r.body
    );
    assert!(nodes[0].ready_becomes(503, Duration::from_secs(2)).await);
    far.expect_silence().await;
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
    assert_eq!(far.expect("after").await["data"], "3");
}
