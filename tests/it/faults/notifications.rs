//! Accepted notifications and events across the faults a deployment meets: a node killed
//! mid-traffic (alone on SQLite; one of two on Postgres), the store going away under
//! triggers, and a push provider failing for a while. Every trigger answered 2xx reaches its
//! subscribers and its provider; a refused one is published nowhere.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::tally::{scale, Tally};
use crate::api::Api;
use crate::client::{Client, Received};
use crate::cluster::Redis;
use crate::harness::{Server, Setup, APP_ID, KEY, SECRET};
use crate::queue::{postgres_schema_url, postgres_url};
use crate::receiver::Receiver;

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// An app whose `order.*` events also go to a business webhook (a durable job each).
fn orders_toml(receiver: &Receiver) -> String {
    format!(
        "[[apps]]\nid = '{APP_ID}'\nkey = '{KEY}'\nsecret = '{SECRET}'\n\n\
         [[apps.event_webhooks]]\nurl = '{}'\nevents = ['order.*']\nsecret = '{WHSEC}'\n",
        receiver.url("/orders")
    )
}

/// Triggers `order.created` with `{"n": n}` on `orders`, answering whether it was accepted.
async fn trigger(addr: std::net::SocketAddr, n: u64) -> Result<bool, String> {
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        Api::at(addr, APP_ID, KEY, SECRET).try_post(
            "events",
            &json!({"name": "order.created", "channel": "orders",
                    "data": json!({"n": n}).to_string()}),
        ),
    )
    .await
    .map_err(|_| "no answer in 10 s".to_string())?;
    match reply {
        Ok(r) if (200..300).contains(&r.status) => Ok(true),
        Ok(r) if r.status == 503 => Ok(false),
        Ok(r) => Err(format!("unexpected {}: {:?}", r.status, r.body)),
        // The node is down (killed): the request was never answered, so never accepted.
        Err(_) => Ok(false),
    }
}

/// Where the backend's triggers go: the node behind the load balancer right now.
type Target = Arc<Mutex<std::net::SocketAddr>>;

/// Triggers `n = 0, 1, …` every 25 ms for `run_for`, each in its own task (a request held
/// up by a dying node does not hold up the next), to whichever node `target` names then.
/// Answers the accepted and refused `n`s, and when the first acceptance after `since` came.
async fn steady_triggers(
    target: Target,
    run_for: Duration,
    since: Arc<Mutex<Option<Instant>>>,
) -> (Tally, Option<Duration>) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut n = 0u64;
    while started.elapsed() < run_for {
        let addr = *target.lock().unwrap();
        tasks.push(tokio::spawn(async move {
            (n, trigger(addr, n).await.unwrap(), Instant::now())
        }));
        n += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut tally = Tally::default();
    let mut back = None;
    let since = *since.lock().unwrap();
    for t in tasks {
        let (n, ok, at) = t.await.unwrap();
        if ok {
            tally.accepted.push(n);
            if let Some(s) = since.filter(|s| at > *s) {
                let after = at - s;
                back = Some(back.map_or(after, |b: Duration| b.min(after)));
            }
        } else {
            tally.refused += 1;
        }
    }
    tally.accepted.sort_unstable();
    (tally, back)
}

/// `n` of each business webhook the receiver got, and how often (by `webhook-id`).
fn webhooks_by_n(rx: &Receiver) -> (BTreeMap<u64, BTreeSet<String>>, usize) {
    let mut by_n: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut requests = 0;
    for r in rx.requests() {
        let body: Value = serde_json::from_str(&r.body).unwrap();
        let n = body["data"]["n"].as_u64().unwrap();
        by_n.entry(n)
            .or_default()
            .insert(r.headers["webhook-id"].clone());
        requests += 1;
    }
    (by_n, requests)
}

/// Waits until every accepted `n` reached the receiver, within `secs`.
async fn all_webhooks(rx: &Receiver, accepted: &[u64], secs: u64) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        let (by_n, _) = webhooks_by_n(rx);
        if accepted.iter().all(|n| by_n.contains_key(n)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads `order.created` events until the `done` sentinel.
async fn events_until_done(c: &mut Client, tally: &mut Tally) {
    loop {
        match c.next_within(Duration::from_secs(15)).await {
            Some(Received::Event(ev)) if ev["event"] == "done" => return,
            Some(Received::Event(ev)) if ev["event"] == "order.created" => {
                let data: Value = serde_json::from_str(ev["data"].as_str().unwrap()).unwrap();
                tally.arrived(data["n"].as_u64().unwrap());
            }
            Some(Received::Event(_)) => {}
            other => panic!("the subscriber stopped: {other:?}"),
        }
    }
}

async fn sentinel(server: &Server) {
    let api = Api::new(server);
    let end = Instant::now() + Duration::from_secs(20);
    while api.trigger("orders", "done", "{}").await.status != 200 {
        assert!(Instant::now() < end, "the sentinel was never accepted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Business webhooks: each accepted trigger's arrived (once per `webhook-id`; a job that was
/// running when its node died may be sent again with the same id: at least once).
fn webhook_tally(rx: &Receiver, accepted: &[u64]) -> (Tally, usize) {
    let (by_n, requests) = webhooks_by_n(rx);
    let mut tally = Tally::default();
    tally.accepted = accepted.to_vec();
    // A trigger refused after its notifications were accepted (the bus refused) may still
    // notify: only the accepted ones are counted; a retry would not notify twice.
    for (n, ids) in by_n.iter().filter(|(n, _)| accepted.contains(n)) {
        for _ in ids {
            tally.arrived(*n);
        }
    }
    let resent = requests - by_n.values().map(BTreeSet::len).sum::<usize>();
    (tally, resent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_traffic_loses_no_accepted_notification_sqlite() {
    lone_node_killed_mid_traffic(None, "SQLite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_traffic_loses_no_accepted_notification_postgres() {
    let db = postgres_schema_url().await;
    lone_node_killed_mid_traffic(Some(&db), "Postgres").await;
}

/// One node on `database` (its SQLite file when None) killed with triggers and jobs in
/// flight, restarted after the process manager's delay: every accepted trigger's business
/// webhook arrives.
async fn lone_node_killed_mid_traffic(database: Option<&str>, store: &str) {
    let rx = Receiver::start(vec![]).await;
    let data = tempfile::tempdir().unwrap();
    let mut setup = Setup::default()
        .toml(&orders_toml(&rx))
        .env("BELLHOP_JOB_LEASE_SECS", "2")
        .data_dir(data.path());
    if let Some(url) = database {
        setup = setup.env("BELLHOP_DATABASE_URL", url);
    }
    let server = setup.clone().start();
    let target: Target = Arc::new(Mutex::new(server.addr));
    let killed: Arc<Mutex<Option<Instant>>> = Arc::default();
    let sender = tokio::spawn(steady_triggers(
        target.clone(),
        Duration::from_secs(3 * scale()),
        killed.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(1000 * scale())).await;
    server.kill();
    *killed.lock().unwrap() = Some(Instant::now());
    // The process manager's restart delay: triggers meanwhile find nobody.
    let down = Duration::from_millis(500 * scale());
    tokio::time::sleep(down).await;
    let server = setup.start();
    *target.lock().unwrap() = server.addr;
    let (tally, back) = sender.await.unwrap();
    assert!(back.is_some(), "nothing accepted after the restart");
    // (The node's subscribers died with it: the notifications are what must survive.)
    all_webhooks(&rx, &tally.accepted, 30).await;
    let (mut webhooks, resent) = webhook_tally(&rx, &tally.accepted);
    webhooks.refused = tally.refused;
    assert!(resent <= 16, "more resends than jobs in flight: {resent}");
    webhooks.report(
        &format!(
            "kill -9 mid-traffic, restarted {:.1} s later, 1 node, {store} (business webhooks)",
            down.as_secs_f64()
        ),
        back,
        None,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_killed_mid_traffic_loses_no_accepted_event_or_notification_postgres() {
    let rx = Receiver::start(vec![]).await;
    let redis = Redis::start();
    let db = postgres_schema_url().await;
    let prefix = format!("t{:x}", rand::random::<u32>());
    let node = |i: usize| {
        Setup::default()
            .toml(&orders_toml(&rx))
            .env("BELLHOP_REDIS_URL", &redis.url())
            .env("BELLHOP_REDIS_PREFIX", &prefix)
            .env("BELLHOP_NODE_ID", &format!("node-{i}"))
            .env("BELLHOP_DATABASE_URL", &db)
            .env("BELLHOP_JOB_LEASE_SECS", "2")
            .start()
    };
    let a = node(0);
    let b = node(1);
    let mut far = Client::connect(&b).await;
    far.subscribe("orders").await;
    let target: Target = Arc::new(Mutex::new(a.addr));
    let killed: Arc<Mutex<Option<Instant>>> = Arc::default();
    let sender = tokio::spawn(steady_triggers(
        target.clone(),
        Duration::from_secs(4 * scale()),
        killed.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(1000 * scale())).await;
    a.kill();
    *killed.lock().unwrap() = Some(Instant::now());
    // The backend's load balancer moves to the survivor.
    *target.lock().unwrap() = b.addr;
    let (mut tally, back) = sender.await.unwrap();
    assert!(back.is_some(), "nothing accepted after the kill");
    sentinel(&b).await;
    events_until_done(&mut far, &mut tally).await;
    tally.report(
        "kill -9 of 1 of 2 nodes mid-traffic, Postgres (events at the other node)",
        back,
        None,
    );
    // The dead node's jobs are taken over by the survivor once their lease runs out.
    all_webhooks(&rx, &tally.accepted, 30).await;
    let (mut webhooks, resent) = webhook_tally(&rx, &tally.accepted);
    webhooks.refused = tally.refused;
    assert!(resent <= 16, "more resends than jobs in flight: {resent}");
    webhooks.report(
        "kill -9 of 1 of 2 nodes mid-traffic, Postgres (business webhooks)",
        back,
        None,
    );
}

/// A Postgres database of its own, which the test can take away from its clients and give
/// back (connections refused and cut, as when the server restarts).
struct OwnDatabase {
    name: String,
}

impl OwnDatabase {
    async fn create() -> OwnDatabase {
        let name = format!("bellhop_fault_{:x}", rand::random::<u32>());
        admin(&format!("CREATE DATABASE {name}")).await;
        OwnDatabase { name }
    }

    fn url(&self) -> String {
        let base = postgres_url();
        let (server, _) = base.rsplit_once('/').unwrap();
        format!("{server}/{}", self.name)
    }

    async fn down(&self) {
        admin(&format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false",
            self.name
        ))
        .await;
        admin(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            self.name
        ))
        .await;
    }

    async fn up(&self) {
        admin(&format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
            self.name
        ))
        .await;
    }
}

async fn admin(sql: &str) {
    let url = postgres_url();
    let (server, _) = url.rsplit_once('/').unwrap();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&format!("{server}/postgres"))
        .await
        .expect("Postgres is reachable");
    sqlx::Executor::execute(&mut conn, sql).await.unwrap();
}

#[tokio::test]
async fn while_the_store_is_away_triggers_with_rules_are_refused_and_publish_nothing() {
    let rx = Receiver::start(vec![]).await;
    let db = OwnDatabase::create().await;
    let server = Setup::default()
        .toml(&orders_toml(&rx))
        .env("BELLHOP_DATABASE_URL", &db.url())
        .start();
    let mut sub = Client::connect(&server).await;
    sub.subscribe("orders").await;
    let outage = Duration::from_secs(3 * scale());
    let mut tally = Tally::default();
    let mut refused = BTreeSet::new();
    let mut n = 0u64;
    let mut back = None;
    let mut down_at = None;
    let mut up_at: Option<Instant> = None;
    loop {
        match (down_at, up_at) {
            (None, _) if n == 20 => {
                db.down().await;
                down_at = Some(Instant::now());
            }
            (Some(d), None) if d.elapsed() >= outage => {
                db.up().await;
                up_at = Some(Instant::now());
            }
            (_, Some(u)) if u.elapsed() >= Duration::from_secs(4) => break,
            _ => {}
        }
        if trigger(server.addr, n).await.unwrap() {
            tally.accepted.push(n);
            if let Some(u) = up_at {
                back.get_or_insert(u.elapsed());
            }
        } else {
            refused.insert(n);
            tally.refused += 1;
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(tally.refused > 0, "the outage refused nothing");
    assert!(
        back.is_some(),
        "nothing was accepted after the store came back"
    );
    sentinel(&server).await;
    events_until_done(&mut sub, &mut tally).await;
    let published_anyway: Vec<u64> = refused
        .iter()
        .copied()
        .filter(|n| tally.arrived_count(*n) > 0)
        .collect();
    assert!(
        published_anyway.is_empty(),
        "refused with 503 yet published: {published_anyway:?}"
    );
    tally.report(
        "Postgres away under triggers with rules (events)",
        back,
        None,
    );
    all_webhooks(&rx, &tally.accepted, 30).await;
    let (mut webhooks, _) = webhook_tally(&rx, &tally.accepted);
    webhooks.refused = tally.refused;
    webhooks.report(
        "Postgres away under triggers with rules (business webhooks)",
        back,
        None,
    );
}

/// A push provider that fails (503, and with a longer outage also answers too late) for a
/// while: every accepted notification is pushed once it is back, and exactly once.
#[tokio::test]
async fn a_push_provider_outage_delays_but_never_loses_or_repeats_a_push() {
    let outage = Duration::from_secs(6 * scale());
    let started = Arc::new(Mutex::new(None::<Instant>));
    let pushed: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let fcm = {
        let (started, pushed) = (started.clone(), pushed.clone());
        crate::delivery::fake_fcm_with(move |token, n| {
            let down = started
                .lock()
                .unwrap()
                .is_none_or(|t: Instant| t.elapsed() < outage);
            if down {
                let fail = crate::delivery::fcm_error(
                    503,
                    "UNAVAILABLE",
                    "UNAVAILABLE",
                    "The service is currently unavailable.",
                );
                // A longer outage also hangs past the client's timeout now and then.
                let hang = scale() > 1 && n % 3 == 1;
                return Some(if hang {
                    fail.after(Duration::from_secs(16))
                } else {
                    fail
                });
            }
            *pushed.lock().unwrap().entry(token.to_owned()).or_default() += 1;
            Some(crate::delivery::ok(n as u32))
        })
        .await
    };
    let dir = tempfile::tempdir().unwrap();
    let sa = crate::delivery::service_account(dir.path(), &fcm);
    let toml = format!(
        "[[apps]]\nid = '{APP_ID}'\nkey = '{KEY}'\nsecret = '{SECRET}'\n\n\
         [apps.fcm]\nservice_account_file = '{}'\nbase_url = '{}'\n\n\
         [[apps.rules]]\nname = 'order'\nchannel = 'staff-{{id}}'\nevent = 'order'\n\
         type = 'order'\nrecipients = [{{ user = '{{{{ id }}}}' }}]\n\n\
         [[apps.rules.deliver]]\nchannel = 'fcm'\ntitle = 'Order'\nbody = 'Order {{{{ n }}}}'\n",
        sa.display(),
        fcm.url("")
    );
    let server = Setup::default().toml(&toml).start();
    let api = Api::new(&server);
    let users = 20u64;
    for u in 0..users {
        let r = api
            .post(
                &format!("users/u{u}/devices"),
                &json!({"token": format!("tok-{u}"), "platform": "android"}),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    *started.lock().unwrap() = Some(Instant::now());
    let mut tally = Tally::default();
    for u in 0..users {
        let r = api
            .trigger(
                &format!("staff-u{u}"),
                "order",
                &json!({"n": u}).to_string(),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        tally.accepted.push(u);
    }
    let end = Instant::now() + outage + Duration::from_secs(60 * scale());
    while pushed.lock().unwrap().len() < users as usize && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let back = started
        .lock()
        .unwrap()
        .map(|t| t.elapsed().saturating_sub(outage));
    // Every delivery settled, so nothing else is coming.
    for u in 0..users {
        crate::delivery::settled(&api, &format!("u{u}"), 1, 30).await;
    }
    for (token, times) in pushed.lock().unwrap().iter() {
        let u: u64 = token.trim_start_matches("tok-").parse().unwrap();
        for _ in 0..*times {
            tally.arrived(u);
        }
    }
    tally.report("FCM answering 503 (and hanging) for the outage", back, None);
}
