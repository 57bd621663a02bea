//! WhatsApp through Twilio's Messages API: `whatsapp:` addresses, a content template
//! (`ContentSid` + `ContentVariables` numbered from 1) or a body.

use std::collections::BTreeMap;

use serde_json::json;

use super::{window_closed, Content, WhatsappConfig};
use crate::delivery::provider::sms::twilio as api;
use crate::delivery::provider::Outcome;

/// Twilio's code for free-form text outside the customer window.
const WINDOW_CLOSED: i64 = 63016;

/// The form for `to` (E.164).
pub fn form(c: &WhatsappConfig, to: &str, content: &Content<'_>) -> Vec<(&'static str, String)> {
    let mut form = vec![
        ("To", format!("whatsapp:{to}")),
        (
            "From",
            format!("whatsapp:{}", c.from.as_deref().unwrap_or("")),
        ),
    ];
    match content {
        Content::Template { name, params, .. } => {
            let vars: BTreeMap<String, &String> = params
                .iter()
                .enumerate()
                .map(|(i, p)| ((i + 1).to_string(), p))
                .collect();
            form.push(("ContentSid", (*name).to_owned()));
            form.push(("ContentVariables", json!(vars).to_string()));
        }
        Content::Text(text) => form.push(("Body", (*text).to_owned())),
    }
    if let Some(cb) = &c.status_callback_url {
        form.push(("StatusCallback", cb.clone()));
    }
    form
}

pub(super) async fn send(
    http: &reqwest::Client,
    c: &WhatsappConfig,
    to: &str,
    content: &Content<'_>,
) -> Outcome {
    let form = form(c, to, content);
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let sid = c.account_sid.as_deref().unwrap_or("");
    let token = c.auth_token.as_ref().map_or("", |t| t.expose());
    match api::post(http, c.base_url.as_deref(), sid, token, &form).await {
        Outcome::Permanent(reason) if reason.contains(&format!("Twilio {WINDOW_CLOSED}:")) => {
            window_closed(&reason)
        }
        other => other,
    }
}
