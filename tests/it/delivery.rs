//! The delivery engine end to end: rules turn triggered events into in-app items, FCM pushes
//! and emails; a local FCM (token endpoint checking the JWT's signature, `messages:send`
//! checking each body) answers as the real one does, errors included; email goes to a real
//! SMTP server (aiosmtpd, STARTTLS + AUTH). Live presence decides whether a push is needed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::api::Api;
use crate::client::{data, Client};
use crate::harness::Setup;
use crate::mock_http::{Mock, Response};
use crate::surface::signin_frame;

pub const PROJECT: &str = "hotelmate-test";
const CLIENT_EMAIL: &str = "bellhop@hotelmate-test.iam.gserviceaccount.com";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// How the fake FCM answers `messages:send` for one device token, in order; the last answer
/// repeats.
type Script = HashMap<&'static str, Vec<Response>>;

pub fn fcm_error(status: u16, code: &str, error_code: &str, message: &str) -> Response {
    Response::json(
        status,
        json!({"error": {"code": status, "message": message, "status": code,
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}]}}),
    )
}

/// A fake FCM answering each device token from a script (the last answer repeats).
async fn fake_fcm(script: Script) -> Mock {
    fake_fcm_with(move |token, n| {
        let answers = script.get(token)?;
        Some(answers[n.min(answers.len() - 1)].clone())
    })
    .await
}

/// A fake FCM: `/token` checks the service account's RS256 JWT with the public key and hands
/// out `ya29.test-N`; `/v1/projects/{PROJECT}/messages:send` wants a token it handed out and
/// answers `answer(device token, sends to it so far)`; None: not a registered device.
pub async fn fake_fcm_with(
    answer: impl Fn(&str, usize) -> Option<Response> + Send + Sync + 'static,
) -> Mock {
    let public = std::fs::read(fixture("fcm-test-key.pub.pem")).unwrap();
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(&public).unwrap();
    let issued = Arc::new(Mutex::new(Vec::<String>::new()));
    let sends = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let token_url: Arc<Mutex<String>> = Arc::default();
    let url_for_check = token_url.clone();
    let mock = Mock::start(move |req| {
        if req.path == "/token" {
            let form: HashMap<String, String> = crate::mock_http::form(&req.body);
            if form.get("grant_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
            {
                return Response::json(400, json!({"error": "unsupported_grant_type"}));
            }
            let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
            v.set_audience(&[url_for_check.lock().unwrap().clone()]);
            v.set_issuer(&[CLIENT_EMAIL]);
            let Ok(claims) = jsonwebtoken::decode::<Value>(&form["assertion"], &key, &v) else {
                return Response::json(400, json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}));
            };
            assert_eq!(
                claims.claims["scope"],
                "https://www.googleapis.com/auth/firebase.messaging"
            );
            let header = jsonwebtoken::decode_header(&form["assertion"]).unwrap();
            assert_eq!(header.kid.as_deref(), Some("test-key-1"));
            let mut issued = issued.lock().unwrap();
            let t = format!("ya29.test-{}", issued.len() + 1);
            issued.push(t.clone());
            return Response::json(
                200,
                json!({"access_token": t, "expires_in": 3599, "token_type": "Bearer"}),
            );
        }
        if req.path == format!("/v1/projects/{PROJECT}/messages:send") {
            let bearer = req.headers.get("authorization").cloned().unwrap_or_default();
            let known = issued
                .lock()
                .unwrap()
                .iter()
                .any(|t| bearer == format!("Bearer {t}"));
            if !known {
                return fcm_error(401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", "Request had invalid authentication credentials.");
            }
            let body: Value = serde_json::from_str(&req.body).unwrap();
            let token = body["message"]["token"].as_str().unwrap_or("").to_owned();
            let mut sends = sends.lock().unwrap();
            let n = sends.entry(token.clone()).or_default();
            let Some(reply) = answer(&token, *n) else {
                return fcm_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token");
            };
            *n += 1;
            return reply;
        }
        Response::json(404, json!({"error": "not found"}))
    })
    .await;
    *token_url.lock().unwrap() = mock.url("/token");
    mock
}

pub fn ok(n: u32) -> Response {
    Response::json(
        200,
        json!({"name": format!("projects/{PROJECT}/messages/{n}")}),
    )
}

/// Writes a service-account key file whose token_uri is the fake's.
pub fn service_account(dir: &Path, fcm: &Mock) -> PathBuf {
    let key = std::fs::read_to_string(fixture("fcm-test-key.pem")).unwrap();
    let sa = json!({
        "type": "service_account", "project_id": PROJECT, "private_key_id": "test-key-1",
        "private_key": key, "client_email": CLIENT_EMAIL, "token_uri": fcm.url("/token"),
    });
    let path = dir.join("service-account.json");
    std::fs::write(&path, sa.to_string()).unwrap();
    path
}

/// The HotelMate porter rule: an in-app item always, and a push only to a porter who is not
/// connected (no socket signed in as them or on their channel).
fn hotel_toml(sa: &Path, fcm: &Mock) -> String {
    r#"
[[apps]]
id = '100'
key = 'test-key'
secret = 'test-secret'

[apps.fcm]
service_account_file = 'SA'
base_url = 'FCM'

[[apps.rules]]
name = 'porter-order'
channel = '{hotel}-staff-{staff_id}-porter'
event = 'new-room-service-order'
type = 'room_service_order'
recipients = [{ user = '{{ staff_id }}' }]

[[apps.rules.deliver]]
channel = 'in_app'
title = 'New room service order'
body = 'Room {{ room_number }}'

[[apps.rules.deliver]]
channel = 'fcm'
when = 'offline'
title = '🔔 New Room Service Order'
body = 'Room {{ room_number }} - €{{ total_price }}'
click_action = 'FLUTTER_NOTIFICATION_CLICK'
data = { type = 'room_service_order', order_id = '{{ order_id }}', route = '/orders/room-service' }
"#
    .replace("SA", sa.to_str().unwrap())
    .replace("FCM", &fcm.url(""))
}

pub async fn put(api: &Api<'_>, path: &str, body: Value) -> crate::api::Reply {
    api.send("PUT", path, Some(&body), &[]).await
}

pub async fn deliveries(api: &Api<'_>, user: &str) -> Vec<Value> {
    let r = api.get(&format!("/users/{user}/notifications"), &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["deliveries"].as_array().unwrap().clone())
        .collect()
}

/// Waits until every delivery of `user` has left pending/held/scheduled and logged its attempt.
pub async fn settled(api: &Api<'_>, user: &str, n: usize, secs: u64) -> Vec<Value> {
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let d = deliveries(api, user).await;
        let done = d.len() >= n && d.iter().all(settled_one);
        if done || tokio::time::Instant::now() > end {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Done waiting, and the attempt that decided it logged: the worker logs an attempt just after
/// the delivery's state is written, so a reader can see the state a moment before the attempt
/// (and after an earlier attempt that asked for a retry).
fn settled_one(d: &Value) -> bool {
    let state = d["state"].as_str();
    if matches!(state, Some("pending" | "held" | "scheduled")) {
        return false;
    }
    let ran = !d["job_id"].is_null() && state != Some("cancelled");
    let last = d["attempts"].as_array().and_then(|a| a.last());
    !ran || last.is_some_and(|a| a["outcome"] != "retry")
}

pub fn state_of(ds: &[Value], channel: &str) -> (String, String) {
    let d = ds
        .iter()
        .find(|d| d["channel"] == channel)
        .unwrap_or_else(|| panic!("no {channel} delivery in {ds:?}"));
    (
        d["state"].as_str().unwrap().to_owned(),
        d["reason"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test]
async fn a_room_service_order_pushes_only_to_a_porter_who_is_not_connected() {
    let dir = tempfile::tempdir().unwrap();
    let fcm = fake_fcm(HashMap::from([
        ("tok-42-phone", vec![ok(1)]),
        (
            "tok-42-old",
            vec![fcm_error(
                404,
                "NOT_FOUND",
                "UNREGISTERED",
                "Requested entity was not found.",
            )],
        ),
        ("tok-43", vec![ok(2)]),
        (
            "tok-44",
            vec![
                fcm_error(
                    429,
                    "RESOURCE_EXHAUSTED",
                    "QUOTA_EXCEEDED",
                    "Quota exceeded.",
                )
                .header("retry-after", "1"),
                ok(3),
            ],
        ),
        (
            "tok-45",
            vec![
                fcm_error(
                    503,
                    "UNAVAILABLE",
                    "UNAVAILABLE",
                    "The service is currently unavailable.",
                ),
                ok(4),
            ],
        ),
        (
            "tok-46",
            vec![fcm_error(
                400,
                "INVALID_ARGUMENT",
                "INVALID_ARGUMENT",
                "Invalid value at 'message.android.notification.click_action'",
            )],
        ),
    ]))
    .await;
    let sa = service_account(dir.path(), &fcm);
    let server = Setup::default()
        .toml(&hotel_toml(&sa, &fcm))
        .admin()
        .start();
    let api = Api::new(&server);
    for (user, tokens) in [
        ("42", vec!["tok-42-phone", "tok-42-old"]),
        ("43", vec!["tok-43"]),
        ("44", vec!["tok-44"]),
        ("45", vec!["tok-45"]),
        ("46", vec!["tok-46"]),
    ] {
        let r = put(
            &api,
            &format!("/users/{user}"),
            json!({"display_name": format!("Porter {user}"), "locale": "en"}),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        for t in tokens {
            let r = api
                .post(
                    &format!("users/{user}/devices"),
                    &json!({"token": t, "platform": "android"}),
                )
                .await;
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
    }
    // Porter 43 has the app open: signed in and on their channel.
    let mut porter43 = Client::connect(&server).await;
    let f = signin_frame(&porter43, r#"{"id":"43"}"#);
    porter43.send(f).await;
    porter43.expect("pusher:signin_success").await;
    porter43.subscribe("#server-to-user-43").await;
    porter43.subscribe("grand-hotel-staff-43-porter").await;

    let order =
        json!({"order_id": "123", "room_number": "101", "total_price": 45.99, "status": "pending"});
    for staff in ["42", "43", "44", "45", "46"] {
        let r = api
            .trigger(
                &format!("grand-hotel-staff-{staff}-porter"),
                "new-room-service-order",
                &order.to_string(),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    // The connected porter gets the realtime event and the in-app item, live.
    porter43.wait_for("new-room-service-order").await;
    let item = porter43.wait_for("bellhop:notification").await;
    let d = data(&item);
    assert_eq!(d["item"]["title"], "New room service order");
    assert_eq!(d["item"]["body"], "Room 101");
    assert_eq!(d["unread_count"], 1);

    let d42 = settled(&api, "42", 2, 15).await;
    assert_eq!(state_of(&d42, "in_app").0, "sent");
    assert_eq!(state_of(&d42, "fcm").0, "sent", "{d42:?}");
    let d43 = settled(&api, "43", 2, 15).await;
    assert_eq!(
        state_of(&d43, "fcm"),
        ("skipped".into(), "the recipient is connected".into())
    );
    let d44 = settled(&api, "44", 2, 15).await;
    assert_eq!(state_of(&d44, "fcm").0, "sent", "{d44:?}");
    let attempts = d44.iter().find(|d| d["channel"] == "fcm").unwrap()["attempts"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(attempts, 2, "429 then success: {d44:?}");
    let d45 = settled(&api, "45", 2, 15).await;
    assert_eq!(state_of(&d45, "fcm").0, "sent", "503 then success: {d45:?}");
    let d46 = settled(&api, "46", 2, 15).await;
    let (state, reason) = state_of(&d46, "fcm");
    assert_eq!(state, "failed", "{d46:?}");
    assert!(reason.contains("INVALID_ARGUMENT"), "{reason}");
    let dev46 = api.get("/users/46", &[]).await;
    assert_eq!(
        dev46.body["devices"][0]["active"], true,
        "a bad payload is not the token's fault"
    );

    // Exactly what FCM received: one push per live device of the disconnected porters.
    let sends = fcm.wait_for("/v1/", 7, 5).await;
    let mut by_token: HashMap<String, Vec<Value>> = HashMap::new();
    for s in &sends {
        let b: Value = serde_json::from_str(&s.body).unwrap();
        by_token
            .entry(b["message"]["token"].as_str().unwrap().to_owned())
            .or_default()
            .push(b);
    }
    assert!(
        !by_token.contains_key("tok-43"),
        "a connected porter got a push"
    );
    assert_eq!(by_token["tok-42-phone"].len(), 1);
    assert_eq!(by_token["tok-42-old"].len(), 1);
    assert_eq!(by_token["tok-44"].len(), 2);
    assert_eq!(by_token["tok-45"].len(), 2);
    assert_eq!(
        by_token["tok-46"].len(),
        1,
        "a rejected payload is not sent again"
    );
    let m = &by_token["tok-42-phone"][0]["message"];
    assert_eq!(
        m["notification"],
        json!({"title": "🔔 New Room Service Order", "body": "Room 101 - €45.99"})
    );
    assert_eq!(
        m["data"],
        json!({"type": "room_service_order", "order_id": "123", "route": "/orders/room-service"})
    );
    assert_eq!(
        m["android"]["notification"]["click_action"],
        "FLUTTER_NOTIFICATION_CLICK"
    );
    // The unregistered token was deactivated on that same failed send.
    let user = api.get("/users/42", &[]).await;
    let devices = user.body["devices"].as_array().unwrap();
    let old = devices.iter().find(|d| d["token"] == "tok-42-old").unwrap();
    assert_eq!(old["active"], false);
    assert!(old["deactivated_reason"]
        .as_str()
        .unwrap()
        .contains("UNREGISTERED"));

    // The same event again notifies nobody twice.
    let r = api
        .trigger(
            "grand-hotel-staff-42-porter",
            "new-room-service-order",
            &order.to_string(),
        )
        .await;
    assert_eq!(r.status, 200);
    // A 200 means the event's notifications are committed: a second one would be here now.
    assert_eq!(deliveries(&api, "42").await.len(), 2);
    // And once every due job has finished, FCM has heard everything it will.
    server.due_jobs_finished(15).await;
    assert_eq!(
        fcm.requests()
            .iter()
            .filter(|r| r.path.starts_with("/v1/"))
            .count(),
        sends.len()
    );
    // One token was fetched and reused for every send.
    assert_eq!(
        fcm.requests().iter().filter(|r| r.path == "/token").count(),
        1
    );
}

#[tokio::test]
async fn direct_notifications_are_idempotent_and_fill_the_inbox() {
    let server = Setup::new().admin().start();
    let api = Api::new(&server);
    let mut bell = Client::connect(&server).await;
    let f = signin_frame(&bell, r#"{"id":"staff-7"}"#);
    bell.send(f).await;
    bell.expect("pusher:signin_success").await;
    bell.subscribe("#server-to-user-staff-7").await;

    let body = json!({
        "users": ["staff-7"], "type": "ORDER_READY",
        "data": {"table": "12", "order": "A-17"},
        "channels": [{"channel": "in_app", "title": "Order {{ order }} ready", "body": "Table {{ table }}"}]
    });
    // Five concurrent calls with one Idempotency-Key: one notification.
    let key = [("Idempotency-Key", "order-A-17-ready")];
    let calls = (0..5).map(|_| api.send("POST", "/notifications", Some(&body), &key));
    let replies = futures_util::future::join_all(calls).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert!(
        statuses.iter().all(|s| *s == 202 || *s == 409),
        "{statuses:?}"
    );
    assert!(statuses.contains(&202), "{statuses:?}");
    // A retry after the first answer gets that answer back.
    let again = api.send("POST", "/notifications", Some(&body), &key).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.body["deliveries"].as_array().unwrap().len(), 1);
    // Every call has answered, and a 202 means committed: one delivery is all there is.
    assert_eq!(deliveries(&api, "staff-7").await.len(), 1);
    let pushed = bell.wait_for("bellhop:notification").await;
    assert_eq!(data(&pushed)["item"]["title"], "Order A-17 ready");
    assert_eq!(data(&pushed)["unread_count"], 1);
    // A job hands its push to the channel before it records its end: once every due job has
    // finished, the next notification's push is the next thing bell gets, so it got one.
    server.due_jobs_finished(10).await;

    let another = json!({
        "users": ["staff-7"], "type": "ALERT", "data": {},
        "channels": [{"channel": "in_app", "title": "Fridge alarm", "body": "Kitchen"}]
    });
    assert_eq!(api.post("notifications", &another).await.status, 202);
    let next = bell.expect_only_until("bellhop:notification").await;
    assert_eq!(data(&next)["item"]["title"], "Fridge alarm");

    let inbox = api.get("/users/staff-7/inbox", &[]).await;
    assert_eq!(inbox.body["unread_count"], 2);
    let items = inbox.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["title"], "Fridge alarm", "newest first");
    let first = items[1]["id"].as_i64().unwrap();
    let read = api
        .post("users/staff-7/inbox/read", &json!({"id": first}))
        .await;
    assert_eq!(read.body, json!({"changed": 1, "unread_count": 1}));
    assert_eq!(
        data(&bell.wait_for("bellhop:inbox").await)["unread_count"],
        1
    );
    let unread = api.get("/users/staff-7/inbox", &[("unread", "true")]).await;
    assert_eq!(unread.body["items"].as_array().unwrap().len(), 1);
    let all = api.post("users/staff-7/inbox/read", &json!({})).await;
    assert_eq!(all.body, json!({"changed": 1, "unread_count": 0}));

    // Bad input is refused with a clear message.
    let bad = api
        .post(
            "notifications",
            &json!({"users": [], "type": "x", "channels": []}),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.body["error"].as_str().unwrap().contains("users"));
    let typo = api
        .post(
            "notifications",
            &json!({"users": ["1"], "type": "x", "channels": [{"channel": "pigeon"}]}),
        )
        .await;
    assert_eq!(typo.status, 400, "{:?}", typo.body);
    let tz = put(&api, "/users/9", json!({"time_zone": "Mars/Olympus"})).await;
    assert_eq!(tz.status, 400);
    assert!(tz.body["error"].as_str().unwrap().contains("Mars/Olympus"));
}

/// A real SMTP server (aiosmtpd) with STARTTLS and AUTH, killed on drop.
pub struct Smtp {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    implicit: bool,
}

impl Smtp {
    pub fn start(mode: &str) -> Smtp {
        Self::start_with(mode, false)
    }

    /// `implicit`: TLS from the first byte (SMTPS) instead of STARTTLS.
    pub fn start_with(mode: &str, implicit: bool) -> Smtp {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp/server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(dir.path().join("cert.pem"))
            .arg(dir.path().join("key.pem"))
            .arg(dir.path().join("out"))
            .arg(mode)
            .args(implicit.then_some("implicit"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with aiosmtpd (pip install aiosmtpd)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the SMTP server did not start");
        Smtp {
            child,
            port,
            dir,
            implicit,
        }
    }

    pub fn toml(&self, timeout_secs: u64) -> String {
        format!(
            "[apps.email]\nhost = '127.0.0.1'\nport = {}\nsecurity = '{}'\nusername = 'bellhop'\npassword = 'secret'\nfrom = 'Grand Hotel <noreply@grand.example>'\ntimeout_secs = {timeout_secs}\nca_file = '{}'\n",
            self.port,
            if self.implicit { "tls" } else { "starttls" },
            self.dir.path().join("cert.pem").display()
        )
    }

    pub fn messages(&self) -> Vec<(String, Value)> {
        let out = self.dir.path().join("out");
        let mut n = 1;
        let mut all = Vec::new();
        while let Ok(eml) = std::fs::read_to_string(out.join(format!("{n}.eml"))) {
            let meta = std::fs::read_to_string(out.join(format!("{n}.json"))).unwrap();
            all.push((eml, serde_json::from_str(&meta).unwrap()));
            n += 1;
        }
        all
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn booking_toml(smtp: &Smtp, timeout_secs: u64) -> String {
    format!(
        r#"
[[apps]]
id = '100'
key = 'test-key'
secret = 'test-secret'
{}
[[apps.rules]]
name = 'booking-confirmation'
channel = 'bookings'
event = 'booking.confirmed'
type = 'EMAIL_CONFIRMATION'
recipients = [{{ email_field = 'attendee_email' }}]
idempotency_key = '{{{{ booking_id }}}}'

[[apps.rules.deliver]]
channel = 'email'
subject = 'Your booking {{{{ booking_id }}}} is confirmed'
body = 'Dear {{{{ customerName }}}}, see you on {{{{ eventDate }}}}.'
html = '<p>Dear {{{{ customerName }}}}, see you on {{{{ eventDate }}}}.</p>'
attach_qr = 'BOOKING {{{{ booking_id }}}}'
attach_ics = {{ summary = 'Gala dinner', start = 'start_at', end = 'end_at', location = 'Grand Hall', uid = 'booking-{{{{ booking_id }}}}@grand' }}
"#,
        smtp.toml(timeout_secs)
    )
}

#[tokio::test]
async fn email_also_goes_over_implicit_tls() {
    let smtp = Smtp::start_with("ok", true);
    let server = Setup::default().toml(&booking_toml(&smtp, 10)).start();
    let api = Api::new(&server);
    let booking = json!({"booking_id": "B-8", "attendee_email": "bo@example.com",
        "customerName": "Bo", "eventDate": "2026-12-25",
        "start_at": "2026-12-25T10:00:00Z", "end_at": "2026-12-25T11:00:00Z"});
    let r = api
        .trigger("bookings", "booking.confirmed", &booking.to_string())
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let end = tokio::time::Instant::now() + Duration::from_secs(15);
    while smtp.messages().is_empty() && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].1["auth"], true);
    assert_eq!(msgs[0].1["tls"], true);
    assert!(msgs[0].0.contains("Subject: Your booking B-8 is confirmed"));
}

#[tokio::test]
async fn booking_emails_go_over_starttls_with_auth_and_4xx_is_retried() {
    let smtp = Smtp::start("fail-first");
    let server = Setup::default()
        .toml(&booking_toml(&smtp, 10))
        .admin()
        .start();
    let api = Api::new(&server);
    let booking = json!({"booking_id": "B-77", "attendee_email": "ana@example.com",
        "customerName": "Ana <Silva>", "eventDate": "2026-12-24",
        "start_at": "2026-12-24T19:00:00Z", "end_at": "2026-12-24T23:00:00Z"});
    let r = api
        .trigger("bookings", "booking.confirmed", &booking.to_string())
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The same booking confirmed twice sends one email.
    let r = api
        .trigger("bookings", "booking.confirmed", &booking.to_string())
        .await;
    assert_eq!(r.status, 200);
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    while smtp.messages().is_empty() && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The second confirmation made no job of its own, and the one job has finished: nothing
    // more will be sent.
    let jobs = server.due_jobs_finished(20).await;
    assert_eq!(jobs.len(), 1, "one job for the booking: {jobs:?}");
    assert_eq!(jobs[0]["state"], "done", "{jobs:?}");
    assert_eq!(jobs[0]["attempts"], 2, "a 451, then a retry: {jobs:?}");
    let msgs = smtp.messages();
    assert_eq!(msgs.len(), 1, "one email after a 451 and a retry");
    let (eml, meta) = &msgs[0];
    assert_eq!(meta["rcpt_tos"], json!(["ana@example.com"]));
    assert_eq!(meta["tls"], true);
    assert_eq!(meta["auth"], true);
    assert!(
        eml.contains("Subject: Your booking B-77 is confirmed"),
        "{eml}"
    );
    assert!(
        eml.contains("From: \"Grand Hotel\" <noreply@grand.example>")
            || eml.contains("From: Grand Hotel <noreply@grand.example>"),
        "{eml}"
    );
    assert!(
        eml.contains("Dear Ana <Silva>, see you on 2026-12-24."),
        "{eml}"
    );
    assert!(eml.contains("&lt;Silva&gt;"), "HTML is escaped: {eml}");
    assert!(eml.contains("Message-ID: <delivery-"), "{eml}");
    // The attachments, as a mail client decodes them.
    let parts = mime_parts(eml);
    let ics = parts
        .iter()
        .find(|p| p["type"] == "text/calendar")
        .unwrap_or_else(|| panic!("no invite in {parts:?}"));
    assert_eq!(ics["filename"], "invite.ics");
    let ics = ics["text"].as_str().unwrap();
    assert!(ics.contains("DTSTART:20261224T190000Z\r\n"), "{ics}");
    assert!(ics.contains("DTEND:20261224T230000Z\r\n"), "{ics}");
    assert!(ics.contains("UID:booking-B-77@grand\r\n"), "{ics}");
    let qr = parts.iter().find(|p| p["type"] == "image/png").unwrap();
    assert_eq!(qr["filename"], "qr.png");
    assert!(qr["bytes"].as_u64().unwrap() > 100);
    assert_eq!(qr["magic"], "89504e470d0a1a0a");
}

/// The MIME parts of a message, decoded by Python's email package: type, filename, text (for
/// text parts), size and first bytes.
fn mime_parts(eml: &str) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp/mime_parts.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(eml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

fn inbox_token(secret: &str, user: &str, exp_in: i64) -> String {
    let exp = chrono::Utc::now().timestamp() + exp_in;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user, "aud": "bellhop:inbox", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_browser_reads_its_own_inbox_with_a_token_the_backend_signed() {
    let server = Setup::new()
        .env("BELLHOP_APP_ALLOWED_ORIGINS", "https://desk.grand.example")
        .start();
    let api = Api::new(&server);
    for (user, title) in [("staff-7", "Order ready"), ("staff-8", "Not yours")] {
        let body = json!({"users": [user], "type": "ORDER_READY",
            "channels": [{"channel": "in_app", "title": title, "body": "b"}]});
        assert_eq!(api.post("notifications", &body).await.status, 202);
    }
    let http = reqwest::Client::new();
    let url = |p: &str| server.http(&format!("/client/{}{p}", crate::harness::KEY));
    let get = |token: String| {
        http.get(url("/inbox"))
            .bearer_auth(token)
            .header("origin", "https://desk.grand.example")
            .send()
    };
    let token = inbox_token(crate::harness::SECRET, "staff-7", 600);
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let r = get(token.clone()).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["access-control-allow-origin"],
            "https://desk.grand.example"
        );
        let body: Value = r.json().await.unwrap();
        let arrived = body["items"].as_array().is_some_and(|i| !i.is_empty());
        if arrived || tokio::time::Instant::now() > end {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "only staff-7's own items: {body}");
    assert_eq!(items[0]["title"], "Order ready");
    let id = items[0]["id"].as_i64().unwrap();
    // Another user's item cannot be deleted with this token.
    let theirs = loop {
        let items = api.get("/users/staff-8/inbox", &[]).await.body["items"].clone();
        if let Some(id) = items[0]["id"].as_i64() {
            break id;
        }
        assert!(tokio::time::Instant::now() < end, "staff-8 got no item");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let r = http
        .delete(url(&format!("/inbox/{theirs}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .post(url("/inbox/read"))
        .bearer_auth(&token)
        .json(&json!({"id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["unread_count"], 0);
    // Forged, expired, too long-lived, or missing: refused.
    for bad in [
        inbox_token("not-the-secret", "staff-7", 600),
        inbox_token(crate::harness::SECRET, "staff-7", -300),
        inbox_token(crate::harness::SECRET, "staff-7", 30 * 24 * 3600),
    ] {
        let r = get(bad).await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = http.get(url("/inbox")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // The preflight answers allowed origins only.
    let pre = http
        .request(reqwest::Method::OPTIONS, url("/inbox"))
        .header("origin", "https://desk.grand.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    assert!(pre.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("Authorization"));
    let other = http
        .request(reqwest::Method::OPTIONS, url("/inbox"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn presence_members_are_told_and_email_stands_in_when_push_is_impossible() {
    let smtp = Smtp::start("ok");
    let dir = tempfile::tempdir().unwrap();
    let fcm = fake_fcm(HashMap::from([("tok-m2", vec![ok(9)])])).await;
    let sa = service_account(dir.path(), &fcm);
    let toml = format!(
        r#"
[[apps]]
id = '100'
key = 'test-key'
secret = 'test-secret'

[apps.fcm]
service_account_file = '{}'
base_url = '{}'
{}
[[apps.rules]]
name = 'attendance'
channel = 'attendance-{{hotel}}-managers'
event = 'unrostered-clockin-request'
type = 'UNROSTERED'
recipients = [{{ presence = 'presence-{{{{ hotel }}}}-managers' }}]

[[apps.rules.deliver]]
channel = 'fcm'
title = '{{{{ staff_name }}}} wants to clock in'

[[apps.rules.deliver]]
channel = 'email'
when = 'no_device'
subject = '{{{{ staff_name }}}} wants to clock in'
body = 'Approve or reject in the app.'
"#,
        sa.display(),
        fcm.url(""),
        smtp.toml(10)
    );
    let server = Setup::default().toml(&toml).start();
    let api = Api::new(&server);
    // Two managers are in the managers' presence channel; m2 has a phone, m1 only an email.
    put(&api, "/users/m1", json!({"email": "m1@grand.example"})).await;
    put(&api, "/users/m2", json!({"email": "m2@grand.example"})).await;
    api.post(
        "users/m2/devices",
        &json!({"token": "tok-m2", "platform": "ios"}),
    )
    .await;
    let mut managers = Vec::new();
    for m in ["m1", "m2"] {
        let mut c = Client::connect(&server).await;
        c.subscribe_presence("presence-grand-managers", m, json!({}))
            .await;
        managers.push(c);
    }
    let req = json!({"staff_id": "456", "staff_name": "John Doe"});
    let r = api
        .trigger(
            "attendance-grand-managers",
            "unrostered-clockin-request",
            &req.to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let m1 = settled(&api, "m1", 2, 15).await;
    assert_eq!(state_of(&m1, "fcm"), ("skipped".into(), "no device".into()));
    assert_eq!(state_of(&m1, "email").0, "sent");
    let m2 = settled(&api, "m2", 2, 15).await;
    assert_eq!(state_of(&m2, "fcm").0, "sent");
    assert_eq!(
        state_of(&m2, "email"),
        (
            "skipped".into(),
            "the recipient has a device for push".into()
        )
    );
    let mail = smtp.messages();
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0].1["rcpt_tos"], json!(["m1@grand.example"]));
    assert!(mail[0].0.contains("Subject: John Doe wants to clock in"));
    let pushes = fcm.wait_for("/v1/", 1, 5).await;
    assert_eq!(pushes.len(), 1);
}
