//! Africa's Talking's SMS API: a form-encoded POST with the `apiKey` header and the app's
//! username, to the live or the sandbox base URL; it answers 201 with a status per recipient.

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::{no_answer, SmsConfig};
use crate::delivery::provider::Outcome;

const LIVE: &str = "https://api.africastalking.com";
const SANDBOX: &str = "https://api.sandbox.africastalking.com";

pub(super) async fn send(http: &reqwest::Client, c: &SmsConfig, to: &str, body: &str) -> Outcome {
    let default = if c.sandbox { SANDBOX } else { LIVE };
    let base = c
        .base_url
        .as_deref()
        .unwrap_or(default)
        .trim_end_matches('/');
    let mut form = vec![
        ("username", c.username.as_deref().unwrap_or("")),
        ("to", to),
        ("message", body),
    ];
    if let Some(f) = &c.from {
        form.push(("from", f));
    }
    let req = http
        .post(format!("{base}/version1/messaging"))
        .header("apiKey", c.api_key.as_ref().map_or("", |k| k.expose()))
        .header("Accept", "application/json")
        .form(&form);
    match crate::outbound::exchange(req).await {
        Ok(a) => classify(a.status, &a.headers, &a.body),
        Err(e) => no_answer(e),
    }
}

/// An Africa's Talking answer, read from its first recipient's status code.
pub fn classify(status: u16, headers: &HeaderMap, body: &str) -> Outcome {
    if status == 429 || status >= 500 {
        return Outcome::Retry {
            after: crate::outbound::retry_after(headers),
            reason: format!("{status}: {}", crate::outbound::truncate(body, 200)),
        };
    }
    let v: Value = match serde_json::from_str(body) {
        Ok(v) => v,
        // 401 answers plain text ("The supplied authentication is invalid").
        Err(_) => return Outcome::Permanent(format!("{status}: {}", body.trim())),
    };
    let Some(r) = v["SMSMessageData"]["Recipients"].get(0) else {
        let message = v["SMSMessageData"]["Message"].as_str().unwrap_or("");
        // "InvalidPhoneNumber" comes back with no recipient at all.
        return if message.contains("Invalid") {
            Outcome::RecipientGone(format!("{status}: {message}"))
        } else {
            Outcome::Permanent(format!("{status}: {message}"))
        };
    };
    let code = r["statusCode"].as_i64().unwrap_or(0);
    let reason = format!("{code} {}", r["status"].as_str().unwrap_or(""));
    match code {
        100..=102 => {
            let id = r["messageId"].as_str().unwrap_or("").to_owned();
            Outcome::Sent {
                detail: id.clone(),
                provider_id: Some(id),
            }
        }
        403 | 404 | 406 => Outcome::RecipientGone(reason),
        407 | 500..=502 => Outcome::Retry {
            after: None,
            reason,
        },
        _ => Outcome::Permanent(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;
    use serde_json::json;

    #[test]
    fn africas_talking_answers_are_classified() {
        let h = HeaderMap::new();
        let sent = json!({"SMSMessageData": {"Message": "Sent to 1/1 Total Cost: KES 0.8000",
            "Recipients": [{"statusCode": 101, "number": "+254711XXXYYY", "status": "Success",
            "cost": "KES 0.8000", "messageId": "ATPid_SampleTxnId123"}]}})
        .to_string();
        assert_eq!(
            classify(201, &h, &sent),
            Outcome::Sent {
                detail: "ATPid_SampleTxnId123".into(),
                provider_id: Some("ATPid_SampleTxnId123".into())
            }
        );
        let bad = json!({"SMSMessageData": {"Message": "Sent to 0/1", "Recipients": [
            {"statusCode": 403, "number": "+2547", "status": "InvalidPhoneNumber", "cost": "0", "messageId": "None"}]}})
        .to_string();
        assert!(matches!(classify(201, &h, &bad), Outcome::RecipientGone(_)));
        let broke = json!({"SMSMessageData": {"Message": "Sent to 0/1", "Recipients": [
            {"statusCode": 405, "number": "+254711", "status": "InsufficientBalance", "cost": "0", "messageId": "None"}]}})
        .to_string();
        assert!(matches!(classify(201, &h, &broke), Outcome::Permanent(_)));
        assert!(matches!(
            classify(401, &h, "The supplied authentication is invalid"),
            Outcome::Permanent(_)
        ));
        assert!(matches!(classify(503, &h, ""), Outcome::Retry { .. }));
    }
}
