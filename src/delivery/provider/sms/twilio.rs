//! Twilio's Messages API, for SMS and (with `whatsapp:` addresses) WhatsApp: a form-encoded
//! POST with Basic auth (the account SID and its auth token); every answer classified.

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::{no_answer, SmsConfig};
use crate::delivery::provider::Outcome;

pub const BASE: &str = "https://api.twilio.com";

/// Twilio error codes that mean this recipient cannot be sent to.
const BAD_RECIPIENT: [i64; 6] = [21211, 21214, 21610, 21612, 21614, 21408];

/// The Messages resource of an account.
pub fn messages_url(base: Option<&str>, account_sid: &str) -> String {
    format!(
        "{}/2010-04-01/Accounts/{account_sid}/Messages.json",
        base.unwrap_or(BASE).trim_end_matches('/')
    )
}

/// Sends one message with `form` (To, From or MessagingServiceSid, Body or ContentSid…).
pub async fn post(
    http: &reqwest::Client,
    base: Option<&str>,
    account_sid: &str,
    auth_token: &str,
    form: &[(&str, &str)],
) -> Outcome {
    let req = http
        .post(messages_url(base, account_sid))
        .basic_auth(account_sid, Some(auth_token))
        .form(form);
    match crate::outbound::exchange(req).await {
        Ok(a) => classify(a.status, &a.headers, &a.body),
        Err(e) => no_answer(e),
    }
}

pub(super) async fn send(http: &reqwest::Client, c: &SmsConfig, to: &str, body: &str) -> Outcome {
    let mut form = vec![("To", to), ("Body", body)];
    match (&c.messaging_service_sid, &c.from) {
        (Some(m), _) => form.push(("MessagingServiceSid", m)),
        (None, Some(f)) => form.push(("From", f)),
        (None, None) => {}
    }
    if let Some(cb) = &c.status_callback_url {
        form.push(("StatusCallback", cb));
    }
    let sid = c.account_sid.as_deref().unwrap_or("");
    let token = c.auth_token.as_ref().map_or("", |t| t.expose());
    post(http, c.base_url.as_deref(), sid, token, &form).await
}

/// A Twilio answer: 2xx with a message sid is sent; error codes that name the recipient are a
/// recipient gone; 429 (or its code 20429) and 5xx retry; anything else is permanent.
pub fn classify(status: u16, headers: &HeaderMap, body: &str) -> Outcome {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        return match v["sid"].as_str() {
            Some(sid) => Outcome::Sent {
                detail: sid.to_owned(),
                provider_id: Some(sid.to_owned()),
            },
            None => Outcome::Ambiguous(format!("{status} without a message sid")),
        };
    }
    let code = error_code(body).unwrap_or(0);
    let reason = format!(
        "{status} Twilio {code}: {}",
        v["message"].as_str().unwrap_or("")
    );
    match (status, code) {
        (_, c) if BAD_RECIPIENT.contains(&c) => Outcome::RecipientGone(reason),
        (429, _) | (_, 20429) | (500..=599, _) => Outcome::Retry {
            after: crate::outbound::retry_after(headers),
            reason,
        },
        _ => Outcome::Permanent(reason),
    }
}

/// Twilio's error code in an error answer.
pub fn error_code(body: &str) -> Option<i64> {
    serde_json::from_str::<Value>(body).ok()?["code"].as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;
    use serde_json::json;

    #[test]
    fn twilio_answers_are_classified() {
        let h = HeaderMap::new();
        let ok = json!({"sid": "SM123", "status": "queued"}).to_string();
        assert_eq!(
            classify(201, &h, &ok),
            Outcome::Sent {
                detail: "SM123".into(),
                provider_id: Some("SM123".into())
            }
        );
        let invalid = json!({"code": 21211, "message": "The 'To' number +1234 is not a valid phone number.", "status": 400}).to_string();
        assert!(matches!(
            classify(400, &h, &invalid),
            Outcome::RecipientGone(_)
        ));
        let stop = json!({"code": 21610, "message": "Attempt to send to unsubscribed recipient", "status": 400}).to_string();
        assert!(matches!(
            classify(400, &h, &stop),
            Outcome::RecipientGone(_)
        ));
        let busy =
            json!({"code": 20429, "message": "Too Many Requests", "status": 429}).to_string();
        assert!(matches!(classify(429, &h, &busy), Outcome::Retry { .. }));
        let auth = json!({"code": 20003, "message": "Authenticate", "status": 401}).to_string();
        assert!(matches!(classify(401, &h, &auth), Outcome::Permanent(_)));
    }
}
