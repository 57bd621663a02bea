//! The rest of the Pusher surface: sign-in and server-to-user, terminating a user's
//! connections, cache channels, subscription counts, the sign-in timeout, and graceful
//! shutdown.

use std::time::Duration;

use bellhop_protocol::{signing, AppKey, Secret, SocketId};
use serde_json::json;

use crate::api::Api;
use crate::client::{data, Client};
use crate::harness::{Setup, KEY, SECRET};

pub fn signin_frame(c: &Client, user_data: &str) -> serde_json::Value {
    let auth = signing::sign_user(
        &AppKey::parse(KEY).unwrap(),
        &Secret::parse(SECRET).unwrap(),
        SocketId::parse(&c.socket_id).unwrap(),
        user_data,
    );
    json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}})
}

#[tokio::test]
async fn signin_send_to_user_and_terminate() {
    let server = Setup::new().start();
    let api = Api::new(&server);
    let mut phone = Client::connect(&server).await;
    let mut tablet = Client::connect(&server).await;
    let mut other = Client::connect(&server).await;
    for (c, id) in [
        (&mut phone, "staff-42"),
        (&mut tablet, "staff-42"),
        (&mut other, "staff-7"),
    ] {
        let user_data = json!({"id": id, "user_info": {"role": "porter"}}).to_string();
        let f = signin_frame(c, &user_data);
        c.send(f).await;
        let ok = c.expect("pusher:signin_success").await;
        assert_eq!(ok["data"]["user_data"], user_data);
        let ch = format!("#server-to-user-{id}");
        c.subscribe(&ch).await;
    }
    // sendToUser is a trigger to #server-to-user-{id}.
    let r = api
        .trigger("#server-to-user-staff-42", "shift-change", "{}")
        .await;
    assert_eq!(r.status, 200);
    phone.expect("shift-change").await;
    tablet.expect("shift-change").await;
    // The channel fanned shift-change out to its subscribers' outboxes in one go, before
    // phone and tablet had it; an event on staff-7's own channel, triggered only now, is
    // the first thing other gets.
    assert_eq!(
        api.trigger("#server-to-user-staff-7", "sentinel", "{}")
            .await
            .status,
        200
    );
    assert_eq!(
        other.expect_only_until("sentinel").await["channel"],
        "#server-to-user-staff-7"
    );

    // A bad sign-in closes with 4009.
    let mut bad = Client::connect(&server).await;
    bad.send(json!({"event": "pusher:signin", "data": {"auth": "test-key:00", "user_data": "{\"id\":\"1\"}"}}))
        .await;
    bad.expect_refusal(4009).await;

    let r = api
        .post("users/staff-42/terminate_connections", &json!({}))
        .await;
    assert_eq!((r.status, r.body), (200, json!({})));
    phone.expect_refusal(4009).await;
    tablet.expect_refusal(4009).await;
    other
        .send(json!({"event": "pusher:ping", "data": {}}))
        .await;
    other.expect("pusher:pong").await;
}

#[tokio::test]
async fn cache_channels_replay_the_last_event_or_say_miss() {
    let server = Setup::new().start();
    let api = Api::new(&server);
    let mut first = Client::connect(&server).await;
    first.subscribe("cache-menu").await;
    let miss = first.expect("pusher:cache_miss").await;
    assert_eq!(miss["channel"], "cache-menu");
    api.trigger("cache-menu", "menu-updated", "v1").await;
    api.trigger("cache-menu", "menu-updated", "v2").await;
    first.expect("menu-updated").await;
    first.expect("menu-updated").await;
    // Everyone leaves; the cache outlives the channel.
    first.close().await;
    api.wait_subscription_count("cache-menu", 0).await;
    let mut late = Client::connect(&server).await;
    late.subscribe("cache-menu").await;
    let ev = late.expect("menu-updated").await;
    assert_eq!(ev["data"], "v2");
    // Private cache channels work the same.
    late.subscribe("private-cache-orders").await;
    late.expect("pusher:cache_miss").await;
}

#[tokio::test]
async fn subscription_count_is_sent_debounced_when_enabled() {
    let server = Setup::new()
        .env("BELLHOP_APP_SUBSCRIPTION_COUNT", "true")
        .start();
    let mut a = Client::connect(&server).await;
    a.subscribe("counted").await;
    let mut b = Client::connect(&server).await;
    b.subscribe("counted").await;
    let mut c = Client::connect(&server).await;
    c.subscribe("counted").await;
    // One event for the burst of joins, with the settled count.
    let ev = a.wait_for("pusher_internal:subscription_count").await;
    assert_eq!(data(&ev), json!({"subscription_count": 3}));
    // Only one for the burst: the channel's next event to a is the count after c leaves.
    c.close().await;
    let ev = a
        .expect_only_until("pusher_internal:subscription_count")
        .await;
    assert_eq!(data(&ev), json!({"subscription_count": 2}));

    // Off by default: once the debounce a count would wait for (1 s) is over, with room to
    // spare, an event on the channel is the first thing either subscriber gets.
    let quiet = Setup::new().start();
    let mut q = Client::connect(&quiet).await;
    q.subscribe("counted").await;
    let mut r = Client::connect(&quiet).await;
    r.subscribe("counted").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let api = Api::new(&quiet);
    assert_eq!(api.trigger("counted", "sentinel", "{}").await.status, 200);
    q.expect_only_until("sentinel").await;
    r.expect_only_until("sentinel").await;
}

#[tokio::test]
async fn apps_requiring_signin_close_silent_sockets() {
    let server = Setup::new().env("BELLHOP_APP_SIGNIN_TIMEOUT", "1").start();
    let mut anon = Client::connect(&server).await;
    let mut user = Client::connect(&server).await;
    let f = signin_frame(&user, r#"{"id":"9"}"#);
    user.send(f).await;
    user.expect("pusher:signin_success").await;
    anon.expect_refusal(4009).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    user.send(json!({"event": "pusher:ping", "data": {}})).await;
    user.expect("pusher:pong").await;
}

#[tokio::test]
async fn sigterm_fails_readiness_and_moves_clients_with_4200() {
    let mut server = Setup::new()
        .env("BELLHOP_SHUTDOWN_GRACE_SECS", "5")
        .env("BELLHOP_SHUTDOWN_DRAIN_MS", "700")
        .start();
    let other = Setup::new().start();
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(server.http("/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut c = Client::connect(&server).await;
        c.subscribe("lobby").await;
        clients.push(c);
    }
    server.terminate();
    // Readiness fails first, while the clients are still connected.
    let unready = server.ready_becomes(503, Duration::from_millis(600)).await;
    assert!(unready, "readiness did not fail after SIGTERM");
    // New sockets are turned away with 4200 meanwhile.
    let mut late = Client::connect_raw_client(&server.ws_url(KEY)).await;
    late.expect_refusal(4200).await;
    // Then every client is told to reconnect, and does so on another node.
    let api = Api::new(&other);
    for c in &mut clients {
        c.expect_refusal(4200).await;
    }
    let mut moved = Client::connect(&other).await;
    moved.subscribe("lobby").await;
    api.trigger("lobby", "still-here", "{}").await;
    moved.expect("still-here").await;
    assert_eq!(
        server.wait_exit(10),
        Some(true),
        "bellhop exits cleanly after SIGTERM"
    );
}

/// Parses the Prometheus text format into (series with labels, value).
fn scrape_metrics(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn metrics_are_scraped_on_their_own_port() {
    let server = Setup::new().start();
    let api = Api::new(&server);
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.subscribe("hotel-1").await;
    b.subscribe_presence("presence-desk", "5", json!({})).await;
    b.subscribe("hotel-1").await;
    assert_eq!(api.trigger("hotel-1", "e", "x").await.status, 200);
    a.expect("e").await;
    b.expect("e").await;
    let bad = Api::for_app(&server, "100", KEY, "wrong");
    assert_eq!(bad.trigger("hotel-1", "e", "x").await.status, 401);

    let url = format!("http://{}/metrics", server.metrics_addr.unwrap());
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let m = scrape_metrics(&text);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in\n{text}"));
    assert_eq!(get(r#"bellhop_connected{app_id="100"}"#), 2.0);
    assert_eq!(get(r#"bellhop_new_connections_total{app_id="100"}"#), 2.0);
    assert_eq!(get(r#"bellhop_channels{app_id="100"}"#), 2.0);
    assert_eq!(get(r#"bellhop_presence_members{app_id="100"}"#), 1.0);
    assert!(get(r#"bellhop_ws_messages_received_total{app_id="100"}"#) >= 3.0);
    assert!(get(r#"bellhop_ws_messages_sent_total{app_id="100"}"#) >= 7.0);
    assert!(get(r#"bellhop_socket_transmitted_bytes{app_id="100"}"#) > 100.0);
    assert_eq!(
        get(
            r#"bellhop_http_calls_received_total{app_id="100",endpoint="/apps/{app_id}/events",status="200"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            r#"bellhop_http_calls_received_total{app_id="100",endpoint="/apps/{app_id}/events",status="401"}"#
        ),
        1.0
    );
    assert!(m.contains_key(r#"bellhop_jobs{state="pending"}"#));
    // The API port does not serve metrics.
    let r = reqwest::get(server.http("/metrics")).await.unwrap();
    assert_eq!(r.status(), 404);

    a.close().await;
    b.close().await;
    // Closes are handled asynchronously: wait (5 s at most) until the gauges show them.
    let want = [
        (r#"bellhop_connected{app_id="100"}"#, 0.0),
        (r#"bellhop_new_disconnections_total{app_id="100"}"#, 2.0),
        (r#"bellhop_channels{app_id="100"}"#, 0.0),
        (r#"bellhop_presence_members{app_id="100"}"#, 0.0),
    ];
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = scrape_metrics(&reqwest::get(&url).await.unwrap().text().await.unwrap());
        let now: Vec<(&str, Option<f64>)> =
            want.iter().map(|(k, _)| (*k, m.get(*k).copied())).collect();
        if want.iter().zip(&now).all(|((_, w), (_, n))| *n == Some(*w)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "metrics after both closed: want {want:?}, have {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn watchlist_reports_online_and_offline() {
    let server = Setup::new().start();
    let mut manager = Client::connect(&server).await;
    let mut porter = Client::connect(&server).await;
    // The porter is online before the manager signs in with a watchlist.
    let f = signin_frame(&porter, r#"{"id":"porter-1"}"#);
    porter.send(f).await;
    porter.expect("pusher:signin_success").await;
    let f = signin_frame(
        &manager,
        r#"{"id":"mgr","watchlist":["porter-1","chef-2"]}"#,
    );
    manager.send(f).await;
    manager.expect("pusher:signin_success").await;
    let ev = manager.expect("pusher_internal:watchlist_events").await;
    assert_eq!(
        data(&ev),
        json!({"events": [{"name": "online", "user_ids": ["porter-1"]}]})
    );

    let mut chef = Client::connect(&server).await;
    let f = signin_frame(&chef, r#"{"id":"chef-2"}"#);
    chef.send(f).await;
    chef.expect("pusher:signin_success").await;
    let ev = manager.expect("pusher_internal:watchlist_events").await;
    assert_eq!(
        data(&ev),
        json!({"events": [{"name": "online", "user_ids": ["chef-2"]}]})
    );

    chef.close().await;
    let ev = manager.expect("pusher_internal:watchlist_events").await;
    assert_eq!(
        data(&ev),
        json!({"events": [{"name": "offline", "user_ids": ["chef-2"]}]})
    );

    // Over 100 ids: the first 100 are kept and 4302 says so.
    let mut big = Client::connect(&server).await;
    let ids: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let ud = json!({"id": "big", "watchlist": ids}).to_string();
    let f = signin_frame(&big, &ud);
    big.send(f).await;
    big.expect("pusher:signin_success").await;
    assert_eq!(big.expect("pusher:error").await["data"]["code"], 4302);
}

#[tokio::test]
async fn origins_are_checked_per_app() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = Setup::new()
        .env(
            "BELLHOP_APP_ALLOWED_ORIGINS",
            "https://app.hotel.com, *.staff.hotel.com",
        )
        .start();
    let connect = |origin: &'static str| {
        let mut req = server.ws_url(KEY).into_client_request().unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        async move {
            let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
            ws
        }
    };
    use futures_util::StreamExt;
    let mut ok = connect("https://porter.staff.hotel.com").await;
    let first = ok.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(first.contains("pusher:connection_established"));
    let mut bad = connect("https://evil.example").await;
    let first = bad.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(first.contains("4009"), "{first}");
}

#[tokio::test]
async fn trigger_cli_signs_and_sends() {
    let server = Setup::new().start();
    let mut c = Client::connect(&server).await;
    c.subscribe("ops").await;
    let url = format!("http://{}", server.addr);
    let env = [
        ("BELLHOP_APP_ID", "100"),
        ("BELLHOP_APP_KEY", KEY),
        ("BELLHOP_APP_SECRET", SECRET),
    ];
    let (ok, out) = crate::harness::run_cli(
        &["trigger", "ops", "drill", r#"{"floor":3}"#, "--url", &url],
        &env,
    );
    assert!(ok, "{out}");
    let ev = c.expect("drill").await;
    assert_eq!(ev["data"], r#"{"floor":3}"#);
    let (ok, out) = crate::harness::run_cli(
        &["trigger", "ops", "drill", "{}", "--url", &url],
        &[
            ("BELLHOP_APP_ID", "100"),
            ("BELLHOP_APP_KEY", KEY),
            ("BELLHOP_APP_SECRET", "wrong"),
        ],
    );
    assert!(!ok);
    assert!(out.contains("401"), "{out}");
}

#[tokio::test]
async fn tls_terminates_https_and_wss() {
    use std::sync::Arc;
    use tokio_tungstenite::Connector;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let server = Setup::new()
        .env("BELLHOP_TLS_CERT", cert_path.to_str().unwrap())
        .env("BELLHOP_TLS_KEY", key_path.to_str().unwrap())
        .start();
    let port = server.addr.port();

    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", server.addr)
        .build()
        .unwrap();
    let r = http
        .get(format!("https://localhost:{port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP on the TLS port is not served.
    assert!(reqwest::get(server.http("/health")).await.is_err());

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async_tls_with_config(
        format!("wss://localhost:{port}/app/{KEY}?protocol=7"),
        tcp,
        None,
        Some(Connector::Rustls(Arc::new(config))),
    )
    .await
    .unwrap();
    use futures_util::StreamExt;
    let first = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(first.contains("pusher:connection_established"), "{first}");
}

/// Shutdown moves clients in paced batches (`shutdown_batch` per 100 ms) after the drain,
/// all within the grace time, so the other nodes are not stampeded.
#[tokio::test]
async fn sigterm_moves_clients_in_paced_batches_within_the_grace_time() {
    let mut server = Setup::new()
        .toml("[server]\nshutdown_batch = 300\nshutdown_drain_ms = 200\nshutdown_grace_secs = 5\n")
        .start();
    let mut sockets = Vec::new();
    for _ in 0..1200 {
        sockets.push(crate::faults::raw::ws(&server).await);
    }
    let signalled = std::time::Instant::now();
    server.terminate();
    let mut waits = Vec::new();
    for mut s in sockets {
        waits.push(tokio::spawn(async move {
            let (code, _) = crate::faults::raw::until_close(&mut s, Duration::from_secs(8)).await;
            (code, std::time::Instant::now())
        }));
    }
    let mut closed_at = Vec::new();
    for w in waits {
        let (code, at) = w.await.unwrap();
        assert_eq!(code, Some(4200));
        closed_at.push(at.duration_since(signalled));
    }
    closed_at.sort();
    let (first, last) = (closed_at[0], closed_at[closed_at.len() - 1]);
    // Readiness fails for the drain time first; then four batches of 300, 100 ms apart.
    assert!(first >= Duration::from_millis(200), "{first:?}");
    assert!(
        last - first >= Duration::from_millis(250),
        "{first:?}..{last:?}"
    );
    assert!(last < Duration::from_secs(5), "{last:?}");
    let in_first_batch = closed_at
        .iter()
        .filter(|t| **t < first + Duration::from_millis(50))
        .count();
    assert!(in_first_batch <= 300, "{in_first_batch} closed at once");
    assert_eq!(server.wait_exit(10), Some(true));
}
