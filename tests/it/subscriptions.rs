//! Subscribing to each kind of channel, client events, and the limits on both.

use serde_json::json;

use crate::api::Api;
use crate::client::{data, Client, Received};
use crate::harness::Setup;

#[tokio::test]
async fn public_subscribe_receive_unsubscribe() {
    let server = Setup::new().start();
    let api = Api::new(&server);
    let mut c = Client::connect(&server).await;
    let ok = c.subscribe("hotel-1").await;
    assert_eq!(ok["channel"], "hotel-1");
    assert_eq!(ok["data"], "{}");
    assert_eq!(
        api.trigger("hotel-1", "new-order", r#"{"id":7}"#)
            .await
            .status,
        200
    );
    let ev = c.expect("new-order").await;
    assert_eq!(ev["channel"], "hotel-1");
    assert_eq!(ev["data"], r#"{"id":7}"#);

    c.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "hotel-1"}}))
        .await;
    // Triggered once the channel has let go of c.
    api.wait_subscription_count("hotel-1", 0).await;
    assert_eq!(api.trigger("hotel-1", "new-order", "{}").await.status, 200);
    // c subscribes again: the channel answers after it handled the trigger, so a new-order
    // still sent to c would come before this subscription_succeeded.
    c.subscribe_with("hotel-1", None, None).await;
    c.expect_only_until("pusher_internal:subscription_succeeded")
        .await;
}

#[tokio::test]
async fn private_and_encrypted_channels_need_a_valid_signature() {
    let server = Setup::new().start();
    let mut c = Client::connect(&server).await;
    c.subscribe("private-room-204").await;

    for channel in [
        "private-room-1",
        "private-encrypted-room-1",
        "presence-room-1",
    ] {
        // Missing auth.
        c.subscribe_with(channel, None, None).await;
        let ev = c.expect("pusher:subscription_error").await;
        assert_eq!(ev["channel"], channel);
        assert_eq!(ev["data"]["type"], "AuthError");
        assert_eq!(ev["data"]["status"], 401);
        assert!(ev["data"]["error"].as_str().unwrap().len() > 5);
    }
    // Signed for another channel.
    let wrong = c.sign("private-other", None);
    c.subscribe_with("private-room-1", Some(&wrong), None).await;
    let ev = c.expect("pusher:subscription_error").await;
    assert!(ev["data"]["error"]
        .as_str()
        .unwrap()
        .starts_with("Invalid signature"));
    // Signed by another app's key.
    c.subscribe_with("private-room-1", Some("other-key:abcd"), None)
        .await;
    assert_eq!(
        c.expect("pusher:subscription_error").await["data"]["status"],
        401
    );
    // Signed for another socket.
    let other = Client::connect(&server).await;
    let theirs = other.sign("private-room-1", None);
    c.subscribe_with("private-room-1", Some(&theirs), None)
        .await;
    c.expect("pusher:subscription_error").await;

    c.subscribe("private-encrypted-room-1").await;
}

#[tokio::test]
async fn channel_names_are_checked() {
    let server = Setup::new().start();
    let mut c = Client::connect(&server).await;
    c.subscribe(&"a".repeat(200)).await;
    for bad in [
        "a".repeat(201),
        "has space".into(),
        "caf\u{e9}".into(),
        "#bad".into(),
        String::new(),
    ] {
        c.subscribe_with(&bad, None, None).await;
        let ev = c.expect("pusher:subscription_error").await;
        assert_eq!(ev["data"]["type"], "InvalidChannel", "{bad}");
        assert_eq!(ev["data"]["status"], 400);
        // Exactly as sent, however long, so pusher-js can route it to that channel.
        assert_eq!(ev["channel"], bad.as_str());
    }
    // #server-to-user- needs a signed-in user with that id.
    c.subscribe_with("#server-to-user-1", None, None).await;
    assert_eq!(
        c.expect("pusher:subscription_error").await["data"]["type"],
        "AuthError"
    );
}

#[tokio::test]
async fn client_events_are_relayed_but_not_echoed() {
    let server = Setup::new().start();
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.subscribe("private-chat").await;
    b.subscribe("private-chat").await;
    a.send(json!({"event": "client-typing", "channel": "private-chat", "data": {"who": "a"}}))
        .await;
    let ev = b.expect("client-typing").await;
    assert_eq!(ev["channel"], "private-chat");
    assert_eq!(data(&ev), json!({"who": "a"}));
    assert!(ev.get("user_id").is_none());
    // The sender never gets its own client events: a later event on the channel (triggered
    // once b has the client event, so after it) is the next thing a gets.
    let api = Api::new(&server);
    assert_eq!(
        api.trigger("private-chat", "sentinel", "{}").await.status,
        200
    );
    a.expect_only_until("sentinel").await;
    assert_eq!(
        b.expect_only_until("sentinel").await["channel"],
        "private-chat"
    );
}

#[tokio::test]
async fn client_events_are_refused_where_pusher_refuses_them() {
    let server = Setup::new().start();
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.subscribe("public").await;
    a.subscribe("private-encrypted-x").await;
    b.subscribe("public").await;
    b.subscribe("private-encrypted-x").await;
    let cases = [
        ("public", "private and presence"),
        ("private-encrypted-x", "encrypted"),
        ("private-not-joined", "not subscribed"),
    ];
    for (channel, msg) in cases {
        a.send(json!({"event": "client-x", "channel": channel, "data": {}}))
            .await;
        let ev = a.expect("pusher:error").await;
        assert_eq!(ev["data"]["code"], 4300);
        assert!(
            ev["data"]["message"].as_str().unwrap().contains(msg),
            "{ev}"
        );
    }
    a.subscribe("private-big").await;
    let big = "x".repeat(10 * 1024 + 1);
    a.send(json!({"event": "client-x", "channel": "private-big", "data": big}))
        .await;
    let ev = a.expect("pusher:error").await;
    assert!(
        ev["data"]["message"].as_str().unwrap().contains("10240"),
        "{ev}"
    );
    let long_name = format!("client-{}", "n".repeat(200));
    a.send(json!({"event": long_name, "channel": "private-big", "data": {}}))
        .await;
    a.expect("pusher:error").await;
    // Every refused frame was handled before its error came back; a later event on each
    // channel b shares with a is the next thing b gets there. (b is on neither
    // private-not-joined nor private-big.)
    let r = Api::new(&server)
        .post(
            "events",
            &json!({"name": "sentinel", "channels": ["public", "private-encrypted-x"], "data": "{}"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut channels = vec![
        b.expect_only_until("sentinel").await["channel"].clone(),
        b.expect_only_until("sentinel").await["channel"].clone(),
    ];
    channels.sort_by_key(|c| c.to_string());
    assert_eq!(channels, [json!("private-encrypted-x"), json!("public")]);
}

#[tokio::test]
async fn client_events_need_the_app_to_enable_them() {
    let server = Setup::new()
        .env("BELLHOP_APP_CLIENT_EVENTS", "false")
        .start();
    let mut a = Client::connect(&server).await;
    a.subscribe("private-chat").await;
    a.send(json!({"event": "client-x", "channel": "private-chat", "data": {}}))
        .await;
    let ev = a.expect("pusher:error").await;
    assert!(ev["data"]["message"]
        .as_str()
        .unwrap()
        .contains("not enabled"));
}

#[tokio::test]
async fn client_event_rate_limit_sends_4301_and_keeps_the_socket() {
    let server = Setup::new().start();
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.subscribe("private-rate").await;
    b.subscribe("private-rate").await;
    for i in 0..12 {
        a.send(json!({"event": "client-n", "channel": "private-rate", "data": {"i": i}}))
            .await;
    }
    let mut errors = 0;
    for _ in 0..2 {
        let ev = a.expect("pusher:error").await;
        assert_eq!(ev["data"]["code"], 4301);
        errors += 1;
    }
    assert_eq!(errors, 2);
    for i in 0..10 {
        assert_eq!(data(&b.expect("client-n").await)["i"], i);
    }
    // The socket is kept, and its pong proves all twelve frames were handled (and anything
    // they published handed to the channel); a later event on the channel is then the next
    // thing b gets, so the two refused events were not relayed.
    a.send(json!({"event": "pusher:ping", "data": {}})).await;
    a.expect("pusher:pong").await;
    let api = Api::new(&server);
    assert_eq!(
        api.trigger("private-rate", "sentinel", "{}").await.status,
        200
    );
    b.expect_only_until("sentinel").await;
    a.expect_only_until("sentinel").await;
}

#[tokio::test]
async fn slow_consumer_is_closed_with_4100_and_others_keep_receiving() {
    let server = Setup::new()
        .toml("[server]\noutbox_capacity = 32\n")
        .start();
    let api = Api::new(&server);
    let mut slow = Client::connect(&server).await;
    let mut fast = Client::connect(&server).await;
    slow.subscribe("flood").await;
    fast.subscribe("flood").await;
    let payload = "p".repeat(9000);
    let batch: Vec<_> = (0..10)
        .map(|_| json!({"name": "e", "channel": "flood", "data": payload}))
        .collect();
    // ~36 MB in total: more than loopback socket buffers hold, so the slow client's
    // outbox must fill while it reads nothing.
    let mut fast_got = 0;
    for _ in 0..400 {
        assert_eq!(
            api.post("batch_events", &json!({"batch": batch}))
                .await
                .status,
            200
        );
        for _ in 0..10 {
            fast.expect("e").await;
            fast_got += 1;
        }
    }
    assert_eq!(fast_got, 4000);
    let mut slow_got = 0;
    loop {
        match slow.next_within(crate::client::WAIT).await {
            Some(Received::Event(ev)) if ev["event"] == "e" => slow_got += 1,
            Some(Received::Event(ev)) => {
                assert_eq!(ev["event"], "pusher:error");
                assert_eq!(ev["data"]["code"], 4100);
            }
            Some(Received::Closed(code)) => {
                assert_eq!(code, Some(4100));
                break;
            }
            None => panic!("slow client was never closed (got {slow_got} events)"),
        }
    }
    assert!(
        slow_got < 4000,
        "slow client got everything; the test did not overflow it"
    );
}

#[tokio::test]
async fn subscriptions_per_connection_are_limited() {
    let server = Setup::new()
        .toml("[[apps]]\nid = '100'\nkey = 'test-key'\nsecret = 'test-secret'\nmax_subscriptions_per_connection = 3\n")
        .start();
    let mut c = Client::connect(&server).await;
    for ch in ["a", "b", "c"] {
        c.subscribe(ch).await;
    }
    c.subscribe_with("d", None, None).await;
    let ev = c.expect("pusher:subscription_error").await;
    assert_eq!(ev["data"]["type"], "LimitReached");
    // Re-subscribing to a held channel is not a new subscription.
    c.subscribe("a").await;
    c.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "b"}}))
        .await;
    c.subscribe("d").await;
}
