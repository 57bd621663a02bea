//! The booking flows of the delivery engine against a real SMTP server: reminders counted
//! back from the booking's start, re-timed when it is rescheduled and cancelled with it; a 5xx
//! that is permanent and a stalled server that cannot hold a worker; preferences, quiet hours
//! and a critical message that passes both; and a crash between accepting and sending.

use std::time::Duration;

use serde_json::{json, Value};

use crate::api::Api;
use crate::delivery::{deliveries, put, settled, state_of, Smtp};
use crate::harness::Setup;

fn app_toml(smtp: &Smtp, timeout_secs: u64, rules: &str) -> String {
    format!(
        "[[apps]]\nid = '100'\nkey = 'test-key'\nsecret = 'test-secret'\n{}\n{rules}",
        smtp.toml(timeout_secs)
    )
}

const BOOKING_RULES: &str = r#"
[[apps.rules]]
name = 'reminder'
channel = 'bookings'
event = 'booking.confirmed | booking.rescheduled'
type = 'EXPERIENCE_REMINDER'
recipients = [{ users_field = 'attendee_id' }]
idempotency_key = '{{ booking_id }}'
schedule = { at = 'start_at', minutes_before = [1440, 60] }

[[apps.rules.deliver]]
channel = 'email'
subject = 'Reminder: {{ title }} in {{ minutes_before }} minutes'
body = 'Hello {{ recipient.display_name }}, {{ title }} starts at {{ start_at }}.'

[[apps.rules]]
name = 'cancellation'
channel = 'bookings'
event = 'booking.cancelled'
type = 'EMAIL_CANCELLATION'
recipients = [{ users_field = 'attendee_id' }]
idempotency_key = '{{ booking_id }}'
cancels = ['reminder']

[[apps.rules.deliver]]
channel = 'email'
subject = 'Cancelled: {{ title }}'
body = 'Your booking {{ booking_id }} is cancelled.'
"#;

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn wait_mail(smtp: &Smtp, n: usize, secs: u64) -> Vec<(String, Value)> {
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    while smtp.messages().len() < n && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    smtp.messages()
}

fn count(ds: &[Value], state: &str) -> usize {
    ds.iter().filter(|d| d["state"] == state).count()
}

#[tokio::test]
async fn reminders_follow_the_booking_when_it_moves_and_when_it_is_cancelled() {
    let smtp = Smtp::start("ok");
    let server = Setup::default()
        .toml(&app_toml(&smtp, 10, BOOKING_RULES))
        .admin()
        .start();
    let api = Api::new(&server);
    let r = put(
        &api,
        "/users/guest-5",
        json!({"email": "ana@example.com", "display_name": "Ana"}),
    )
    .await;
    assert_eq!(r.status, 200);
    let day = 1440 * 60_000;
    // The 24-hour reminder of the first time would go out in 3 s, the 1-hour one tomorrow.
    let first = json!({"booking_id": "B-1", "attendee_id": "guest-5", "title": "Spa",
        "start_at": rfc3339(now_ms() + day + 3000)});
    let r = api
        .trigger("bookings", "booking.confirmed", &first.to_string())
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Rescheduled at once: the new 24-hour reminder is due in 5 s; the old ones give way.
    let moved = json!({"booking_id": "B-1", "attendee_id": "guest-5", "title": "Spa",
        "start_at": rfc3339(now_ms() + day + 5000)});
    let r = api
        .trigger("bookings", "booking.rescheduled", &moved.to_string())
        .await;
    assert_eq!(r.status, 200);
    // The same reschedule again changes nothing.
    let r = api
        .trigger("bookings", "booking.rescheduled", &moved.to_string())
        .await;
    assert_eq!(r.status, 200);
    let ds = deliveries(&api, "guest-5").await;
    assert_eq!(ds.len(), 4, "{ds:?}");
    assert_eq!(count(&ds, "cancelled"), 2, "{ds:?}");
    assert_eq!(count(&ds, "scheduled"), 2, "{ds:?}");
    assert!(ds
        .iter()
        .filter(|d| d["state"] == "cancelled")
        .all(|d| d["reason"] == "superseded by a later event"));

    let mail = wait_mail(&smtp, 1, 15).await;
    // The superseded reminders were due before the re-timed one: once every due job has
    // finished, whatever they were going to send has arrived.
    server.due_jobs_finished(15).await;
    let mail_now = smtp.messages();
    assert_eq!(
        mail_now.len(),
        1,
        "only the re-timed reminder is sent: {mail:?}"
    );
    let (eml, meta) = &mail_now[0];
    assert_eq!(meta["rcpt_tos"], json!(["ana@example.com"]));
    assert!(
        eml.contains("Subject: Reminder: Spa in 1440 minutes"),
        "{eml}"
    );
    assert!(eml.contains("Hello Ana, Spa starts at"), "{eml}");

    // Cancelled: the pending 1-hour reminder is cancelled, and the cancellation goes out.
    let cancel = json!({"booking_id": "B-1", "attendee_id": "guest-5", "title": "Spa"});
    let r = api
        .trigger("bookings", "booking.cancelled", &cancel.to_string())
        .await;
    assert_eq!(r.status, 200);
    let mail = wait_mail(&smtp, 2, 15).await;
    assert_eq!(mail.len(), 2);
    assert!(
        mail[1].0.contains("Subject: Cancelled: Spa"),
        "{}",
        mail[1].0
    );
    let ds = settled(&api, "guest-5", 5, 10).await;
    assert_eq!(count(&ds, "sent"), 2, "{ds:?}");
    assert_eq!(count(&ds, "cancelled"), 3, "{ds:?}");
    assert!(ds
        .iter()
        .any(|d| d["reason"] == "cancelled by booking.cancelled (cancellation)"));
}

const CONFIRM_RULE: &str = r#"
[[apps.rules]]
name = 'confirmation'
channel = 'bookings'
event = 'booking.confirmed'
type = 'EMAIL_CONFIRMATION'
recipients = [{ users_field = 'attendee_id' }]

[[apps.rules.deliver]]
channel = 'email'
subject = 'Confirmed {{ booking_id }}'
body = 'See you.'
"#;

#[tokio::test]
async fn a_5xx_is_permanent_and_a_stalled_server_cannot_hold_a_worker() {
    let reject = Smtp::start("reject");
    let server = Setup::default()
        .toml(&app_toml(&reject, 10, CONFIRM_RULE))
        .start();
    let api = Api::new(&server);
    put(&api, "/users/u1", json!({"email": "u1@example.com"})).await;
    let b = json!({"booking_id": "B-9", "attendee_id": "u1"});
    api.trigger("bookings", "booking.confirmed", &b.to_string())
        .await;
    let ds = settled(&api, "u1", 1, 15).await;
    let (state, reason) = state_of(&ds, "email");
    assert_eq!(state, "failed", "{ds:?}");
    assert!(reason.contains("550"), "{reason}");
    assert_eq!(
        ds[0]["attempts"].as_array().unwrap().len(),
        1,
        "a 5xx is not retried"
    );

    // A server that never answers DATA: the send gives up after its timeout and retries
    // later; meanwhile the worker is free (another app event still goes through).
    let stall = Smtp::start("stall");
    let server = Setup::default()
        .toml(&app_toml(&stall, 2, CONFIRM_RULE))
        .start();
    let api = Api::new(&server);
    put(&api, "/users/u2", json!({"email": "u2@example.com"})).await;
    let b = json!({"booking_id": "B-10", "attendee_id": "u2"});
    api.trigger("bookings", "booking.confirmed", &b.to_string())
        .await;
    let end = tokio::time::Instant::now() + Duration::from_secs(15);
    let attempt = loop {
        let ds = deliveries(&api, "u2").await;
        if let Some(a) = ds[0]["attempts"]
            .as_array()
            .and_then(|a| a.first())
            .cloned()
        {
            break a;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "no attempt recorded: {ds:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(attempt["outcome"], "retry", "{attempt}");
    assert!(
        attempt["detail"]
            .as_str()
            .unwrap()
            .contains("did not finish within 2 s")
            || attempt["detail"].as_str().unwrap().contains("timed out"),
        "{attempt}"
    );
    assert!(attempt["duration_ms"].as_i64().unwrap() < 5000, "{attempt}");
}

#[tokio::test]
async fn preferences_and_quiet_hours_hold_back_all_but_critical() {
    let smtp = Smtp::start("ok");
    let rules = r#"
[[apps.rules]]
name = 'promo'
channel = 'marketing'
event = 'offer'
type = 'PROMO'
recipients = [{ users_field = 'user_id' }]

[[apps.rules.deliver]]
channel = 'email'
subject = 'Offer'
body = 'Cheap rooms'

[[apps.rules]]
name = 'alarm'
channel = 'alerts'
event = 'fire'
type = 'ALERT'
priority = 'critical'
recipients = [{ users_field = 'user_id' }]

[[apps.rules.deliver]]
channel = 'email'
subject = 'Fire alarm'
body = 'Leave the building'
"#;
    let server = Setup::default()
        .toml(&app_toml(&smtp, 10, rules))
        .admin()
        .start();
    let api = Api::new(&server);
    // Quiet around the clock in Nairobi (a window that covers now), and no promos by email.
    let now = chrono::Utc::now().with_timezone(&chrono_tz::Africa::Nairobi);
    let start = (now - chrono::Duration::minutes(5))
        .format("%H:%M")
        .to_string();
    let end = (now + chrono::Duration::minutes(30))
        .format("%H:%M")
        .to_string();
    let r = put(
        &api,
        "/users/night",
        json!({"email": "night@example.com", "time_zone": "Africa/Nairobi",
            "quiet_hours": {"start": start, "end": end}}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    put(
        &api,
        "/users/picky",
        json!({"email": "picky@example.com", "preferences": {"PROMO": {"email": false}}}),
    )
    .await;
    for u in ["night", "picky"] {
        let d = json!({"user_id": u}).to_string();
        api.trigger("marketing", "offer", &d).await;
        api.trigger("alerts", "fire", &d).await;
    }
    wait_mail(&smtp, 2, 15).await;
    // Every job due now has finished (the held promo waits for the end of the quiet hours):
    // nothing more is on its way.
    server.due_jobs_finished(15).await;
    assert_eq!(smtp.messages().len(), 2, "only the two fire alarms go out");
    for (eml, _) in smtp.messages() {
        assert!(eml.contains("Subject: Fire alarm"), "{eml}");
    }
    let picky = settled(&api, "picky", 2, 10).await;
    let promo = picky.iter().find(|d| d["state"] == "skipped").unwrap();
    assert_eq!(promo["reason"], "the recipient turned PROMO off on email");
    let night = deliveries(&api, "night").await;
    let held = night
        .iter()
        .find(|d| d["state"] == "held")
        .expect("the promo waits");
    assert!(
        held["reason"]
            .as_str()
            .unwrap()
            .starts_with("quiet hours until "),
        "{held}"
    );
}

#[tokio::test]
async fn a_crash_between_accepting_and_sending_loses_nothing_and_sends_once() {
    // The first process sends to a server that never answers DATA: at the kill, the job is
    // accepted and its send in flight, unacknowledged.
    let stall = Smtp::start("stall");
    let ok = Smtp::start("ok");
    let data = tempfile::tempdir().unwrap();
    let server = Setup::default()
        .toml(&app_toml(&stall, 30, CONFIRM_RULE))
        .data_dir(data.path())
        .env("BELLHOP_JOB_LEASE_SECS", "2")
        .admin()
        .start();
    let api = Api::new(&server);
    put(&api, "/users/u3", json!({"email": "u3@example.com"})).await;
    let b = json!({"booking_id": "B-11", "attendee_id": "u3"});
    let r = api
        .trigger("bookings", "booking.confirmed", &b.to_string())
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(deliveries(&api, "u3").await.len(), 1, "accepted at the 200");
    // Killed once a worker holds the job (its send to the stalled server under way).
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let jobs = server.jobs().await;
        if jobs["jobs"][0]["state"] == "running" {
            break;
        }
        assert!(tokio::time::Instant::now() < end, "never claimed: {jobs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(api);
    server.kill();
    // Restarted against a working server: the lease runs out and the job is sent, once.
    let server = Setup::default()
        .toml(&app_toml(&ok, 10, CONFIRM_RULE))
        .data_dir(data.path())
        .env("BELLHOP_JOB_LEASE_SECS", "2")
        .admin()
        .start();
    let api = Api::new(&server);
    let mail = wait_mail(&ok, 1, 20).await;
    assert_eq!(mail.len(), 1, "the accepted email was lost");
    // A duplicate after the restart is accepted as the same notification (committed at the
    // 200), and once the one job has finished nothing more is on its way.
    let r = api
        .trigger("bookings", "booking.confirmed", &b.to_string())
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(deliveries(&api, "u3").await.len(), 1);
    let jobs = server.due_jobs_finished(10).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["state"], "done", "{jobs:?}");
    assert_eq!(ok.messages().len(), 1);
    let ds = settled(&api, "u3", 1, 10).await;
    assert_eq!(state_of(&ds, "email").0, "sent");
}

/// Checks a request with the official Standard Webhooks library (PyPI `standardwebhooks`).
fn verified_by_standard_webhooks(req: &crate::receiver::Request, secret: &str) -> bool {
    let script = "import json,sys\nfrom standardwebhooks.webhooks import Webhook\n\
        d=json.load(sys.stdin)\nWebhook(d['secret']).verify(d['body'], d['headers'])\nprint('ok')";
    let input = json!({"secret": secret, "body": req.body, "headers": {
        "webhook-id": req.headers["webhook-id"],
        "webhook-timestamp": req.headers["webhook-timestamp"],
        "webhook-signature": req.headers["webhook-signature"],
    }});
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("python3 with standardwebhooks (pip install standardwebhooks)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "ok"
}

#[tokio::test]
async fn booking_events_reach_subscribed_webhooks_signed_and_retried() {
    use crate::mock_http::{Mock, Response};
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = calls.clone();
    let hook = Mock::start(move |_| {
        if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Response::json(503, json!({"error": "busy"}))
        } else {
            Response::json(200, json!({}))
        }
    })
    .await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let toml = format!(
        "[[apps]]\nid = '100'\nkey = 'test-key'\nsecret = 'test-secret'\n\n\
         [[apps.event_webhooks]]\nurl = '{}'\nevents = ['booking.*']\nsecret = '{secret}'\n\n\
         [[apps.event_webhooks]]\nurl = '{}'\nevents = ['order.*']\nsecret = '{secret}'\n",
        hook.url("/bookings"),
        hook.url("/orders")
    );
    let server = Setup::default().toml(&toml).admin().start();
    let api = Api::new(&server);
    let booking = json!({"booking_id": "B-3", "status": "confirmed"});
    for event in ["booking.created", "booking.cancelled", "staff.updated"] {
        let r = api.trigger("bookings", event, &booking.to_string()).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    // The same event again is a duplicate, not a second webhook.
    api.trigger("bookings", "booking.created", &booking.to_string())
        .await;
    hook.wait_for("/", 3, 20).await;
    // Every job has finished (two events, so two jobs): nothing more is on its way.
    let jobs = server.due_jobs_finished(10).await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(jobs.iter().all(|j| j["state"] == "done"), "{jobs:?}");
    let got = hook.requests();
    assert_eq!(
        got.len(),
        3,
        "two events, the first retried after a 503: {got:?}"
    );
    assert!(got.iter().all(|r| r.path == "/bookings"));
    let mut types = Vec::new();
    for r in &got[1..] {
        assert!(
            verified_by_standard_webhooks(r, secret),
            "bad signature: {r:?}"
        );
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["data"]["booking_id"], "B-3");
        assert_eq!(body["channel"], "bookings");
        types.push(body["type"].as_str().unwrap().to_owned());
    }
    types.sort();
    assert_eq!(types, ["booking.cancelled", "booking.created"]);
    // The retry carries the same webhook-id, so a receiver can de-duplicate.
    let first: Value = serde_json::from_str(&got[0].body).unwrap();
    let again = got[1..]
        .iter()
        .find(|r| serde_json::from_str::<Value>(&r.body).unwrap()["type"] == first["type"])
        .unwrap();
    assert_eq!(got[0].headers["webhook-id"], again.headers["webhook-id"]);
}

#[tokio::test]
async fn every_delivery_statement_works_on_postgres() {
    let url = crate::queue::postgres_schema_url().await;
    let rules = r#"
[[apps]]
id = '100'
key = 'test-key'
secret = 'test-secret'

[[apps.rules]]
name = 'reminder'
channel = 'bookings'
event = 'booking.confirmed | booking.rescheduled'
type = 'REMINDER'
recipients = [{ users_field = 'attendee_id' }]
idempotency_key = '{{ booking_id }}'
schedule = { at = 'start_at', minutes_before = [60] }

[[apps.rules.deliver]]
channel = 'in_app'
title = 'Soon: {{ booking_id }}'

[[apps.rules]]
name = 'cancel'
channel = 'bookings'
event = 'booking.cancelled'
type = 'CANCELLED'
recipients = [{ users_field = 'attendee_id' }]
idempotency_key = '{{ booking_id }}'
cancels = ['reminder']

[[apps.rules.deliver]]
channel = 'in_app'
title = 'Cancelled {{ booking_id }}'
"#;
    let server = Setup::default()
        .toml(rules)
        .env("BELLHOP_DATABASE_URL", &url)
        .start();
    let api = Api::new(&server);
    // The directory: profiles, a device that moves to another user, deletions.
    let r = put(
        &api,
        "/users/pg-1",
        json!({"email": "a@x.io", "time_zone": "Asia/Riyadh",
        "quiet_hours": {"start": "23:00", "end": "06:00"}, "preferences": {"X": {"email": false}}}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    put(&api, "/users/pg-2", json!({})).await;
    for user in ["pg-1", "pg-2"] {
        let r = api
            .post(
                &format!("users/{user}/devices"),
                &json!({"token": "t-1", "platform": "ios"}),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let one = api.get("/users/pg-1", &[]).await;
    assert_eq!(one.body["devices"], json!([]), "the token moved to pg-2");
    assert_eq!(one.body["quiet_hours"]["start"], "23:00");
    let two = api.get("/users/pg-2", &[]).await;
    assert_eq!(two.body["devices"][0]["token"], "t-1");
    let list = api.get("/users", &[]).await;
    assert_eq!(list.body["users"].as_array().unwrap().len(), 2);
    assert_eq!(
        api.send("DELETE", "/devices/t-1", None, &[]).await.status,
        200
    );
    assert_eq!(
        api.send("DELETE", "/users/pg-2", None, &[]).await.status,
        200
    );
    assert_eq!(api.get("/users/pg-2", &[]).await.status, 404);

    // Direct notifications with an Idempotency-Key, and the inbox.
    let body =
        json!({"users": ["pg-1"], "type": "T", "channels": [{"channel": "in_app", "title": "Hi"}]});
    let key = [("Idempotency-Key", "pg-key-1")];
    let first = api.send("POST", "/notifications", Some(&body), &key).await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    let again = api.send("POST", "/notifications", Some(&body), &key).await;
    assert_eq!(again.body, first.body);
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    let item = loop {
        let inbox = api.get("/users/pg-1/inbox", &[("unread", "true")]).await;
        if let Some(id) = inbox.body["items"][0]["id"].as_i64() {
            break id;
        }
        assert!(tokio::time::Instant::now() < end, "{:?}", inbox.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let read = api
        .post("users/pg-1/inbox/read", &json!({"id": item}))
        .await;
    assert_eq!(read.body, json!({"changed": 1, "unread_count": 0}));
    let del = api
        .send("DELETE", &format!("/users/pg-1/inbox/{item}"), None, &[])
        .await;
    assert_eq!(del.status, 200);

    // Reminders: scheduled, superseded by a reschedule, then cancelled.
    let start = |mins: i64| rfc3339(now_ms() + mins * 60_000);
    for (event, at) in [("booking.confirmed", 600), ("booking.rescheduled", 900)] {
        let b = json!({"booking_id": "PG-1", "attendee_id": "pg-1", "start_at": start(at)});
        let r = api.trigger("bookings", event, &b.to_string()).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let b = json!({"booking_id": "PG-1", "attendee_id": "pg-1"});
    api.trigger("bookings", "booking.cancelled", &b.to_string())
        .await;
    let ds = settled(&api, "pg-1", 4, 10).await;
    let reasons: Vec<&str> = ds
        .iter()
        .filter(|d| d["state"] == "cancelled")
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 2, "one superseded and one cancelled: {ds:?}");
    assert!(reasons.contains(&"superseded by a later event"));
    assert!(reasons.contains(&"cancelled by booking.cancelled (cancel)"));
    assert_eq!(count(&ds, "sent"), 2, "{ds:?}");
}
