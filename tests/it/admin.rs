//! The admin API for apps: create, change, rotate secrets, disable — stored, so a restart
//! (or another node) serves the same apps.

use serde_json::{json, Value};

use crate::api::Api;
use crate::client::Client;
use crate::harness::Setup;

const TOKEN: &str = "admin-token-for-tests";

async fn admin(
    server: &crate::harness::Server,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let http = reqwest::Client::new();
    let url = server.http(path);
    let req = match method {
        "GET" => http.get(url),
        "PATCH" => http.patch(url),
        _ => http.post(url),
    }
    .bearer_auth(TOKEN);
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn apps_are_created_changed_rotated_and_disabled() {
    let data = tempfile::tempdir().unwrap();
    let setup = Setup::new()
        .env("BELLHOP_ADMIN_TOKEN", TOKEN)
        .data_dir(data.path());
    let server = setup.clone().start();

    let (status, body) = admin(
        &server,
        "POST",
        "/admin/apps",
        Some(json!({"id": "300", "key": "salon-key"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let secret = body["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 32);
    assert!(body["app"].get("secret").is_none());

    // Refusals.
    let (status, _) = admin(
        &server,
        "POST",
        "/admin/apps",
        Some(json!({"id": "300", "key": "x"})),
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = admin(
        &server,
        "POST",
        "/admin/apps",
        Some(json!({"id": "301", "key": "salon-key"})),
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = admin(
        &server,
        "POST",
        "/admin/apps",
        Some(json!({"id": "abc", "key": "y"})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = admin(
        &server,
        "POST",
        "/admin/apps",
        Some(json!({"id": "302", "key": "z", "bogus": 1})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = admin(
        &server,
        "PATCH",
        "/admin/apps/300",
        Some(json!({"secret": "x"})),
    )
    .await;
    assert_eq!(status, 400);

    // The new app works at once.
    let api = Api::for_app(&server, "300", "salon-key", &secret);
    let mut c = Client::connect_to(&server.ws_url("salon-key")).await;
    c.subscribe("bookings").await;
    assert_eq!(
        api.trigger("bookings", "booking.created", "{}")
            .await
            .status,
        200
    );
    c.expect("booking.created").await;

    // Client events are off until patched on.
    let (status, body) = admin(
        &server,
        "PATCH",
        "/admin/apps/300",
        Some(json!({"client_events": true, "max_connections": 50})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["app"]["client_events"], true);
    assert_eq!(body["app"]["max_connections"], 50);

    // Rotation: both secrets verify until the rotation is finished.
    let (status, body) = admin(&server, "POST", "/admin/apps/300/rotate-secret", None).await;
    assert_eq!(status, 200);
    let new_secret = body["secret"].as_str().unwrap().to_owned();
    let new_api = Api::for_app(&server, "300", "salon-key", &new_secret);
    assert_eq!(api.trigger("bookings", "a", "{}").await.status, 200);
    assert_eq!(new_api.trigger("bookings", "b", "{}").await.status, 200);
    admin(&server, "POST", "/admin/apps/300/finish-rotation", None).await;
    assert_eq!(api.trigger("bookings", "c", "{}").await.status, 401);
    assert_eq!(new_api.trigger("bookings", "d", "{}").await.status, 200);

    // Listing never shows secrets.
    let (_, list) = admin(&server, "GET", "/admin/apps", None).await;
    assert!(!list.to_string().contains(&new_secret));
    assert!(list["apps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["id"] == "300"));

    // A restart serves the stored app with its current secret.
    drop(c);
    drop(server);
    let server = setup.start();
    let new_api = Api::for_app(&server, "300", "salon-key", &new_secret);
    assert_eq!(new_api.trigger("bookings", "e", "{}").await.status, 200);

    // Disabling closes its sockets (4003), refuses new ones, and its API answers 403.
    let mut c = Client::connect_to(&server.ws_url("salon-key")).await;
    c.subscribe("bookings").await;
    let (status, _) = admin(
        &server,
        "PATCH",
        "/admin/apps/300",
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(status, 200);
    c.expect_refusal(4003).await;
    let mut again = Client::connect_raw_client(&server.ws_url("salon-key")).await;
    again.expect_refusal(4003).await;
    assert_eq!(new_api.trigger("bookings", "f", "{}").await.status, 403);
    // Config-file apps can be changed too; the admin API needs its token.
    let (status, _) = admin(
        &server,
        "PATCH",
        "/admin/apps/100",
        Some(json!({"max_batch_size": 2})),
    )
    .await;
    assert_eq!(status, 200);
    let r = reqwest::Client::new()
        .get(server.http("/admin/apps"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn apps_made_through_the_admin_api_keep_rules_and_provider_secrets_hidden() {
    use crate::mock_http::{Mock, Response};
    let hook = Mock::start(|_| Response::json(200, json!({}))).await;
    let data = tempfile::tempdir().unwrap();
    let setup = Setup::new()
        .env("BELLHOP_ADMIN_TOKEN", TOKEN)
        .data_dir(data.path());
    let server = setup.clone().start();
    let whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let app = json!({
        "id": "400", "key": "venue-key",
        "email": {"host": "127.0.0.1", "port": 2525, "from": "Venue <v@x.io>",
                  "username": "u", "password": "smtp-password"},
        "event_webhooks": [{"url": hook.url("/hook"), "events": ["booking.*"], "secret": whsec}],
        "rules": [{"name": "welcome", "channel": "bookings", "event": "booking.created",
                   "type": "WELCOME", "recipients": [{"users_field": "guest"}],
                   "deliver": [{"channel": "in_app", "title": "Welcome"}]}]
    });
    let (status, body) = admin(&server, "POST", "/admin/apps", Some(app)).await;
    assert_eq!(status, 201, "{body}");
    let text = body.to_string();
    assert!(
        !text.contains("smtp-password") && !text.contains(whsec),
        "{body}"
    );
    assert_eq!(body["app"]["email"]["password"], "********");
    assert_eq!(body["app"]["rules"][0]["name"], "welcome");
    let secret = body["secret"].as_str().unwrap().to_owned();

    // After a restart the stored app still signs its webhooks and runs its rules.
    drop(server);
    let server = setup.start();
    let api = Api::for_app(&server, "400", "venue-key", &secret);
    let r = api
        .trigger(
            "bookings",
            "booking.created",
            &json!({"guest": "g1"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let got = hook.wait_for("/hook", 1, 10).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].headers["webhook-signature"].starts_with("v1,"));
    let end = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let inbox = api.get("/users/g1/inbox", &[]).await;
        if inbox.body["items"][0]["title"] == "Welcome" {
            break;
        }
        assert!(tokio::time::Instant::now() < end, "{:?}", inbox.body);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, shown) = admin(&server, "GET", "/admin/apps", None).await;
    assert!(!shown.to_string().contains("smtp-password"), "{shown}");
    // The operator sees the same delivery audit.
    let (status, audit) = admin(
        &server,
        "GET",
        "/admin/apps/400/users/g1/notifications",
        None,
    )
    .await;
    assert_eq!(status, 200, "{audit}");
    assert_eq!(audit["notifications"][0]["rule"], "welcome");
    assert_eq!(audit["notifications"][0]["deliveries"][0]["state"], "sent");
}
