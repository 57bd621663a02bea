//! Presence channels: members, once-per-user events, and limits.

use serde_json::json;

use crate::api::Api;
use crate::client::{data, Client};
use crate::harness::Setup;

#[tokio::test]
async fn members_join_and_leave_once_per_user() {
    let server = Setup::new().start();
    let mut ann = Client::connect(&server).await;
    let ok = ann
        .subscribe_presence("presence-staff", "1", json!({"name": "Ann"}))
        .await;
    assert_eq!(
        data(&ok),
        json!({"presence": {"ids": ["1"], "hash": {"1": {"name": "Ann"}}, "count": 1}})
    );

    let mut bob = Client::connect(&server).await;
    let ok = bob
        .subscribe_presence("presence-staff", "2", json!({"name": "Bob"}))
        .await;
    let d = data(&ok);
    assert_eq!(d["presence"]["count"], 2);
    assert_eq!(d["presence"]["hash"]["1"], json!({"name": "Ann"}));
    let added = ann.expect("pusher_internal:member_added").await;
    assert_eq!(
        data(&added),
        json!({"user_id": "2", "user_info": {"name": "Bob"}})
    );

    // Bob's second socket adds nothing for anyone.
    let mut bob2 = Client::connect(&server).await;
    let ok = bob2
        .subscribe_presence("presence-staff", "2", json!({"name": "Bob"}))
        .await;
    assert_eq!(data(&ok)["presence"]["count"], 2);

    let api = Api::new(&server);
    let users = api.get("/channels/presence-staff/users", &[]).await;
    assert_eq!(users.body, json!({"users": [{"id": "1"}, {"id": "2"}]}));
    let info = api
        .get(
            "/channels/presence-staff",
            &[("info", "user_count,subscription_count")],
        )
        .await;
    assert_eq!(
        info.body,
        json!({"occupied": true, "user_count": 2, "subscription_count": 3})
    );
    // The channel's member frames are ordered: a sentinel member joining after bob2's
    // subscription_succeeded is the next frame ann and bob get, so nothing came before it.
    let mut s1 = Client::connect(&server).await;
    s1.subscribe_presence("presence-staff", "sentinel-1", json!({}))
        .await;
    ann.expect_only_member("pusher_internal:member_added", "sentinel-1")
        .await;
    bob.expect_only_member("pusher_internal:member_added", "sentinel-1")
        .await;

    // One of Bob's sockets leaving removes nothing; the last one does, once.
    bob2.close().await;
    // Once the channel counts bob2 gone, the sentinel's leave comes after anything it caused.
    api.wait_subscription_count("presence-staff", 3).await;
    s1.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "presence-staff"}}))
        .await;
    ann.expect_only_member("pusher_internal:member_removed", "sentinel-1")
        .await;
    bob.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "presence-staff"}}))
        .await;
    let removed = ann.expect("pusher_internal:member_removed").await;
    assert_eq!(data(&removed), json!({"user_id": "2"}));
    // Removed once: the next member frame is a later sentinel's.
    let mut s2 = Client::connect(&server).await;
    s2.subscribe_presence("presence-staff", "sentinel-2", json!({}))
        .await;
    ann.expect_only_member("pusher_internal:member_added", "sentinel-2")
        .await;
}

#[tokio::test]
async fn numeric_user_ids_and_client_events_carry_user_id() {
    let server = Setup::new().start();
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    let d = r#"{"user_id":42,"user_info":{"name":"Porter"}}"#;
    let auth = a.sign("presence-room", Some(d));
    a.subscribe_with("presence-room", Some(&auth), Some(d))
        .await;
    let ok = a.expect("pusher_internal:subscription_succeeded").await;
    assert_eq!(data(&ok)["presence"]["ids"], json!(["42"]));
    b.subscribe_presence("presence-room", "7", json!({})).await;
    a.expect("pusher_internal:member_added").await;
    a.send(json!({"event": "client-ping", "channel": "presence-room", "data": {"x": 1}}))
        .await;
    let ev = b.expect("client-ping").await;
    assert_eq!(ev["user_id"], "42");
}

#[tokio::test]
async fn presence_limits_and_bad_channel_data() {
    let server = Setup::new()
        .toml("[[apps]]\nid = '100'\nkey = 'test-key'\nsecret = 'test-secret'\nmax_presence_members = 2\n")
        .start();
    let mut a = Client::connect(&server).await;
    a.subscribe_presence("presence-small", "1", json!({})).await;
    a.subscribe_presence("presence-small", "1", json!({})).await;
    let mut b = Client::connect(&server).await;
    b.subscribe_presence("presence-small", "2", json!({})).await;
    let mut c = Client::connect(&server).await;
    let cd = json!({"user_id": "3"}).to_string();
    let auth = c.sign("presence-small", Some(&cd));
    c.subscribe_with("presence-small", Some(&auth), Some(&cd))
        .await;
    let ev = c.expect("pusher:subscription_error").await;
    assert_eq!(ev["data"]["type"], "LimitReached");
    // A user already in the channel may still add a socket.
    let mut b2 = Client::connect(&server).await;
    b2.subscribe_presence("presence-small", "2", json!({}))
        .await;

    let long_id = json!({"user_id": "u".repeat(129)}).to_string();
    let big_info = json!({"user_id": "9", "user_info": {"bio": "b".repeat(1100)}}).to_string();
    for (cd, kind) in [
        (long_id.as_str(), "LimitReached"),
        (big_info.as_str(), "LimitReached"),
        ("not json", "AuthError"),
        (r#"{"user_info":{}}"#, "AuthError"),
    ] {
        let auth = c.sign("presence-other", Some(cd));
        c.subscribe_with("presence-other", Some(&auth), Some(cd))
            .await;
        let ev = c.expect("pusher:subscription_error").await;
        assert_eq!(ev["data"]["type"], kind, "{cd}");
    }
}

#[tokio::test]
async fn a_repeated_subscribe_keeps_the_first_member() {
    let server = Setup::new().start();
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.subscribe_presence("presence-desk", "1", json!({})).await;
    b.subscribe_presence("presence-desk", "2", json!({})).await;
    a.expect("pusher_internal:member_added").await;
    // b subscribes again claiming another user id: nothing changes.
    let ok = b.subscribe_presence("presence-desk", "3", json!({})).await;
    assert_eq!(data(&ok)["presence"]["count"], 2);
    // Nobody was added: the next member frame a gets is a sentinel's, joining after.
    let mut s = Client::connect(&server).await;
    s.subscribe_presence("presence-desk", "sentinel", json!({}))
        .await;
    a.expect_only_member("pusher_internal:member_added", "sentinel")
        .await;
    b.send(json!({"event": "client-x", "channel": "presence-desk", "data": {}}))
        .await;
    assert_eq!(a.expect("client-x").await["user_id"], "2");
}
