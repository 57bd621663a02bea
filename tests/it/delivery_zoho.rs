//! Zoho CRM as Zoho expects it: the refresh-token flow (the API domain from the token
//! answer), `Zoho-oauthtoken` on every call, the contact upserted with a duplicate check on
//! email, the deal upserted on its booking reference and linked to the contact; a token that
//! expires in the middle is refreshed once; each operation lands in the delivery's record.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::api::Api;
use crate::delivery::{put, settled, state_of};
use crate::harness::Setup;
use crate::mock_http::{Mock, Response};

#[tokio::test]
async fn a_booking_upserts_the_contact_and_its_deal_and_survives_a_token_expiry() {
    let tokens = Arc::new(AtomicUsize::new(0));
    let expire_next = Arc::new(Mutex::new(false));
    let base = Arc::new(Mutex::new(String::new()));
    let (t, e, b) = (tokens.clone(), expire_next.clone(), base.clone());
    let zoho = Mock::start(move |req| {
        if req.path == "/oauth/v2/token" {
            for want in ["refresh_token=1000.refresh", "client_id=1000.CLIENT", "client_secret=secret", "grant_type=refresh_token"] {
                if !req.body.contains(want) {
                    return Response::json(200, json!({"error": "invalid_client"}));
                }
            }
            let n = t.fetch_add(1, Ordering::SeqCst) + 1;
            return Response::json(200, json!({"access_token": format!("1000.token{n}"),
                "api_domain": b.lock().unwrap().clone(), "token_type": "Bearer", "expires_in": 3600}));
        }
        let current = format!("Zoho-oauthtoken 1000.token{}", t.load(Ordering::SeqCst));
        let mut expire = e.lock().unwrap();
        if req.headers.get("authorization") != Some(&current) || *expire {
            *expire = false;
            return Response::json(401, json!({"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token", "status": "error"}));
        }
        let body: Value = serde_json::from_str(&req.body).unwrap();
        match req.path.as_str() {
            "/crm/v2/Contacts/upsert" => {
                assert_eq!(body["duplicate_check_fields"], json!(["Email"]));
                Response::json(200, json!({"data": [{"code": "SUCCESS", "duplicate_field": "Email", "action": "insert",
                    "details": {"id": "4150868000001234001"}, "message": "record added", "status": "success"}]}))
            }
            "/crm/v2/Deals/upsert" => {
                assert_eq!(body["duplicate_check_fields"], json!(["Booking_Reference"]));
                assert_eq!(body["data"][0]["Contact_Name"], json!({"id": "4150868000001234001"}));
                Response::json(200, json!({"data": [{"code": "SUCCESS", "duplicate_field": null, "action": "insert",
                    "details": {"id": "4150868000005678001"}, "message": "record added", "status": "success"}]}))
            }
            _ => Response::json(404, json!({"code": "INVALID_URL_PATTERN", "message": "Please check if the URL trying to access is a correct one", "status": "error"})),
        }
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
zoho = {{ contact = {{ Email = '{{{{ email }}}}', Last_Name = '{{{{ last_name }}}}', First_Name = '{{{{ first_name }}}}' }}, deal = {{ Deal_Name = 'Booking {{{{ booking_id }}}}', Amount = '{{{{ amount }}}}', Stage = 'Closed Won', Booking_Reference = '{{{{ booking_id }}}}' }} }}
"#,
        zoho.url("")
    );
    let server = Setup::default().toml(&toml).start();
    let api = Api::new(&server);
    put(&api, "/users/z1", json!({})).await;
    let booking = |id: &str| {
        json!({"customer_id": "z1", "booking_id": id, "email": "ana@example.com",
            "first_name": "Ana", "last_name": "Silva", "amount": "120.00"})
        .to_string()
    };
    api.trigger("bookings", "booking.created", &booking("B-1"))
        .await;
    let ds = settled(&api, "z1", 1, 15).await;
    let (state, reason) = state_of(&ds, "zoho");
    assert_eq!(state, "sent", "{ds:?}");
    assert_eq!(
        reason,
        "CONTACT_UPSERT Contacts 4150868000001234001 SUCCESS; DEAL_CREATE Deals 4150868000005678001 SUCCESS"
    );
    let deal: Value = zoho
        .requests()
        .iter()
        .find(|r| r.path == "/crm/v2/Deals/upsert")
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .unwrap();
    assert_eq!(deal["data"][0]["Deal_Name"], "Booking B-1");
    assert_eq!(deal["data"][0]["Booking_Reference"], "B-1");

    // The token expires before the next booking's first call: one refresh, then success.
    *expire_next.lock().unwrap() = true;
    api.trigger("bookings", "booking.created", &booking("B-2"))
        .await;
    let ds = settled(&api, "z1", 2, 15).await;
    assert!(ds.iter().all(|d| d["state"] == "sent"), "{ds:?}");
    assert_eq!(
        tokens.load(Ordering::SeqCst),
        2,
        "one refresh for the expired token"
    );
}
