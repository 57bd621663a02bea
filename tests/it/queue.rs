//! The job queue against real stores: a SQLite file and the Postgres server (each test in
//! its own schema). Claims, leases, tokens, dedupe, dead-lettering, and concurrent workers.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bellhop::jobs::retry::Schedule;
use bellhop::jobs::{Attempt, Claimed, Handler, NewJob, Outcome, Verdict, Workers};
use bellhop::store::{now_ms, Store};
use futures_util::future::BoxFuture;

pub fn postgres_url() -> String {
    std::env::var("BELLHOP_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A Postgres URL whose connections use a fresh schema of their own.
pub async fn postgres_schema_url() -> String {
    let schema = format!("bellhop_test_{:x}", rand::random::<u64>());
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&postgres_url())
        .await
        .expect("Postgres is reachable (set BELLHOP_TEST_POSTGRES_URL)");
    sqlx::Executor::execute(&mut conn, format!("CREATE SCHEMA {schema}").as_str())
        .await
        .unwrap();
    format!("{}?options=-c%20search_path%3D{schema}", postgres_url())
}

async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}/q.db", dir.path().display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    (store, dir)
}

async fn postgres() -> Store {
    let store = Store::connect(&postgres_schema_url().await).await.unwrap();
    store.migrate().await.unwrap();
    store
}

fn job(key: Option<&str>) -> NewJob {
    NewJob {
        kind: "test",
        app_id: "1".into(),
        payload: r#"{"n":1}"#.into(),
        dedupe_key: key.map(str::to_owned),
        run_at: now_ms(),
        expires_at: now_ms() + 60_000,
    }
}

fn ok() -> Attempt {
    Attempt {
        verdict: Verdict::Done,
        http_status: Some(200),
        detail: "HTTP 200".into(),
    }
}

async fn lifecycle(store: &Store) {
    let id = store.enqueue(&job(Some("k1"))).await.unwrap().unwrap();
    assert_eq!(
        store.enqueue(&job(Some("k1"))).await.unwrap(),
        None,
        "dedupe"
    );
    let claimed = store.claim(Duration::from_secs(30), 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].id, claimed[0].attempt), (id, 1));
    // Held under lease: nobody else gets it.
    assert!(store
        .claim(Duration::from_secs(30), 10)
        .await
        .unwrap()
        .is_empty());

    let fail = Attempt {
        verdict: Verdict::Retry { retry_after: None },
        http_status: Some(503),
        detail: "HTTP 503".into(),
    };
    assert!(store
        .finish(
            &claimed[0],
            "n1",
            now_ms(),
            &fail,
            &Outcome::RetryAt(now_ms())
        )
        .await
        .unwrap());
    let again = store.claim(Duration::from_secs(30), 10).await.unwrap();
    assert_eq!(again[0].attempt, 2);
    assert!(store
        .finish(&again[0], "n1", now_ms(), &ok(), &Outcome::Done)
        .await
        .unwrap());
    let (row, attempts) = store.job(id).await.unwrap().unwrap();
    assert_eq!(row.state, "done");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].outcome, "retry");
    assert_eq!(attempts[0].http_status, Some(503));
    assert_eq!(attempts[1].outcome, "ok");

    // Dead letters can be retried or dropped.
    let id2 = store.enqueue(&job(None)).await.unwrap().unwrap();
    let c = store.claim(Duration::from_secs(30), 10).await.unwrap();
    let perm = Attempt {
        verdict: Verdict::Permanent,
        http_status: Some(400),
        detail: "HTTP 400".into(),
    };
    store
        .finish(&c[0], "n1", now_ms(), &perm, &Outcome::Dead)
        .await
        .unwrap();
    assert_eq!(store.jobs(Some("dead"), 10).await.unwrap()[0].id, id2);
    assert!(store
        .retry_dead(id2, Duration::from_secs(60))
        .await
        .unwrap());
    assert!(!store
        .retry_dead(id2, Duration::from_secs(60))
        .await
        .unwrap());
    let c = store.claim(Duration::from_secs(30), 10).await.unwrap();
    store
        .finish(&c[0], "n1", now_ms(), &perm, &Outcome::Dead)
        .await
        .unwrap();
    assert!(store.drop_dead(id2).await.unwrap());
    assert!(store.job(id2).await.unwrap().is_none());
    let counts = store.job_counts().await.unwrap();
    assert_eq!(counts, vec![("done".to_string(), 1)]);
}

async fn lease_expiry(store: &Store) {
    let id = store.enqueue(&job(None)).await.unwrap().unwrap();
    let before = now_ms();
    let first = store.claim(Duration::from_millis(200), 1).await.unwrap();
    assert_eq!(first[0].id, id);
    // Claimed again as soon as the 200 ms lease has run out, and not before (5 s at most).
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    let second = loop {
        let got = store.claim(Duration::from_secs(30), 1).await.unwrap();
        if !got.is_empty() {
            break got;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the expired lease was never taken over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(now_ms() - before >= 200, "taken over inside the lease");
    assert_eq!(second[0].id, id);
    assert_eq!(second[0].attempt, 2);
    // The first worker's token no longer holds: its outcome is logged but not applied.
    assert!(!store
        .finish(&first[0], "n1", now_ms(), &ok(), &Outcome::Done)
        .await
        .unwrap());
    assert_eq!(store.job(id).await.unwrap().unwrap().0.state, "running");
    assert!(store
        .finish(&second[0], "n2", now_ms(), &ok(), &Outcome::Done)
        .await
        .unwrap());
}

#[tokio::test]
async fn sqlite_lifecycle_and_leases() {
    let (store, _dir) = sqlite().await;
    lifecycle(&store).await;
    lease_expiry(&store).await;
}

#[tokio::test]
async fn postgres_lifecycle_and_leases() {
    let store = postgres().await;
    lifecycle(&store).await;
    lease_expiry(&store).await;
}

#[tokio::test]
async fn concurrent_postgres_claimers_never_share_a_job() {
    let store = postgres().await;
    for _ in 0..300 {
        store.enqueue(&job(None)).await.unwrap();
    }
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store.claim(Duration::from_secs(60), 7).await.unwrap();
                if got.is_empty() {
                    break;
                }
                mine.extend(got.into_iter().map(|c| c.id));
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 300, "every job claimed");
    assert_eq!(unique.len(), 300, "no job claimed twice");
}

/// Fails twice (the second time with Retry-After), then succeeds.
struct Flaky {
    calls: AtomicU32,
}

impl Handler for Flaky {
    fn kind(&self) -> &'static str {
        "test"
    }
    fn schedule(&self) -> Schedule {
        Schedule {
            base: Duration::from_millis(50),
            max: Duration::from_millis(200),
        }
    }
    fn run<'a>(&'a self, _job: &'a Claimed) -> BoxFuture<'a, Attempt> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            match n {
                0 => Attempt {
                    verdict: Verdict::Retry { retry_after: None },
                    http_status: Some(500),
                    detail: "HTTP 500".into(),
                },
                1 => Attempt {
                    verdict: Verdict::Retry {
                        retry_after: Some(Duration::from_millis(300)),
                    },
                    http_status: Some(429),
                    detail: "HTTP 429".into(),
                },
                _ => ok(),
            }
        })
    }
}

#[tokio::test]
async fn workers_retry_with_backoff_and_log_every_attempt() {
    for store in [sqlite().await.0, postgres().await] {
        let flaky = Arc::new(Flaky {
            calls: AtomicU32::new(0),
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let workers = Workers::new(store.clone(), "w1".into()).handler(flaky.clone());
        let handle = tokio::spawn(workers.run(None, stopped));
        let id = store.enqueue(&job(None)).await.unwrap().unwrap();
        let mut state = String::new();
        for _ in 0..100 {
            state = store.job(id).await.unwrap().unwrap().0.state;
            if state == "done" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(state, "done");
        let (_, attempts) = store.job(id).await.unwrap().unwrap();
        let statuses: Vec<_> = attempts.iter().map(|a| a.http_status).collect();
        assert_eq!(statuses, vec![Some(500), Some(429), Some(200)]);
        // Retry-After (300 ms) was honoured between the second and third attempt.
        assert!(attempts[2].started_at - attempts[1].started_at >= 300);
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
        stop.send(true).unwrap();
        handle.await.unwrap();
    }
}

#[tokio::test]
async fn expired_jobs_are_dead_lettered() {
    let (store, _dir) = sqlite().await;
    struct AlwaysFails;
    impl Handler for AlwaysFails {
        fn kind(&self) -> &'static str {
            "test"
        }
        fn schedule(&self) -> Schedule {
            Schedule {
                base: Duration::from_millis(20),
                max: Duration::from_millis(40),
            }
        }
        fn run<'a>(&'a self, _job: &'a Claimed) -> BoxFuture<'a, Attempt> {
            Box::pin(async {
                Attempt {
                    verdict: Verdict::Retry { retry_after: None },
                    http_status: Some(503),
                    detail: "HTTP 503: down".into(),
                }
            })
        }
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let handle = tokio::spawn(
        Workers::new(store.clone(), "w1".into())
            .handler(Arc::new(AlwaysFails))
            .run(None, stopped),
    );
    let mut j = job(None);
    j.expires_at = now_ms() + 500;
    let id = store.enqueue(&j).await.unwrap().unwrap();
    let mut row = None;
    for _ in 0..100 {
        let r = store.job(id).await.unwrap().unwrap().0;
        if r.state == "dead" {
            row = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let row = row.expect("job was dead-lettered");
    assert_eq!(row.last_error.as_deref(), Some("HTTP 503: down"));
    assert!(row.attempts >= 2);
    stop.send(true).unwrap();
    handle.await.unwrap();
}

/// Waits (10 s at most) until the Postgres session named `name` has run its LISTEN and is
/// idle: from then on a NOTIFY reaches it.
async fn listening(name: &str) {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&postgres_url())
        .await
        .unwrap();
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1 \
             AND state = 'idle' AND query ILIKE 'LISTEN%'",
        )
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if n > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the worker's LISTEN never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn postgres_notify_wakes_workers_on_another_node() {
    let url = postgres_schema_url().await;
    let node_a = Store::connect(&url).await.unwrap();
    node_a.migrate().await.unwrap();
    let node_b = Store::connect(&url).await.unwrap();
    let flaky = Arc::new(Flaky {
        calls: AtomicU32::new(2), // succeeds at once
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Polling is slowed to a minute: only LISTEN/NOTIFY can wake node B quickly.
    let workers = Workers::new(node_b.clone(), "b".into())
        .poll(Duration::from_secs(60))
        .handler(flaky.clone());
    // The listener connects under a name of its own, so the test can see its LISTEN.
    let name = format!("bellhop-listen-{:x}", rand::random::<u32>());
    let listen_url = format!("{url}&application_name={name}");
    let handle = tokio::spawn(workers.run(Some(listen_url), stopped));
    listening(&name).await;
    let id = node_a.enqueue(&job(None)).await.unwrap().unwrap();
    let mut state = String::new();
    for _ in 0..60 {
        state = node_a.job(id).await.unwrap().unwrap().0.state;
        if state == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, "done", "node B was not woken by node A's enqueue");
    stop.send(true).unwrap();
    handle.await.unwrap();
}
