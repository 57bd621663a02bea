//! The signed HTTP API: triggers, queries, signature checks, limits and app isolation.

use serde_json::json;

use crate::api::Api;
use crate::client::Client;
use crate::harness::{Setup, KEY};

#[tokio::test]
async fn trigger_to_many_channels_with_exclusion_and_info() {
    let server = Setup::new().start();
    let api = Api::new(&server);
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.subscribe("orders").await;
    b.subscribe("orders").await;
    b.subscribe_presence("presence-desk", "5", json!({})).await;

    let r = api
        .post(
            "events",
            &json!({"name": "n", "channels": ["orders", "presence-desk", "empty"], "data": "d",
                    "socket_id": a.socket_id, "info": "subscription_count,user_count"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body,
        json!({"channels": {
            "orders": {"subscription_count": 2},
            "presence-desk": {"subscription_count": 1, "user_count": 1},
            "empty": {"subscription_count": 0}
        }})
    );
    let mut got = vec![
        b.expect("n").await["channel"].clone(),
        b.expect("n").await["channel"].clone(),
    ];
    got.sort_by_key(|v| v.to_string());
    assert_eq!(got, vec![json!("orders"), json!("presence-desk")]);

    // The next event on orders is the first thing a gets (it was excluded from n) and the
    // next thing b gets there (n came once).
    let plain = api.trigger("orders", "m", "x").await;
    assert_eq!((plain.status, plain.body), (200, json!({})));
    a.expect_only_until("m").await;
    b.expect_only_until("m").await;
}

#[tokio::test]
async fn batch_events_and_batch_limit() {
    let server = Setup::new().start();
    let api = Api::new(&server);
    let mut c = Client::connect(&server).await;
    c.subscribe("a").await;
    c.subscribe("b").await;
    let r = api
        .post(
            "batch_events",
            &json!({"batch": [
                {"name": "one", "channel": "a", "data": "1"},
                {"name": "two", "channel": "b", "data": "2", "info": "subscription_count"}
            ]}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({"batch": [{}, {"subscription_count": 1}]}));
    // Order holds within a channel; these are two channels, so either may come first.
    let mut got = [c.next_event().await, c.next_event().await];
    got.sort_by_key(|e| e["event"].to_string());
    assert_eq!(
        (&got[0]["event"], &got[0]["data"]),
        (&json!("one"), &json!("1"))
    );
    assert_eq!(
        (&got[1]["event"], &got[1]["data"]),
        (&json!("two"), &json!("2"))
    );

    let eleven: Vec<_> = (0..11)
        .map(|i| json!({"name": "e", "channel": "a", "data": i.to_string()}))
        .collect();
    let r = api.post("batch_events", &json!({"batch": eleven})).await;
    assert_eq!(r.status, 400);
    assert!(r.body["error"].as_str().unwrap().contains("at most 10"));
    // A bad item refuses the whole batch: nothing is sent.
    let r = api
        .post(
            "batch_events",
            &json!({"batch": [
                {"name": "ok", "channel": "a", "data": "1"},
                {"name": "bad", "channel": "no spaces", "data": "2"}
            ]}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body["error"].as_str().unwrap().starts_with("batch[1]"));
    // Nothing of either refused batch was sent: a later event on a and on b comes first.
    let r = api
        .post(
            "events",
            &json!({"name": "sentinel", "channels": ["a", "b"], "data": "s"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut got = vec![
        c.expect_only_until("sentinel").await["channel"].clone(),
        c.expect_only_until("sentinel").await["channel"].clone(),
    ];
    got.sort_by_key(|v| v.to_string());
    assert_eq!(got, vec![json!("a"), json!("b")]);
}

#[tokio::test]
async fn bad_triggers_get_pusher_status_codes() {
    let server = Setup::new().start();
    let api = Api::new(&server);
    let channels: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let cases = [
        (
            json!({"name": "e", "channels": channels, "data": "x"}),
            400,
            "too many channels",
        ),
        (
            json!({"name": "e", "channels": channels[..100], "data": "x"}),
            200,
            "",
        ),
        (
            json!({"name": "e", "channel": "c", "data": "x".repeat(10241)}),
            413,
            "10240",
        ),
        (
            json!({"name": "e", "channel": "c", "data": "x".repeat(10240)}),
            200,
            "",
        ),
        (
            json!({"name": "", "channel": "c", "data": "x"}),
            400,
            "event name",
        ),
        (
            json!({"name": "n".repeat(201), "channel": "c", "data": "x"}),
            400,
            "event name",
        ),
        (
            json!({"name": "pusher:x", "channel": "c", "data": "x"}),
            400,
            "reserved",
        ),
        (json!({"name": "e", "data": "x"}), 400, "missing channels"),
        (
            json!({"name": "e", "channel": "bad name", "data": "x"}),
            400,
            "invalid channel",
        ),
        (
            json!({"name": "e", "channel": "c", "data": "x", "socket_id": "nope"}),
            400,
            "socket_id",
        ),
        (json!({"channel": "c"}), 400, "invalid JSON"),
    ];
    for (body, status, msg) in cases {
        let r = api.post("events", &body).await;
        assert_eq!(r.status, status, "{body}: {:?}", r.body);
        if status != 200 {
            assert_eq!(r.body["code"], status);
            let err = r.body["error"].as_str().unwrap().to_lowercase();
            assert!(err.contains(&msg.to_lowercase()), "{err} lacks {msg}");
        }
    }
    // Not JSON at all.
    let path = "/apps/100/events";
    let q = api.signed_query("POST", path, &[], b"nope");
    assert_eq!(
        api.raw("POST", path, &q, b"nope".to_vec()).await.status,
        400
    );
}

#[tokio::test]
async fn signatures_timestamps_and_body_md5_are_checked() {
    let server = Setup::new().start();
    let mut api = Api::new(&server);
    let body = br#"{"name":"e","channel":"c","data":"x"}"#.to_vec();
    let path = "/apps/100/events";

    // A good request for reference.
    let q = api.signed_query("POST", path, &[], &body);
    assert_eq!(api.raw("POST", path, &q, body.clone()).await.status, 200);

    // Tampered body: md5 mismatch.
    let r = api
        .raw(
            "POST",
            path,
            &q,
            br#"{"name":"f","channel":"c","data":"x"}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(r.body["error"].as_str().unwrap().contains("body_md5"));

    // Wrong secret.
    let mut wrong = Api::new(&server);
    wrong.secret = "not-the-secret".into();
    let r = wrong
        .post("events", &json!({"name": "e", "channel": "c", "data": "x"}))
        .await;
    assert_eq!(r.status, 401);
    assert!(r.body["error"]
        .as_str()
        .unwrap()
        .starts_with("Invalid signature"));

    // Timestamps: 599 s off is fine, 700 s is not, either way.
    for (skew, status) in [(599, 200), (-599, 200), (700, 401), (-700, 401)] {
        api.clock_skew = skew;
        let r = api
            .post("events", &json!({"name": "e", "channel": "c", "data": "x"}))
            .await;
        assert_eq!(r.status, status, "skew {skew}: {:?}", r.body);
    }
    api.clock_skew = 0;

    // Missing signature and unknown key.
    let r = api
        .raw("POST", path, "auth_key=test-key", body.clone())
        .await;
    assert_eq!(r.status, 401);
    let mut other_key = Api::new(&server);
    other_key.key = "other".into();
    assert_eq!(other_key.trigger("c", "e", "x").await.status, 401);

    // Unknown app.
    let missing = Api::for_app(&server, "999", KEY, "test-secret");
    let r = missing.trigger("c", "e", "x").await;
    assert_eq!(r.status, 404);

    // Query parameters are part of the signature.
    let q = api.signed_query(
        "GET",
        "/apps/100/channels",
        &[("filter_by_prefix", "a")],
        b"",
    );
    let tampered = q.replace("filter_by_prefix=a", "filter_by_prefix=b");
    assert_eq!(
        api.raw("GET", "/apps/100/channels", &tampered, vec![])
            .await
            .status,
        401
    );
    assert_eq!(
        api.raw("GET", "/apps/100/channels", &q, vec![])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn channel_queries() {
    let server = Setup::new().start();
    let api = Api::new(&server);
    let mut a = Client::connect(&server).await;
    a.subscribe("hotel-1-staff").await;
    a.subscribe("hotel-2-staff").await;
    a.subscribe_presence("presence-hotel-1", "9", json!({}))
        .await;
    let mut b = Client::connect(&server).await;
    b.subscribe("hotel-1-staff").await;

    let all = api.get("/channels", &[]).await;
    assert_eq!(
        all.body,
        json!({"channels": {"hotel-1-staff": {}, "hotel-2-staff": {}, "presence-hotel-1": {}}})
    );
    let some = api
        .get("/channels", &[("filter_by_prefix", "hotel-1")])
        .await;
    assert_eq!(some.body, json!({"channels": {"hotel-1-staff": {}}}));
    let users = api
        .get(
            "/channels",
            &[("filter_by_prefix", "presence-"), ("info", "user_count")],
        )
        .await;
    assert_eq!(
        users.body,
        json!({"channels": {"presence-hotel-1": {"user_count": 1}}})
    );
    let r = api.get("/channels", &[("info", "user_count")]).await;
    assert_eq!(r.status, 400);

    let one = api
        .get("/channels/hotel-1-staff", &[("info", "subscription_count")])
        .await;
    assert_eq!(one.body, json!({"occupied": true, "subscription_count": 2}));
    let none = api.get("/channels/nobody-here", &[]).await;
    assert_eq!(none.body, json!({"occupied": false}));
    let r = api
        .get("/channels/hotel-1-staff", &[("info", "user_count")])
        .await;
    assert_eq!(r.status, 400);
    let r = api.get("/channels/hotel-1-staff/users", &[]).await;
    assert_eq!(r.status, 400);
    let r = api.get("/channels/bad%20name", &[]).await;
    assert_eq!(r.status, 400);

    // Unsubscribing everyone vacates the channel.
    a.close().await;
    b.close().await;
    for _ in 0..50 {
        if api.get("/channels", &[]).await.body == json!({"channels": {}}) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("channels were not vacated");
}

#[tokio::test]
async fn apps_are_isolated() {
    let server = Setup::new()
        .toml("[[apps]]\nid = '200'\nkey = 'second-key'\nsecret = 'second-secret'\n")
        .start();
    let first = Api::new(&server);
    let second = Api::for_app(&server, "200", "second-key", "second-secret");
    let mut c1 = Client::connect(&server).await;
    c1.subscribe("shared-name").await;
    let mut c2 = Client::connect_to(&server.ws_url("second-key")).await;
    c2.subscribe("shared-name").await;

    assert_eq!(
        second.trigger("shared-name", "e", "for-two").await.status,
        200
    );
    assert_eq!(c2.expect("e").await["data"], "for-two");
    // An event app 1 triggers on its own shared-name after that is the first thing c1 gets
    // (the path app 2's event would have taken had the channels been shared).
    assert_eq!(
        first.trigger("shared-name", "sentinel", "1").await.status,
        200
    );
    assert_eq!(c1.expect_only_until("sentinel").await["data"], "1");

    // App 2's credentials cannot act on app 1's path.
    let mut cross = Api::for_app(&server, "100", "second-key", "second-secret");
    assert_eq!(cross.trigger("shared-name", "e", "x").await.status, 401);
    cross.key = KEY.into();
    assert_eq!(cross.trigger("shared-name", "e", "x").await.status, 401);
    assert_eq!(
        first.trigger("shared-name", "sentinel", "2").await.status,
        200
    );
    assert_eq!(c1.expect_only_until("sentinel").await["data"], "2");
    // And app 2's subscriber heard neither of app 1's events.
    assert_eq!(
        second.trigger("shared-name", "sentinel", "3").await.status,
        200
    );
    assert_eq!(c2.expect_only_until("sentinel").await["data"], "3");

    let list = first.get("/channels", &[]).await;
    assert_eq!(list.body, json!({"channels": {"shared-name": {}}}));
    // A channel auth signed with app 2's secret does not open app 1's private channel.
    c1.subscribe_with("private-x", Some("second-key:00"), None)
        .await;
    c1.expect("pusher:subscription_error").await;
}

#[tokio::test]
async fn unknown_routes_and_health() {
    let server = Setup::new().start();
    let http = reqwest::Client::new();
    let r = http.get(server.http("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], 404);
    assert_eq!(
        http.get(server.http("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(server.http("/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
