//! Redis restarted empty under a clustered presence channel: an observer that joined when
//! the channel's member sequence was high keeps hearing every later member event, members
//! who left during the outage are removed, and its list ends equal to the HTTP `/users`,
//! with no add of a member it has nor removal of one it lacks on the way.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::Api;
use crate::client::{data, Client, Received};
use crate::cluster::{nodes, Redis};
use crate::harness::Server;

const CHANNEL: &str = "presence-floor";

/// A client's members list, kept from its snapshot and the member events it hears.
struct Observer {
    client: Client,
    members: BTreeSet<String>,
    /// Adds of a member already listed and removals of one not listed.
    contradictions: Vec<String>,
}

impl Observer {
    async fn join(server: &Server) -> Observer {
        let mut client = Client::connect(server).await;
        let ok = client
            .subscribe_presence(CHANNEL, "observer", json!({}))
            .await;
        let ids = data(&ok)["presence"]["ids"].as_array().unwrap().clone();
        Observer {
            client,
            members: ids.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
            contradictions: Vec::new(),
        }
    }

    fn hear(&mut self, ev: &Value) {
        let user = || data(ev)["user_id"].as_str().unwrap().to_owned();
        match ev["event"].as_str() {
            Some("pusher_internal:member_added") if !self.members.insert(user()) => {
                self.contradictions.push(format!("added {} again", user()));
            }
            Some("pusher_internal:member_removed") if !self.members.remove(&user()) => {
                self.contradictions
                    .push(format!("removed absent {}", user()));
            }
            _ => {}
        }
    }

    /// Listens until the list equals `/users` (asked of `api`) and stays so, or `wait` ends.
    async fn converge(&mut self, api: &Api<'_>, wait: Duration) -> Option<Duration> {
        let started = Instant::now();
        loop {
            while let Some(Received::Event(ev)) =
                self.client.next_within(Duration::from_millis(300)).await
            {
                self.hear(&ev);
            }
            if self.members == users(api).await {
                return Some(started.elapsed());
            }
            if started.elapsed() > wait {
                return None;
            }
        }
    }
}

async fn users(api: &Api<'_>) -> BTreeSet<String> {
    let r = api.get(&format!("/channels/{CHANNEL}/users"), &[]).await;
    r.body["users"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|u| u["id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn member(server: &Server, id: &str) -> Client {
    let mut c = Client::connect(server).await;
    c.subscribe_presence(CHANNEL, id, json!({"name": id})).await;
    c
}

#[tokio::test]
async fn an_observers_members_list_recovers_after_redis_restarts_empty() {
    let redis = Redis::start();
    let port = redis.port;
    let nodes = nodes(&redis, 2);
    let api = Api::new(&nodes[0]);
    // Churn first, so the member sequence is high when the observer joins.
    for i in 0..10 {
        member(&nodes[0], &format!("early-{i}")).await.close().await;
    }
    let mut observer = Observer::join(&nodes[1]).await;
    let mut on0 = Vec::new();
    let mut on1 = Vec::new();
    for id in ["u1", "u2", "u3"] {
        on0.push(member(&nodes[0], id).await);
    }
    for id in ["u4", "u5"] {
        on1.push(member(&nodes[1], id).await);
    }
    assert!(observer
        .converge(&api, Duration::from_secs(10))
        .await
        .is_some());

    drop(redis);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Leaves during the outage: never published, and lost with Redis.
    on0.remove(1).close().await;
    on1.remove(1).close().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _redis = Redis::start_on(port);
    let restarted = Instant::now();
    assert!(nodes[0].ready_becomes(200, Duration::from_secs(10)).await);
    assert!(nodes[1].ready_becomes(200, Duration::from_secs(10)).await);

    // Life goes on: joins and a leave after the restart.
    on0.push(member(&nodes[0], "n1").await);
    on1.push(member(&nodes[1], "n2").await);
    on0.remove(1).close().await;

    let converged = observer.converge(&api, Duration::from_secs(15)).await;
    let want: BTreeSet<String> = ["observer", "u1", "u4", "n1", "n2"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(
        users(&api).await,
        want,
        "the ledger's members after the restart"
    );
    assert_eq!(observer.members, want, "the observer's members");
    assert!(converged.is_some());
    assert!(
        observer.contradictions.is_empty(),
        "{:?}",
        observer.contradictions
    );
    eprintln!(
        "FAULT-REPORT {}",
        json!({
            "scenario": "presence observer across a Redis restart (empty)",
            "accepted": want.len(),
            "delivered": observer.members.len(),
            "lost": want.difference(&observer.members).count(),
            "duplicated": observer.contradictions.len(),
            "recovery_s": (restarted.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        })
    );
}
