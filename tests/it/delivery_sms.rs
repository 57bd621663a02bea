//! SMS as the providers expect it: Twilio's Messages API (Basic auth with the account SID and
//! token, form fields) and Africa's Talking (apiKey header, username, per-recipient status),
//! against local servers that check the exact request and answer with each provider's real
//! bodies; numbers normalised to E.164 with the app's region; an invalid number or an
//! unsubscribed recipient is a skip; a timeout after sending is ambiguous and not re-sent.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::api::Api;
use crate::delivery::{put, settled, state_of};
use crate::harness::Setup;
use crate::mock_http::{Mock, Response};
use crate::receiver::{Receiver, Reply};

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-auth-token-0123456789abcd";

fn form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = v.replace('+', " ");
            let mut out = Vec::new();
            let b = v.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' && i + 2 < b.len() {
                    out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
                    i += 3;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            (k.to_owned(), String::from_utf8(out).unwrap())
        })
        .collect()
}

fn rule(sms_toml: &str) -> String {
    format!(
        r#"
[[apps]]
id = '100'
key = 'test-key'
secret = 'test-secret'
{sms_toml}
[[apps.rules]]
name = 'salon-confirmed'
channel = 'salon-bookings'
event = 'booking.confirmed'
type = 'BOOKING_CONFIRMED'
recipients = [{{ users_field = 'customer_id' }}, {{ phone_field = 'staff_phone' }}]

[[apps.rules.deliver]]
channel = 'sms'
body = 'Hi {{{{ recipient.display_name | default("there") }}}}, your {{{{ service }}}} is confirmed for {{{{ time }}}}.'
"#
    )
}

#[tokio::test]
async fn twilio_gets_the_exact_form_and_a_stopped_number_is_skipped() {
    let twilio = Mock::start(|req| {
        let path = format!("/2010-04-01/Accounts/{SID}/Messages.json");
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{TOKEN}"))
        );
        if req.path != path || req.headers.get("authorization") != Some(&auth) {
            return Response::json(401, json!({"code": 20003, "message": "Authenticate", "status": 401}));
        }
        let f = form(&req.body);
        if f.get("MessagingServiceSid").map(String::as_str) != Some("MG0123456789abcdef0123456789abcdef") {
            return Response::json(400, json!({"code": 21606, "message": "The From phone number is not a valid, SMS-capable inbound phone number", "status": 400}));
        }
        match f["To"].as_str() {
            "+254712345678" => Response::json(201, json!({"sid": "SM0000000000000000000000000000001", "status": "queued", "to": f["To"], "body": f["Body"]})),
            "+254722000111" => Response::json(400, json!({"code": 21610, "message": "Attempt to send to unsubscribed recipient", "more_info": "https://www.twilio.com/docs/errors/21610", "status": 400})),
            _ => Response::json(400, json!({"code": 21211, "message": "Invalid 'To' Phone Number", "status": 400})),
        }
    })
    .await;
    let sms = format!(
        "[apps.sms]\nprovider = 'twilio'\ndefault_region = 'KE'\naccount_sid = '{SID}'\nauth_token = '{TOKEN}'\nmessaging_service_sid = 'MG0123456789abcdef0123456789abcdef'\nbase_url = '{}'\n",
        twilio.url("")
    );
    let server = Setup::default().toml(&rule(&sms)).start();
    let api = Api::new(&server);
    put(
        &api,
        "/users/c1",
        json!({"phone": "0712 345 678", "display_name": "Amina"}),
    )
    .await;
    put(&api, "/users/c2", json!({"phone": "0722 000 111"})).await;
    put(&api, "/users/c3", json!({"phone": "12"})).await;
    put(&api, "/users/c4", json!({})).await;
    for c in ["c1", "c2", "c3", "c4"] {
        let b = json!({"customer_id": c, "service": "haircut", "time": "10:30"});
        let r = api
            .trigger("salon-bookings", "booking.confirmed", &b.to_string())
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let c1 = settled(&api, "c1", 1, 15).await;
    assert_eq!(
        state_of(&c1, "sms"),
        ("sent".into(), "to +254712345678".into())
    );
    let c2 = settled(&api, "c2", 1, 15).await;
    let (state, reason) = state_of(&c2, "sms");
    assert_eq!(state, "skipped");
    assert!(reason.contains("21610"), "{reason}");
    let c3 = settled(&api, "c3", 1, 15).await;
    assert_eq!(
        state_of(&c3, "sms"),
        (
            "skipped".into(),
            "\"12\" is not a valid phone number".into()
        )
    );
    let c4 = settled(&api, "c4", 1, 15).await;
    assert_eq!(
        state_of(&c4, "sms"),
        ("skipped".into(), "no phone number".into())
    );
    let sends = twilio.requests();
    assert_eq!(
        sends.len(),
        2,
        "no request for an invalid or missing number"
    );
    let f = form(&sends[0].body);
    assert_eq!(f["To"], "+254712345678");
    assert_eq!(f["Body"], "Hi Amina, your haircut is confirmed for 10:30.");
    assert_eq!(
        sends[0].headers["content-type"],
        "application/x-www-form-urlencoded"
    );
}

#[tokio::test]
async fn africas_talking_gets_its_form_and_a_timeout_is_ambiguous_not_resent() {
    let at = Mock::start(|req| {
        if req.path != "/version1/messaging"
            || req.headers.get("apikey").map(String::as_str) != Some("at-key-1")
            || req.headers.get("accept").map(String::as_str) != Some("application/json")
        {
            return Response {
                status: 401,
                headers: vec![],
                body: "The supplied authentication is invalid".into(),
            };
        }
        let f = form(&req.body);
        assert_eq!(f["username"], "sandbox");
        assert_eq!(f["from"], "GRANDSALON");
        Response::json(
            201,
            json!({"SMSMessageData": {"Message": "Sent to 1/1 Total Cost: SAR 0.1000",
            "Recipients": [{"statusCode": 101, "number": f["to"], "status": "Success",
                "cost": "SAR 0.1000", "messageId": "ATXid_0123456789"}]}}),
        )
    })
    .await;
    let sms = format!(
        "[apps.sms]\nprovider = 'africastalking'\ndefault_region = 'SA'\nusername = 'sandbox'\napi_key = 'at-key-1'\nsandbox = true\nfrom = 'GRANDSALON'\nbase_url = '{}'\n",
        at.url("")
    );
    let server = Setup::default().toml(&rule(&sms)).start();
    let api = Api::new(&server);
    put(
        &api,
        "/users/s1",
        json!({"phone": "050 123 4567", "display_name": "Noura"}),
    )
    .await;
    let b = json!({"customer_id": "s1", "service": "manicure", "time": "16:00"});
    api.trigger("salon-bookings", "booking.confirmed", &b.to_string())
        .await;
    let s1 = settled(&api, "s1", 1, 15).await;
    assert_eq!(
        state_of(&s1, "sms"),
        ("sent".into(), "to +966501234567".into())
    );
    let sent = at.requests();
    assert_eq!(sent.len(), 1);
    let f = form(&sent[0].body);
    assert_eq!(f["to"], "+966501234567");
    assert_eq!(
        f["message"],
        "Hi Noura, your manicure is confirmed for 16:00."
    );

    // A provider that takes the request and never answers: ambiguous, and not sent again.
    let hang = Receiver::start(vec![Reply::Hang]).await;
    let sms = format!(
        "[apps.sms]\nprovider = 'africastalking'\ndefault_region = 'SA'\nusername = 'sandbox'\napi_key = 'at-key-1'\nbase_url = '{}'\ntimeout_secs = 1\n",
        hang.url("")
    );
    let server = Setup::default().toml(&rule(&sms)).start();
    let api = Api::new(&server);
    put(&api, "/users/s2", json!({"phone": "+966 50 123 4568"})).await;
    let b = json!({"customer_id": "s2", "service": "pedicure", "time": "17:00"});
    api.trigger("salon-bookings", "booking.confirmed", &b.to_string())
        .await;
    let s2 = settled(&api, "s2", 1, 15).await;
    let (state, reason) = state_of(&s2, "sms");
    assert_eq!(state, "ambiguous", "{s2:?}");
    assert!(reason.contains("may have been sent"), "{reason}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        hang.requests().len(),
        1,
        "an ambiguous send is not repeated"
    );
    let attempts: &Value = &s2[0]["attempts"];
    assert_eq!(attempts.as_array().unwrap().len(), 1);
}
