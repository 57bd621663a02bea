//! The Meta (WhatsApp Cloud) API: `/{version}/{phone_number_id}/messages` with a Bearer token,
//! a template with a language and body parameters, or text; every answer classified.

use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use super::{window_closed, Content, WhatsappConfig};
use crate::delivery::provider::sms::no_answer;
use crate::delivery::provider::Outcome;

const BASE: &str = "https://graph.facebook.com";

/// The request body for `to` (E.164; Meta takes it without the `+`).
pub fn body(to: &str, content: &Content<'_>) -> Value {
    let to = to.trim_start_matches('+');
    match content {
        Content::Template {
            name,
            language,
            params,
        } => {
            let parameters: Vec<Value> = params
                .iter()
                .map(|p| json!({"type": "text", "text": p}))
                .collect();
            let mut template = json!({"name": name, "language": {"code": language}});
            if !parameters.is_empty() {
                template["components"] = json!([{"type": "body", "parameters": parameters}]);
            }
            json!({"messaging_product": "whatsapp", "recipient_type": "individual",
                "to": to, "type": "template", "template": template})
        }
        Content::Text(text) => json!({"messaging_product": "whatsapp",
            "recipient_type": "individual", "to": to,
            "type": "text", "text": {"preview_url": false, "body": text}}),
    }
}

pub(super) async fn send(
    http: &reqwest::Client,
    c: &WhatsappConfig,
    to: &str,
    content: &Content<'_>,
) -> Outcome {
    let base = c.base_url.as_deref().unwrap_or(BASE).trim_end_matches('/');
    let url = format!(
        "{base}/{}/{}/messages",
        c.api_version,
        c.phone_number_id.as_deref().unwrap_or("")
    );
    let req = http
        .post(url)
        .bearer_auth(c.access_token.as_ref().map_or("", |t| t.expose()))
        .json(&body(to, content));
    match crate::outbound::exchange(req).await {
        Ok(a) => classify(a.status, &a.headers, &a.body),
        Err(e) => no_answer(e),
    }
}

/// A Meta answer: 131047 is the closed customer window, 131026/131021 a recipient who cannot
/// get WhatsApp, rate codes and 429/5xx retry, the rest is permanent.
pub fn classify(status: u16, headers: &HeaderMap, body: &str) -> Outcome {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        return match v["messages"][0]["id"].as_str() {
            Some(id) => Outcome::Sent {
                detail: id.to_owned(),
                provider_id: Some(id.to_owned()),
            },
            None => Outcome::Ambiguous(format!("{status} without a message id")),
        };
    }
    let err = &v["error"];
    let code = err["code"].as_i64().unwrap_or(0);
    let details = err["error_data"]["details"]
        .as_str()
        .or(err["message"].as_str())
        .unwrap_or("");
    let reason = format!("{status} Meta {code}: {details}");
    let after = crate::outbound::retry_after(headers);
    match code {
        131047 => window_closed(&reason),
        131026 | 131021 => Outcome::RecipientGone(reason),
        130429 | 131056 | 80007 | 4 => Outcome::Retry { after, reason },
        _ if status == 429 || status >= 500 => Outcome::Retry { after, reason },
        _ => Outcome::Permanent(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;
    use serde_json::json;

    fn meta_error(code: i64, details: &str) -> String {
        json!({"error": {"message": "(#131047) Re-engagement message", "type": "OAuthException",
            "code": code, "error_data": {"messaging_product": "whatsapp", "details": details},
            "fbtrace_id": "A1b2C3"}})
        .to_string()
    }

    #[test]
    fn meta_answers_are_classified() {
        let h = HeaderMap::new();
        let ok = json!({"messaging_product": "whatsapp", "contacts": [{"input": "254712345678", "wa_id": "254712345678"}],
            "messages": [{"id": "wamid.HBgLMjU0NzEyMzQ1Njc4FQIAERgSQjY="}]}).to_string();
        assert_eq!(
            classify(200, &h, &ok),
            Outcome::Sent {
                detail: "wamid.HBgLMjU0NzEyMzQ1Njc4FQIAERgSQjY=".into(),
                provider_id: Some("wamid.HBgLMjU0NzEyMzQ1Njc4FQIAERgSQjY=".into())
            }
        );
        let closed = meta_error(131047, "Message failed to send because more than 24 hours have passed since the customer last replied to this number.");
        assert!(matches!(
            classify(400, &h, &closed),
            Outcome::Permanent(r) if r.starts_with("the 24-hour window is closed")
        ));
        let not_on_wa = meta_error(131026, "Message Undeliverable.");
        assert!(matches!(
            classify(400, &h, &not_on_wa),
            Outcome::RecipientGone(_)
        ));
        let slow = meta_error(130429, "Rate limit hit");
        assert!(matches!(classify(400, &h, &slow), Outcome::Retry { .. }));
        let no_template = meta_error(132001, "template name does not exist in the translation");
        assert!(matches!(
            classify(404, &h, &no_template),
            Outcome::Permanent(r) if !r.starts_with("the 24-hour")
        ));
        let token = meta_error(190, "Error validating access token");
        assert!(matches!(
            classify(401, &h, &token),
            Outcome::Permanent(r) if !r.starts_with("the 24-hour")
        ));
        assert!(matches!(classify(503, &h, "{}"), Outcome::Retry { .. }));
    }
}
