//! Pusher webhooks end to end: real bellhop processes, a local receiver, signatures checked
//! the way Pusher's SDKs check them, and crashes (`kill -9`) that must not lose a webhook.

use std::time::Duration;

use bellhop_protocol::{signing, Secret};
use serde_json::{json, Value};

use crate::api::Api;
use crate::client::Client;
use crate::harness::{run_cli, Setup, KEY, SECRET};
use crate::receiver::{Receiver, Reply, Request};

pub fn verify(req: &Request) -> Value {
    assert_eq!(req.method, "POST");
    assert_eq!(req.headers["content-type"], "application/json");
    assert_eq!(req.headers["x-pusher-key"], KEY);
    let secret = Secret::parse(SECRET).unwrap();
    assert!(
        signing::verify_hex(
            [&secret],
            req.body.as_bytes(),
            &req.headers["x-pusher-signature"]
        ),
        "bad webhook signature"
    );
    let body: Value = serde_json::from_str(&req.body).unwrap();
    assert!(body["time_ms"].as_i64().unwrap() > 1_600_000_000_000);
    body
}

pub fn events(reqs: &[Request]) -> Vec<Value> {
    reqs.iter()
        .flat_map(|r| verify(r)["events"].as_array().unwrap().clone())
        .collect()
}

pub fn hooks(url: &str, kinds: &[&str]) -> String {
    json!([{"url": url, "event_types": kinds, "headers": {"X-Hotel": "grand"}}]).to_string()
}

pub async fn wait_events(rx: &Receiver, n: usize, secs: u64) -> Vec<Value> {
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let evs = events(&rx.requests());
        if evs.len() >= n || tokio::time::Instant::now() > end {
            return evs;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits (10 s at most) until the receiver has heard `event`.
pub async fn wait_event(rx: &Receiver, event: Value) {
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while !events(&rx.requests()).contains(&event) {
        assert!(
            tokio::time::Instant::now() < end,
            "never heard {event}: {:?}",
            events(&rx.requests())
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn every_kind_is_signed_batched_and_filtered() {
    let rx = Receiver::start(vec![]).await;
    let only = Receiver::start(vec![]).await;
    let targets = json!([
        {"url": rx.url("/hook"), "headers": {"X-Hotel": "grand"}},
        {"url": only.url("/only"), "event_types": ["member_added"]}
    ])
    .to_string();
    let server = Setup::new()
        .env("BELLHOP_APP_WEBHOOKS", &targets)
        .env("BELLHOP_WEBHOOK_DELAY_MS", "300")
        .start();
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.subscribe_presence("presence-desk", "1", json!({})).await;
    b.subscribe_presence("presence-desk", "2", json!({})).await;
    a.expect("pusher_internal:member_added").await;
    a.send(json!({"event": "client-ring", "channel": "presence-desk", "data": {"room": 204}}))
        .await;
    b.expect("client-ring").await;
    let got = wait_events(&rx, 4, 5).await;
    let names: Vec<_> = got.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "channel_occupied",
            "member_added",
            "member_added",
            "client_event"
        ],
        "{got:?}"
    );
    assert_eq!(
        got[0],
        json!({"name": "channel_occupied", "channel": "presence-desk"})
    );
    assert_eq!(got[3]["event"], "client-ring");
    assert_eq!(got[3]["data"], r#"{"room":204}"#);
    assert_eq!(got[3]["socket_id"], a.socket_id.as_str());
    assert_eq!(got[3]["user_id"], "1");
    let reqs = rx.requests();
    assert!(
        reqs.len() < 4,
        "events were batched ({} requests)",
        reqs.len()
    );
    assert_eq!(reqs[0].headers["x-hotel"], "grand");
    assert_eq!(reqs[0].path, "/hook");

    // Leaving: member_removed then channel_vacated, after the delay.
    b.close().await;
    a.close().await;
    let got = wait_events(&rx, 7, 5).await;
    let tail: Vec<_> = got[4..]
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["user_id"].clone()))
        .collect();
    assert_eq!(
        tail.iter().filter(|(n, _)| *n == "member_removed").count(),
        2,
        "{tail:?}"
    );
    assert_eq!(got.last().unwrap()["name"], "channel_vacated");

    // The filtered target saw member_added only.
    let only_events = events(&only.requests());
    assert!(
        only_events.iter().all(|e| e["name"] == "member_added"),
        "{only_events:?}"
    );
    assert_eq!(only_events.len(), 2);
}

#[tokio::test]
async fn a_quick_rejoin_cancels_the_leave() {
    let rx = Receiver::start(vec![]).await;
    let server = Setup::new()
        .env("BELLHOP_APP_WEBHOOKS", &hooks(&rx.url("/h"), &[]))
        .env("BELLHOP_WEBHOOK_DELAY_MS", "1500")
        .start();
    let mut c = Client::connect(&server).await;
    c.subscribe("lobby").await;
    assert_eq!(wait_events(&rx, 1, 5).await.len(), 1);
    c.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "lobby"}}))
        .await;
    // The channel is vacated (its leave now waits out the window) before c comes back.
    let api = Api::new(&server);
    api.wait_subscription_count("lobby", 0).await;
    c.subscribe("lobby").await;
    // A sentinel: another channel vacated after lobby was waits out the same window and is
    // due after it, so once its channel_vacated is in, lobby's would be too.
    let mut s = Client::connect(&server).await;
    s.subscribe("sentinel-room").await;
    s.close().await;
    wait_event(
        &rx,
        json!({"name": "channel_vacated", "channel": "sentinel-room"}),
    )
    .await;
    let got = events(&rx.requests());
    assert_eq!(
        got,
        vec![
            json!({"name": "channel_occupied", "channel": "lobby"}),
            json!({"name": "channel_occupied", "channel": "sentinel-room"}),
            json!({"name": "channel_vacated", "channel": "sentinel-room"}),
        ]
    );
}

#[tokio::test]
async fn failing_receiver_is_retried_until_it_recovers() {
    let rx = Receiver::start(vec![
        Reply::Status(500),
        Reply::RetryAfter(503, 1),
        Reply::Status(200),
    ])
    .await;
    let gone = Receiver::start(vec![Reply::Status(410)]).await;
    let targets = json!([{"url": rx.url("/h")}, {"url": gone.url("/g")}]).to_string();
    let server = Setup::new()
        .env("BELLHOP_APP_WEBHOOKS", &targets)
        .env("BELLHOP_ADMIN_TOKEN", "admin-secret-for-tests")
        .start();
    let mut c = Client::connect(&server).await;
    c.subscribe("retry-me").await;
    let reqs = rx.wait_for(3, 15).await;
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].body, reqs[2].body, "the same batch is retried");
    verify(&reqs[2]);
    // A 410 is permanent: one attempt only, dead-lettered. Once both jobs are closed (a
    // closed job never runs again), the requests are all there will be.
    let http = reqwest::Client::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    let list: Value = loop {
        let list: Value = http
            .get(server.http("/admin/jobs"))
            .bearer_auth("admin-secret-for-tests")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if list["counts"] == json!({"dead": 1, "done": 1}) {
            break list;
        }
        assert!(tokio::time::Instant::now() < end, "{list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(gone.requests().len(), 1);
    let dead = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["state"] == "dead")
        .unwrap();
    assert!(dead["last_error"].as_str().unwrap().starts_with("HTTP 410"));
    let done = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["state"] == "done")
        .unwrap();
    let show: Value = http
        .get(server.http(&format!("/admin/jobs/{}", done["id"])))
        .bearer_auth("admin-secret-for-tests")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let statuses: Vec<_> = show["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["http_status"].clone())
        .collect();
    assert_eq!(statuses, vec![json!(500), json!(503), json!(200)]);
    // Admin auth: wrong token, no token.
    let r = http
        .get(server.http("/admin/jobs"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http.get(server.http("/admin/jobs")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // A dead job can be retried; the target now answers 200.
    let r = http
        .post(server.http(&format!("/admin/jobs/{}/retry", dead["id"])))
        .bearer_auth("admin-secret-for-tests")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(gone.wait_for(2, 10).await.len(), 2);
}

#[tokio::test]
async fn a_webhook_enqueued_before_kill_9_is_delivered_after_restart() {
    // The target is down: the job is accepted and failing when the server dies.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{port}/h");
    let data = tempfile::tempdir().unwrap();
    // A short lease: if the kill lands mid-attempt, the restart need not wait a minute.
    let setup = Setup::new()
        .env("BELLHOP_APP_WEBHOOKS", &hooks(&url, &[]))
        .env("BELLHOP_JOB_LEASE_SECS", "2")
        .data_dir(data.path());
    let server = setup.clone().start();
    let mut c = Client::connect(&server).await;
    c.subscribe("before-crash").await;
    let db = data.path().join("bellhop.db");
    let db_url = format!("sqlite://{}", db.display());
    let mut queued = false;
    for _ in 0..100 {
        let (_, out) = run_cli(&["jobs", "list"], &[("BELLHOP_DATABASE_URL", &db_url)]);
        if out.contains("before-crash") {
            queued = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(queued, "the webhook job was not in the store");
    server.kill();

    let rx = Receiver::start_on(port, vec![]).await;
    let _server = setup.start();
    // The failed attempts before the kill pushed the next run back by their back-off (up to
    // 60 s after many attempts on a slow machine).
    let got = wait_events(&rx, 1, 70).await;
    assert!(
        !got.is_empty(),
        "the webhook never arrived after the restart"
    );
    assert_eq!(
        got[0],
        json!({"name": "channel_occupied", "channel": "before-crash"})
    );
}

#[tokio::test]
async fn a_worker_killed_mid_request_leads_to_exactly_one_more_attempt() {
    let rx = Receiver::start(vec![Reply::Hang]).await;
    let data = tempfile::tempdir().unwrap();
    let setup = Setup::new()
        .env("BELLHOP_APP_WEBHOOKS", &hooks(&rx.url("/h"), &[]))
        .env("BELLHOP_JOB_LEASE_SECS", "2")
        .env("BELLHOP_WEBHOOK_TIMEOUT_MS", "60000")
        .admin()
        .data_dir(data.path());
    let server = setup.clone().start();
    let mut c = Client::connect(&server).await;
    c.subscribe("mid-flight").await;
    assert_eq!(rx.wait_for(1, 10).await.len(), 1, "first attempt in flight");
    server.kill();
    let server = setup.start();
    let reqs = rx.wait_for(2, 15).await;
    assert!(reqs.len() >= 2);
    assert_eq!(reqs[0].body, reqs[1].body);
    // The channel died with the process: after the cancel window (nobody came back), the
    // receiver hears it vacated. That third request is the last: the second attempt of the
    // first batch succeeded and was recorded.
    let reqs = rx.wait_for(3, 15).await;
    assert_eq!(
        events(&reqs[2..]),
        vec![json!({"name": "channel_vacated", "channel": "mid-flight"})]
    );
    // Both jobs closed, the first after its second attempt: no attempt is left to come.
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let jobs = server.jobs().await;
        if jobs["counts"] == json!({"done": 2}) {
            let first = jobs["jobs"].as_array().unwrap().last().unwrap().clone();
            assert_eq!(first["attempts"], 2, "{jobs}");
            break;
        }
        assert!(tokio::time::Instant::now() < end, "{jobs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rx.requests().len(), 3);
}

#[test]
fn bad_webhook_and_store_config_fail_at_start_with_a_clear_error() {
    let (ok, out) = run_cli(
        &["check-config"],
        &[("BELLHOP_APP_WEBHOOKS", r#"[{"url": "ftp://example/hook"}]"#)],
    );
    assert!(!ok);
    assert!(out.contains("http://"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = run_cli(
        &["serve"],
        &[
            ("BELLHOP_PORT", "0"),
            ("BELLHOP_DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
            ("BELLHOP_DATA_DIR", dir.path().to_str().unwrap()),
        ],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("cannot connect to the store"), "{out}");
    let (ok, out) = run_cli(&["serve"], &[("BELLHOP_DATABASE_URL", "mysql://x/y")]);
    assert!(!ok);
    assert!(out.contains("database_url"), "{out}");
}

/// A TCP proxy to Postgres that the test can cut and restore, standing in for a store that
/// goes away while bellhop runs.
struct Proxy {
    addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, list) = (cut.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: the store looks unreachable
                }
                let h = tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                list.lock().unwrap().push(h);
            }
        });
        Proxy { addr, cut, conns }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

// Multi-threaded: the proxy must keep running while the harness blocks on start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_wait_in_memory_while_the_store_is_away() {
    let schema_url = crate::queue::postgres_schema_url().await;
    let upstream: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = Proxy::start(upstream).await;
    let via_proxy = schema_url.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let rx = Receiver::start(vec![]).await;
    let server = Setup::new()
        .env(
            "BELLHOP_APP_WEBHOOKS",
            &hooks(&rx.url("/h"), &["channel_occupied"]),
        )
        .env("BELLHOP_DATABASE_URL", &via_proxy)
        .start();
    let mut c = Client::connect(&server).await;
    c.subscribe("before-outage").await;
    assert_eq!(wait_events(&rx, 1, 10).await.len(), 1);

    proxy.cut();
    let unready = server.ready_becomes(503, Duration::from_secs(10)).await;
    assert!(unready, "readiness did not fail while the store was away");
    c.subscribe("during-outage").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        events(&rx.requests()).len(),
        1,
        "nothing can be sent while the store is away"
    );

    proxy.restore();
    let got = wait_events(&rx, 2, 30).await;
    assert_eq!(
        got.len(),
        2,
        "the batch held in memory was delivered after the outage"
    );
    assert_eq!(
        got[1],
        json!({"name": "channel_occupied", "channel": "during-outage"})
    );
}

/// `cache_miss` when a cache channel has nothing to give a new subscriber, and
/// `subscription_count` (for apps that turn the events on) once the count settles.
#[tokio::test]
async fn cache_miss_and_subscription_count_are_sent() {
    let rx = Receiver::start(vec![]).await;
    let server = Setup::new()
        .env(
            "BELLHOP_APP_WEBHOOKS",
            &hooks(&rx.url("/h"), &["cache_miss", "subscription_count"]),
        )
        .env("BELLHOP_APP_SUBSCRIPTION_COUNT", "true")
        .start();
    let mut a = Client::connect(&server).await;
    a.subscribe("cache-menu").await;
    a.expect("pusher:cache_miss").await;
    let mut b = Client::connect(&server).await;
    b.subscribe("lobby").await;
    let mut c = Client::connect(&server).await;
    c.subscribe("lobby").await;
    b.wait_for("pusher_internal:subscription_count").await;
    wait_event(&rx, json!({"name": "cache_miss", "channel": "cache-menu"})).await;
    wait_event(
        &rx,
        json!({"name": "subscription_count", "channel": "lobby", "subscription_count": 2}),
    )
    .await;
    // A cache channel with an event gives it instead: no second cache_miss.
    Api::new(&server).trigger("cache-menu", "menu", "v1").await;
    let mut d = Client::connect(&server).await;
    d.subscribe("cache-menu").await;
    assert_eq!(d.expect("menu").await["data"], "v1");
    // A sentinel: once the next count is in, an extra cache_miss before it would be too.
    d.subscribe("lobby").await;
    wait_event(
        &rx,
        json!({"name": "subscription_count", "channel": "lobby", "subscription_count": 3}),
    )
    .await;
    let misses = events(&rx.requests())
        .iter()
        .filter(|e| e["name"] == "cache_miss")
        .count();
    assert_eq!(misses, 1);
}
