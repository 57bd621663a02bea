//! What providers ask of a cluster: one send budget per provider shared by every node, a
//! Retry-After that pauses the provider for every node, and one Zoho token refresh per expiry
//! however many nodes need a token. Two nodes share a private Redis and a Postgres schema.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::Api;
use crate::cluster::Redis;
use crate::delivery::{put, settled};
use crate::harness::{Server, Setup};
use crate::mock_http::{form, Mock, Response};

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-auth-token-0123456789abcd";

async fn cluster(toml: &str, n: usize) -> (Redis, Vec<Server>) {
    let redis = Redis::start();
    let db = crate::queue::postgres_schema_url().await;
    let prefix = format!("t{:x}", rand::random::<u32>());
    let nodes = (0..n)
        .map(|i| {
            Setup::new()
                .toml(toml)
                .env("BELLHOP_DATABASE_URL", &db)
                .env("BELLHOP_REDIS_URL", &redis.url())
                .env("BELLHOP_REDIS_PREFIX", &prefix)
                .env("BELLHOP_NODE_ID", &format!("node-{i}"))
                // One job at a time per node, so both nodes take part in sending.
                .env("BELLHOP_JOB_CONCURRENCY", "1")
                .start()
        })
        .collect();
    (redis, nodes)
}

fn sms_app(twilio: &Mock, limit: &str) -> String {
    format!(
        r#"
[[apps]]
id = '100'
key = 'test-key'
secret = 'test-secret'

[apps.sms]
provider = 'twilio'
default_region = 'KE'
account_sid = '{SID}'
auth_token = '{TOKEN}'
from = '+15005550006'
base_url = '{}'
{limit}

[[apps.rules]]
name = 'alert'
channel = 'alerts'
event = 'alert'
type = 'ALERT'
recipients = [{{ users_field = 'user' }}]

[[apps.rules.deliver]]
channel = 'sms'
body = 'Alert {{{{ n }}}}'
"#,
        twilio.url("")
    )
}

/// Twilio's answer to a send, with the time it arrived.
fn twilio(
    arrivals: &Arc<Mutex<Vec<(Instant, String)>>>,
    req: &crate::mock_http::Request,
    first_429: bool,
) -> Response {
    let body = form(&req.body)["Body"].clone();
    let mut a = arrivals.lock().unwrap();
    a.push((Instant::now(), body));
    if first_429 && a.len() == 1 {
        return Response::json(
            429,
            json!({"code": 20429, "message": "Too Many Requests",
            "more_info": "https://www.twilio.com/docs/errors/20429", "status": 429}),
        )
        .header("Retry-After", "3");
    }
    Response::json(
        201,
        json!({"sid": format!("SM{:032}", a.len()), "status": "queued"}),
    )
}

fn nodes_that_sent(ds: &[Value]) -> std::collections::BTreeSet<String> {
    ds.iter()
        .flat_map(|d| d["attempts"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["node"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn two_nodes_share_one_sms_budget() {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let a = arrivals.clone();
    let mock = Mock::start(move |req| twilio(&a, req, false)).await;
    let (_redis, nodes) = cluster(&sms_app(&mock, "max_per_second = 2"), 2).await;
    let apis: Vec<Api> = nodes.iter().map(Api::new).collect();
    put(&apis[0], "/users/u1", json!({"phone": "0712 345 678"})).await;
    for n in 0..12 {
        let r = apis[n % 2]
            .trigger(
                "alerts",
                "alert",
                &json!({"user": "u1", "n": n}).to_string(),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let ds = settled(&apis[1], "u1", 12, 30).await;
    assert!(ds.iter().all(|d| d["state"] == "sent"), "{ds:?}");
    assert_eq!(nodes_that_sent(&ds).len(), 2, "both nodes sent: {ds:?}");
    let times: Vec<Instant> = arrivals.lock().unwrap().iter().map(|(t, _)| *t).collect();
    assert_eq!(times.len(), 12);
    // The budget is 2 per clock second across both nodes, so 12 sends take 6 seconds at the
    // gate: the first and last are over 4 s apart. Two budgets of their own (6 sends each, 2
    // per second) would take 3 seconds, under 3 s apart. They are timed on arrival here, after
    // a loaded machine's scheduling jitter, hence a threshold between the two with room for
    // half a second of it either way.
    let span = times[11] - times[0];
    assert!(
        span >= Duration::from_millis(3500),
        "12 sends within {span:?}: {times:?}"
    );
}

#[tokio::test]
async fn a_429_on_one_node_pauses_the_provider_on_every_node() {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let a = arrivals.clone();
    let mock = Mock::start(move |req| twilio(&a, req, true)).await;
    let (_redis, nodes) = cluster(&sms_app(&mock, ""), 2).await;
    let apis: Vec<Api> = nodes.iter().map(Api::new).collect();
    put(&apis[0], "/users/u1", json!({"phone": "0712 345 678"})).await;
    apis[0]
        .trigger(
            "alerts",
            "alert",
            &json!({"user": "u1", "n": "first"}).to_string(),
        )
        .await;
    mock.wait_for("/", 1, 10).await;
    let refused_at = arrivals.lock().unwrap()[0].0;
    for n in 0..3 {
        apis[1]
            .trigger(
                "alerts",
                "alert",
                &json!({"user": "u1", "n": n}).to_string(),
            )
            .await;
    }
    let ds = settled(&apis[1], "u1", 4, 30).await;
    assert!(ds.iter().all(|d| d["state"] == "sent"), "{ds:?}");
    let got = arrivals.lock().unwrap().clone();
    assert_eq!(got.len(), 5, "one refused send and four that went: {got:?}");
    for (t, body) in &got[1..] {
        let after = *t - refused_at;
        assert!(
            after >= Duration::from_millis(2900),
            "{body:?} went {after:?} after the 429 asked for 3 s"
        );
    }
    let held: Vec<&Value> = ds
        .iter()
        .flat_map(|d| d["attempts"].as_array().unwrap())
        .filter(|a| {
            a["detail"]
                .as_str()
                .is_some_and(|d| d.contains("asked to pause"))
        })
        .collect();
    assert!(
        !held.is_empty(),
        "the others were held by the pause: {ds:?}"
    );
}

#[tokio::test]
async fn one_zoho_token_refresh_per_expiry_across_nodes() {
    let refreshes = Arc::new(AtomicUsize::new(0));
    let base = Arc::new(Mutex::new(String::new()));
    let (r, b) = (refreshes.clone(), base.clone());
    let zoho = Mock::start(move |req| {
        if req.path == "/oauth/v2/token" {
            let n = r.fetch_add(1, Ordering::SeqCst) + 1;
            // A slow accounts server widens the window in which two nodes could both refresh.
            return Response::json(200, json!({"access_token": format!("1000.tok{n}"),
                "api_domain": b.lock().unwrap().clone(), "token_type": "Bearer", "expires_in": 3600}))
                .after(Duration::from_millis(200));
        }
        let current = format!("Zoho-oauthtoken 1000.tok{}", r.load(Ordering::SeqCst));
        if req.headers.get("authorization") != Some(&current) {
            return Response::json(401, json!({"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token", "status": "error"}));
        }
        Response::json(200, json!({"data": [{"code": "SUCCESS", "action": "insert",
            "details": {"id": "4150868000001234001"}, "message": "record added", "status": "success"}]}))
    })
    .await;
    *base.lock().unwrap() = zoho.url("");
    let toml = format!(
        r#"
[[apps]]
id = '100'
key = 'test-key'
secret = 'test-secret'

[apps.zoho]
client_id = '1000.CLIENT'
client_secret = 'secret'
refresh_token = '1000.refresh'
accounts_url = '{}'

[[apps.rules]]
name = 'crm'
channel = 'bookings'
event = 'booking.created'
type = 'CRM_SYNC'
recipients = [{{ users_field = 'customer_id' }}]

[[apps.rules.deliver]]
channel = 'zoho'
zoho = {{ contact = {{ Email = '{{{{ email }}}}', Last_Name = 'Guest {{{{ n }}}}' }} }}
"#,
        zoho.url("")
    );
    let (_redis, nodes) = cluster(&toml, 2).await;
    let apis: Vec<Api> = nodes.iter().map(Api::new).collect();
    put(&apis[0], "/users/z1", json!({})).await;
    let book = |n: usize| {
        json!({"customer_id": "z1", "email": format!("g{n}@example.com"), "n": n}).to_string()
    };
    for n in 0..6 {
        apis[n % 2]
            .trigger("bookings", "booking.created", &book(n))
            .await;
    }
    let ds = settled(&apis[0], "z1", 6, 30).await;
    assert!(ds.iter().all(|d| d["state"] == "sent"), "{ds:?}");
    assert_eq!(
        nodes_that_sent(&ds).len(),
        2,
        "both nodes called Zoho: {ds:?}"
    );
    assert_eq!(
        refreshes.load(Ordering::SeqCst),
        1,
        "one token for both nodes"
    );

    // Zoho revokes the token (as at its expiry): both nodes are refused, one refreshes.
    refreshes.fetch_add(1, Ordering::SeqCst);
    for n in 6..12 {
        apis[n % 2]
            .trigger("bookings", "booking.created", &book(n))
            .await;
    }
    let ds = settled(&apis[0], "z1", 12, 30).await;
    assert!(ds.iter().all(|d| d["state"] == "sent"), "{ds:?}");
    assert_eq!(
        refreshes.load(Ordering::SeqCst),
        3,
        "one refresh after the expiry"
    );
}
