//! SMS and WhatsApp as the providers expect them: Twilio's Messages API (Basic auth with the
//! account SID and token, form fields; `whatsapp:` addresses and content templates), Africa's
//! Talking (apiKey header, username, per-recipient status) and Meta's Cloud API (Bearer token,
//! template JSON), against local servers that check the exact request and answer with each
//! provider's real bodies; numbers normalised to E.164 with the app's region; an invalid
//! number or an unsubscribed recipient is a skip; a timeout after sending is ambiguous and not
//! re-sent; free-form WhatsApp text outside the 24-hour window is reported as such.

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::api::Api;
use crate::delivery::{deliveries, put, settled, state_of};
use crate::harness::Setup;
use crate::mock_http::{form, Mock, Response};
use crate::receiver::{Receiver, Reply};

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-auth-token-0123456789abcd";

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
    // The jobs run concurrently, so the two requests may arrive in either order.
    let amina = sends
        .iter()
        .find(|r| form(&r.body)["To"] == "+254712345678")
        .expect("a request to +254712345678");
    let f = form(&amina.body);
    assert_eq!(f["Body"], "Hi Amina, your haircut is confirmed for 10:30.");
    assert_eq!(
        amina.headers["content-type"],
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
                delay: None,
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
    // The one attempt closed the job (its outcome is not a retry), and a closed job never
    // runs again: the request the provider took is the only one there will be.
    let attempts = s2[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{s2:?}");
    assert_ne!(attempts[0]["outcome"], "retry", "{s2:?}");
    assert_eq!(
        hang.requests().len(),
        1,
        "an ambiguous send is not repeated"
    );
}

/// Runs one booking confirmation for `user` to a settled delivery on a server keeping its
/// SQLite file in `data`, then kills that server. Answers the settled deliveries.
async fn settle_then_kill(
    toml: &str,
    data: &std::path::Path,
    user: &str,
    phone: &str,
) -> Vec<Value> {
    let server = Setup::default().toml(toml).data_dir(data).start();
    let api = Api::new(&server);
    put(&api, &format!("/users/{user}"), json!({"phone": phone})).await;
    let b = json!({"customer_id": user, "service": "pedicure", "time": "18:00"});
    api.trigger("salon-bookings", "booking.confirmed", &b.to_string())
        .await;
    let settled = settled(&api, user, 1, 15).await;
    drop(api);
    server.kill();
    settled
}

/// Puts a delivery's job back as a crash leaves it (due again, unleased) and its delivery in
/// `state`, then restarts the server on the same SQLite file and waits for the job to run
/// again. Answers the delivery as the rerun left it.
async fn rerun_after_crash(
    toml: &str,
    data: &std::path::Path,
    user: &str,
    job: i64,
    state: &str,
) -> Vec<Value> {
    let url = format!("sqlite://{}/bellhop.db", data.display());
    let db = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query(
        "UPDATE jobs SET state = 'pending', run_at = 0, lease_token = NULL, lease_until = NULL \
         WHERE id = $1",
    )
    .bind(job)
    .execute(&db)
    .await
    .unwrap();
    sqlx::query("UPDATE deliveries SET state = $1 WHERE job_id = $2")
        .bind(state)
        .bind(job)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;

    let server = Setup::default().toml(toml).data_dir(data).start();
    let api = Api::new(&server);
    let end = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let d = deliveries(&api, user).await;
        if d[0]["attempts"].as_array().is_some_and(|a| a.len() >= 2) {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the job did not run again: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A crash between writing an ambiguous outcome and closing its job: the job runs again, and
/// sends nothing.
#[tokio::test]
async fn a_job_run_again_after_an_ambiguous_send_does_not_resend() {
    let hang = Receiver::start(vec![Reply::Hang]).await;
    let sms = format!(
        "[apps.sms]\nprovider = 'africastalking'\ndefault_region = 'SA'\nusername = 'sandbox'\napi_key = 'at-key-1'\nbase_url = '{}'\ntimeout_secs = 1\n",
        hang.url("")
    );
    let data = tempfile::tempdir().unwrap();
    let s3 = settle_then_kill(&rule(&sms), data.path(), "s3", "+966 50 123 4569").await;
    assert_eq!(state_of(&s3, "sms").0, "ambiguous", "{s3:?}");
    let job = s3[0]["job_id"].as_i64().unwrap();

    let again = rerun_after_crash(&rule(&sms), data.path(), "s3", job, "ambiguous").await;
    assert_eq!(state_of(&again, "sms").0, "ambiguous");
    assert_eq!(hang.requests().len(), 1, "sent again after the rerun");
}

/// A crash after the provider accepted the message (its id kept) but before the delivery was
/// marked sent: the job runs again and marks it sent without a second message.
#[tokio::test]
async fn a_job_run_again_after_the_provider_accepted_does_not_resend() {
    let at = Mock::start(|req| {
        let f = form(&req.body);
        Response::json(
            201,
            json!({"SMSMessageData": {"Message": "Sent to 1/1 Total Cost: SAR 0.1000",
            "Recipients": [{"statusCode": 101, "number": f["to"], "status": "Success",
                "cost": "SAR 0.1000", "messageId": "ATXid_777"}]}}),
        )
    })
    .await;
    let sms = format!(
        "[apps.sms]\nprovider = 'africastalking'\ndefault_region = 'SA'\nusername = 'sandbox'\napi_key = 'at-key-1'\nbase_url = '{}'\n",
        at.url("")
    );
    let data = tempfile::tempdir().unwrap();
    let s4 = settle_then_kill(&rule(&sms), data.path(), "s4", "+966 50 123 4570").await;
    assert_eq!(state_of(&s4, "sms").0, "sent", "{s4:?}");
    let job = s4[0]["job_id"].as_i64().unwrap();

    let again = rerun_after_crash(&rule(&sms), data.path(), "s4", job, "pending").await;
    let (state, reason) = state_of(&again, "sms");
    assert_eq!(state, "sent", "{again:?}");
    assert!(reason.contains("ATXid_777"), "{reason}");
    assert_eq!(at.requests().len(), 1, "sent again after the rerun");
}

fn whatsapp_rules(wa_toml: &str) -> String {
    format!(
        r#"
[[apps]]
id = '100'
key = 'test-key'
secret = 'test-secret'
{wa_toml}
[[apps.rules]]
name = 'wa-confirmed'
channel = 'venue-bookings'
event = 'booking.confirmed'
type = 'WHATSAPP_CONFIRMATION'
recipients = [{{ users_field = 'customer_id' }}]

[[apps.rules.deliver]]
channel = 'whatsapp'
whatsapp_template = {{ name = 'booking_confirmation', language = 'en_US', params = ['{{{{ customerName }}}}', '{{{{ showTitle }}}}', '{{{{ eventDate }}}}'] }}

[[apps.rules]]
name = 'wa-chat'
channel = 'venue-chat'
event = 'reply'
type = 'CHAT'
recipients = [{{ users_field = 'customer_id' }}]

[[apps.rules.deliver]]
channel = 'whatsapp'
body = '{{{{ text }}}}'
"#
    )
}

#[tokio::test]
async fn whatsapp_templates_go_to_meta_and_free_text_outside_the_window_is_reported() {
    let meta = Mock::start(|req| {
        if req.path != "/v21.0/1122334455/messages"
            || req.headers.get("authorization").map(String::as_str) != Some("Bearer EAAG-test-token")
        {
            return Response::json(401, json!({"error": {"message": "Invalid OAuth access token.", "type": "OAuthException", "code": 190, "fbtrace_id": "x"}}));
        }
        let b: Value = serde_json::from_str(&req.body).unwrap();
        match b["type"].as_str() {
            Some("template") => Response::json(200, json!({"messaging_product": "whatsapp",
                "contacts": [{"input": b["to"], "wa_id": b["to"]}],
                "messages": [{"id": "wamid.HBgMOTY2NTAxMjM0NTY3FQIAERgS"}]})),
            _ => Response::json(400, json!({"error": {"message": "(#131047) Re-engagement message",
                "type": "OAuthException", "code": 131047, "error_data": {"messaging_product": "whatsapp",
                "details": "Message failed to send because more than 24 hours have passed since the customer last replied to this number."},
                "fbtrace_id": "y"}})),
        }
    })
    .await;
    let wa = format!(
        "[apps.whatsapp]\nprovider = 'meta'\ndefault_region = 'SA'\nphone_number_id = '1122334455'\naccess_token = 'EAAG-test-token'\nbase_url = '{}'\n",
        meta.url("")
    );
    let server = Setup::default().toml(&whatsapp_rules(&wa)).start();
    let api = Api::new(&server);
    put(&api, "/users/v1", json!({"whatsapp": "050 123 4567"})).await;
    let b = json!({"customer_id": "v1", "customerName": "Noura", "showTitle": "Gala", "eventDate": "24 Dec"});
    api.trigger("venue-bookings", "booking.confirmed", &b.to_string())
        .await;
    let chat = json!({"customer_id": "v1", "text": "Your table is ready"});
    api.trigger("venue-chat", "reply", &chat.to_string()).await;
    let ds = settled(&api, "v1", 2, 15).await;
    let sent = ds
        .iter()
        .find(|d| d["state"] == "sent")
        .expect("the template was sent");
    assert_eq!(sent["reason"], "to +966501234567");
    let closed = ds
        .iter()
        .find(|d| d["state"] == "failed")
        .expect("the text was refused");
    assert!(
        closed["reason"]
            .as_str()
            .unwrap()
            .starts_with("the 24-hour window is closed"),
        "{closed}"
    );
    let reqs = meta.requests();
    let template: Value = reqs
        .iter()
        .map(|r| serde_json::from_str::<Value>(&r.body).unwrap())
        .find(|b| b["type"] == "template")
        .unwrap();
    assert_eq!(
        template,
        json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": "966501234567",
            "type": "template", "template": {"name": "booking_confirmation", "language": {"code": "en_US"},
            "components": [{"type": "body", "parameters": [
                {"type": "text", "text": "Noura"}, {"type": "text", "text": "Gala"}, {"type": "text", "text": "24 Dec"}]}]}})
    );
}

/// A fake of Twilio's Messages API for WhatsApp: the account's exact path and HTTP Basic auth
/// (account SID and auth token) or Twilio's 401; `whatsapp:` addresses; a template as
/// `ContentSid` with numbered `ContentVariables` and no `Body`, free text as `Body` alone.
fn twilio_whatsapp(req: &crate::mock_http::Request) -> Response {
    let path = format!("/2010-04-01/Accounts/{SID}/Messages.json");
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{TOKEN}"))
    );
    if req.path != path || req.headers.get("authorization") != Some(&auth) {
        return Response::json(
            401,
            json!({"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}),
        );
    }
    if req.method != "POST"
        || req.headers.get("content-type").map(String::as_str)
            != Some("application/x-www-form-urlencoded")
    {
        return Response::json(
            400,
            json!({"code": 20001, "message": "Expected a form POST", "status": 400}),
        );
    }
    let f = form(&req.body);
    if f.get("From").map(String::as_str) != Some("whatsapp:+14155238886") {
        return Response::json(
            400,
            json!({"code": 63007, "message": "Twilio could not find a Channel with the specified From address", "status": 400}),
        );
    }
    if f.get("To").is_none_or(|t| !t.starts_with("whatsapp:+")) {
        return Response::json(
            400,
            json!({"code": 21211, "message": "Invalid 'To' Phone Number", "status": 400}),
        );
    }
    let template = f.contains_key("ContentSid");
    let text = f.contains_key("Body");
    let vars_ok = f
        .get("ContentVariables")
        .is_none_or(|v| serde_json::from_str::<Value>(v).is_ok_and(|v| v.is_object()));
    if template == text || (text && f.contains_key("ContentVariables")) || !vars_ok {
        return Response::json(
            400,
            json!({"code": 21619, "message": "A text message body, media URL or content SID is required", "status": 400}),
        );
    }
    Response::json(
        201,
        json!({"sid": "SM00000000000000000000000000000002", "status": "queued", "to": f["To"], "from": f["From"]}),
    )
}

#[tokio::test]
async fn twilio_whatsapp_uses_whatsapp_addresses_and_content_variables() {
    let twilio = Mock::start(twilio_whatsapp).await;
    let wa = |token: &str| {
        format!(
            "[apps.whatsapp]\nprovider = 'twilio'\ndefault_region = 'KE'\naccount_sid = '{SID}'\nauth_token = '{token}'\nfrom = '+14155238886'\nbase_url = '{}'\n",
            twilio.url("")
        )
    };
    let rules = |token: &str| {
        whatsapp_rules(&wa(token)).replace(
            "name = 'booking_confirmation'",
            "name = 'HXb5b62575e6e4ff6129ad7c8efe1f983e'",
        )
    };
    let server = Setup::default().toml(&rules(TOKEN)).start();
    let api = Api::new(&server);
    put(&api, "/users/k1", json!({"phone": "0712 345 678"})).await;
    let b = json!({"customer_id": "k1", "customerName": "Amina", "showTitle": "Jazz night", "eventDate": "Fri 20:00"});
    api.trigger("venue-bookings", "booking.confirmed", &b.to_string())
        .await;
    // Free text (inside the window) goes as Body alone.
    let chat = json!({"customer_id": "k1", "text": "Your table is ready"});
    api.trigger("venue-chat", "reply", &chat.to_string()).await;
    let ds = settled(&api, "k1", 2, 15).await;
    assert!(
        ds.iter()
            .all(|d| d["state"] == "sent" && d["reason"] == "to +254712345678"),
        "{ds:?}"
    );
    // Exactly what Twilio was sent.
    let reqs = twilio.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{TOKEN}"))
    );
    for r in &reqs {
        assert_eq!(r.path, format!("/2010-04-01/Accounts/{SID}/Messages.json"));
        assert_eq!(r.headers["authorization"], auth);
    }
    let forms: Vec<_> = reqs.iter().map(|r| form(&r.body)).collect();
    let template = forms
        .iter()
        .find(|f| f.contains_key("ContentSid"))
        .expect("a template request");
    let mut keys: Vec<&str> = template.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["ContentSid", "ContentVariables", "From", "To"]);
    assert_eq!(template["From"], "whatsapp:+14155238886");
    assert_eq!(template["To"], "whatsapp:+254712345678");
    assert_eq!(template["ContentSid"], "HXb5b62575e6e4ff6129ad7c8efe1f983e");
    let vars: Value = serde_json::from_str(&template["ContentVariables"]).unwrap();
    assert_eq!(
        vars,
        json!({"1": "Amina", "2": "Jazz night", "3": "Fri 20:00"})
    );
    let text = forms
        .iter()
        .find(|f| f.contains_key("Body"))
        .expect("a free-text request");
    let mut keys: Vec<&str> = text.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["Body", "From", "To"]);
    assert_eq!(text["From"], "whatsapp:+14155238886");
    assert_eq!(text["To"], "whatsapp:+254712345678");
    assert_eq!(text["Body"], "Your table is ready");

    // The wrong auth token: Twilio's 401 (20003), and the delivery fails, not "sent".
    let wrong = Setup::default().toml(&rules("not-the-token")).start();
    let api = Api::new(&wrong);
    put(&api, "/users/k2", json!({"phone": "0712 345 679"})).await;
    let b = json!({"customer_id": "k2", "customerName": "Amina", "showTitle": "Jazz night", "eventDate": "Fri 20:00"});
    api.trigger("venue-bookings", "booking.confirmed", &b.to_string())
        .await;
    let ds = settled(&api, "k2", 1, 15).await;
    let (state, reason) = state_of(&ds, "whatsapp");
    assert_eq!(state, "failed", "{ds:?}");
    assert!(reason.contains("20003"), "{reason}");
    assert_eq!(twilio.requests().len(), 3);
}

fn hub_signature(secret: &str, body: &str) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import hmac,hashlib,sys;print('sha256='+hmac.new(sys.argv[1].encode(),sys.argv[2].encode(),hashlib.sha256).hexdigest())",
            secret,
            body,
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn provider_status_callbacks_are_signature_checked_and_recorded() {
    let twilio = Mock::start(|req| {
        let f = form(&req.body);
        assert_eq!(
            f["StatusCallback"],
            "https://bellhop.example.com/callbacks/100/twilio"
        );
        Response::json(
            201,
            json!({"sid": "SM00000000000000000000000000000003", "status": "queued"}),
        )
    })
    .await;
    let meta = Mock::start(|_| {
        Response::json(
            200,
            json!({"messaging_product": "whatsapp",
            "messages": [{"id": "wamid.STATUS-TEST"}]}),
        )
    })
    .await;
    let toml = format!(
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
status_callback_url = 'https://bellhop.example.com/callbacks/100/twilio'

[apps.whatsapp]
provider = 'meta'
default_region = 'KE'
phone_number_id = '99'
access_token = 'EAAG'
base_url = '{}'
app_secret = 'meta-app-secret'
verify_token = 'verify-me'

[[apps.rules]]
name = 'both'
channel = 'orders'
event = 'ready'
type = 'ORDER_READY'
recipients = [{{ users_field = 'customer_id' }}]

[[apps.rules.deliver]]
channel = 'sms'
body = 'Your order is ready'

[[apps.rules.deliver]]
channel = 'whatsapp'
body = 'Your order is ready'
"#,
        twilio.url(""),
        meta.url("")
    );
    let server = Setup::default().toml(&toml).start();
    let api = Api::new(&server);
    put(&api, "/users/p1", json!({"phone": "0712 345 678"})).await;
    api.trigger("orders", "ready", &json!({"customer_id": "p1"}).to_string())
        .await;
    settled(&api, "p1", 2, 15).await;
    let http = reqwest::Client::new();

    // Twilio: signed for the public URL the app configured, then a forgery.
    let params: Vec<(String, String)> = [
        ("MessageSid", "SM00000000000000000000000000000003"),
        ("MessageStatus", "delivered"),
        ("AccountSid", SID),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let sig = bellhop_protocol::signing::twilio_signature(
        TOKEN,
        "https://bellhop.example.com/callbacks/100/twilio",
        &params,
    );
    let forged = http
        .post(server.http("/callbacks/100/twilio"))
        .header("x-twilio-signature", "AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        .form(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let ok = http
        .post(server.http("/callbacks/100/twilio"))
        .header("x-twilio-signature", sig)
        .form(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    // Meta: the subscription check, then a signed status webhook (and a forged one).
    let challenge = http
        .get(server.http("/callbacks/100/meta?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1158201444"))
        .send()
        .await
        .unwrap();
    assert_eq!(challenge.status(), 200);
    assert_eq!(challenge.text().await.unwrap(), "1158201444");
    let wrong = http
        .get(
            server.http(
                "/callbacks/100/meta?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1",
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
        "value": {"messaging_product": "whatsapp", "statuses": [{"id": "wamid.STATUS-TEST", "status": "failed",
        "timestamp": "1700000000", "recipient_id": "254712345678",
        "errors": [{"code": 131026, "title": "Message undeliverable"}]}]}}]}]})
    .to_string();
    let bad = http
        .post(server.http("/callbacks/100/meta"))
        .header(
            "x-hub-signature-256",
            hub_signature("not-the-secret", &body),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let good = http
        .post(server.http("/callbacks/100/meta"))
        .header(
            "x-hub-signature-256",
            hub_signature("meta-app-secret", &body),
        )
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(good.status(), 200);

    let ds = crate::delivery::deliveries(&api, "p1").await;
    let status = |channel: &str| {
        ds.iter().find(|d| d["channel"] == channel).unwrap()["provider_status"].clone()
    };
    assert_eq!(status("sms"), "delivered");
    assert_eq!(
        status("whatsapp"),
        "failed (error 131026: Message undeliverable)"
    );
}
