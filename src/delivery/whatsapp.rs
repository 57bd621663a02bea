//! WhatsApp through the Meta Cloud API (`/{version}/{phone_number_id}/messages` with a Bearer
//! token: template messages with a language and body parameters, or free-form text, which
//! Meta takes only inside the 24-hour customer window) or Twilio (the Messages API with
//! `whatsapp:` addresses, a content template `ContentSid` + `ContentVariables`, or a body).
//! Every answer is classified; "the window is closed" is its own outcome, so a rule can see
//! that a template was needed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::sms::{base_url, classify_twilio, exchange, provider_client, SmsResult};

const META: &str = "https://graph.facebook.com";
const TWILIO: &str = "https://api.twilio.com";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Meta,
    Twilio,
}

/// `[apps.whatsapp]` in the config file.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WhatsappConfig {
    pub provider: Provider,
    #[serde(default)]
    pub default_region: Option<String>,
    /// Meta: the business phone number's id and a system-user access token.
    #[serde(default)]
    pub phone_number_id: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default = "d_version")]
    pub api_version: String,
    /// Twilio: account SID, auth token and the WhatsApp sender (`+14155238886`).
    #[serde(default)]
    pub account_sid: Option<String>,
    #[serde(default)]
    pub auth_token: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default = "d_timeout")]
    pub timeout_secs: u64,
    /// Meta: the app secret that signs status webhooks (`X-Hub-Signature-256`) and the token
    /// its subscription check must echo.
    #[serde(default)]
    pub app_secret: Option<String>,
    #[serde(default)]
    pub verify_token: Option<String>,
    /// Twilio: the public URL of `/callbacks/{app_id}/twilio` for status reports.
    #[serde(default)]
    pub status_callback_url: Option<String>,
    /// Messages per second for this app, across the cluster (the account's or sender's
    /// throughput); none = as fast as the provider answers.
    #[serde(default)]
    pub max_per_second: Option<u32>,
}

fn d_version() -> String {
    "v21.0".into()
}

fn d_timeout() -> u64 {
    15
}

impl std::fmt::Debug for WhatsappConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhatsappConfig")
            .field("provider", &self.provider)
            .field("phone_number_id", &self.phone_number_id)
            .field("account_sid", &self.account_sid)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WhatsappSetupError {
    #[error("whatsapp ({provider}): {missing} is required")]
    Missing {
        provider: &'static str,
        missing: &'static str,
    },
}

/// A rule's `whatsapp_template = { name, language, params = [...] }`: `params` are
/// templates rendered in order into the body's `{{1}}`, `{{2}}`… (Meta) or the content
/// variables `"1"`, `"2"`… (Twilio, where `name` is the `HX…` content SID).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    pub name: String,
    #[serde(default = "d_language")]
    pub language: String,
    #[serde(default)]
    pub params: Vec<String>,
}

fn d_language() -> String {
    "en_US".into()
}

/// What to send: a template with rendered parameters, or free-form text.
pub enum Message<'a> {
    Template {
        name: &'a str,
        language: &'a str,
        params: Vec<String>,
    },
    Text(&'a str),
}

#[derive(Debug, Clone, PartialEq)]
pub enum WhatsappResult {
    Sent(String),
    /// Free-form text outside the 24-hour customer window: only a template can reach them.
    WindowClosed(String),
    BadRecipient(String),
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    Rejected(String),
    Ambiguous(String),
}

impl From<SmsResult> for WhatsappResult {
    fn from(r: SmsResult) -> Self {
        match r {
            SmsResult::Sent(id) => Self::Sent(id),
            SmsResult::BadRecipient(r) => Self::BadRecipient(r),
            SmsResult::Retry { after, reason } => Self::Retry { after, reason },
            SmsResult::Rejected(r) => Self::Rejected(r),
            SmsResult::Ambiguous(r) => Self::Ambiguous(r),
        }
    }
}

pub fn classify_meta(
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) -> WhatsappResult {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        return match v["messages"][0]["id"].as_str() {
            Some(id) => WhatsappResult::Sent(id.to_owned()),
            None => WhatsappResult::Ambiguous(format!("{status} without a message id")),
        };
    }
    let err = &v["error"];
    let code = err["code"].as_i64().unwrap_or(0);
    let details = err["error_data"]["details"]
        .as_str()
        .or(err["message"].as_str())
        .unwrap_or("");
    let reason = format!("{status} Meta {code}: {details}");
    let after = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|h| h.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)));
    match code {
        131047 => WhatsappResult::WindowClosed(reason),
        131026 | 131021 => WhatsappResult::BadRecipient(reason),
        130429 | 131056 | 80007 | 4 => WhatsappResult::Retry { after, reason },
        _ if status == 429 || status >= 500 => WhatsappResult::Retry { after, reason },
        _ => WhatsappResult::Rejected(reason),
    }
}

pub struct Whatsapp {
    config: WhatsappConfig,
    http: reqwest::Client,
}

impl std::fmt::Debug for Whatsapp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Whatsapp")
            .field("config", &self.config)
            .finish()
    }
}

impl WhatsappConfig {
    pub fn validate(&self) -> Result<(), WhatsappSetupError> {
        let need = |v: &Option<String>, provider, missing| match v {
            Some(s) if !s.is_empty() => Ok(()),
            _ => Err(WhatsappSetupError::Missing { provider, missing }),
        };
        match self.provider {
            Provider::Meta => {
                need(&self.phone_number_id, "meta", "phone_number_id")?;
                need(&self.access_token, "meta", "access_token")
            }
            Provider::Twilio => {
                need(&self.account_sid, "twilio", "account_sid")?;
                need(&self.auth_token, "twilio", "auth_token")?;
                need(&self.from, "twilio", "from")
            }
        }
    }
}

impl Whatsapp {
    pub fn new(config: &WhatsappConfig) -> Result<Self, WhatsappSetupError> {
        config.validate()?;
        Ok(Self {
            config: config.clone(),
            http: provider_client(config.timeout_secs),
        })
    }

    pub fn default_region(&self) -> Option<&str> {
        self.config.default_region.as_deref()
    }

    pub fn max_per_second(&self) -> Option<u32> {
        self.config.max_per_second
    }

    fn base(&self, default: &str) -> String {
        base_url(self.config.base_url.as_deref(), default)
    }

    /// Sends to `to` (E.164).
    pub async fn send(&self, to: &str, message: Message<'_>) -> WhatsappResult {
        let c = &self.config;
        let req = match c.provider {
            Provider::Meta => {
                let url = format!(
                    "{}/{}/{}/messages",
                    self.base(META),
                    c.api_version,
                    c.phone_number_id.as_deref().unwrap_or("")
                );
                let body = match &message {
                    Message::Template {
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
                            template["components"] =
                                json!([{"type": "body", "parameters": parameters}]);
                        }
                        json!({"messaging_product": "whatsapp", "recipient_type": "individual",
                            "to": to.trim_start_matches('+'), "type": "template", "template": template})
                    }
                    Message::Text(text) => json!({"messaging_product": "whatsapp",
                        "recipient_type": "individual", "to": to.trim_start_matches('+'),
                        "type": "text", "text": {"preview_url": false, "body": text}}),
                };
                self.http
                    .post(url)
                    .bearer_auth(c.access_token.as_deref().unwrap_or(""))
                    .json(&body)
            }
            Provider::Twilio => {
                let sid = c.account_sid.as_deref().unwrap_or("");
                let url = format!(
                    "{}/2010-04-01/Accounts/{sid}/Messages.json",
                    self.base(TWILIO)
                );
                let from = format!("whatsapp:{}", c.from.as_deref().unwrap_or(""));
                let to = format!("whatsapp:{to}");
                let mut form: Vec<(&str, String)> = vec![("To", to), ("From", from)];
                match &message {
                    Message::Template { name, params, .. } => {
                        let vars: BTreeMap<String, &String> = params
                            .iter()
                            .enumerate()
                            .map(|(i, p)| ((i + 1).to_string(), p))
                            .collect();
                        form.push(("ContentSid", (*name).to_owned()));
                        form.push(("ContentVariables", json!(vars).to_string()));
                    }
                    Message::Text(text) => form.push(("Body", (*text).to_owned())),
                }
                if let Some(cb) = &c.status_callback_url {
                    form.push(("StatusCallback", cb.clone()));
                }
                self.http
                    .post(url)
                    .basic_auth(sid, c.auth_token.as_deref())
                    .form(&form)
            }
        };
        let (status, headers, text) = match exchange(req).await {
            Ok(answer) => answer,
            Err(failed) => return failed.into(),
        };
        match c.provider {
            Provider::Meta => classify_meta(status, &headers, &text),
            Provider::Twilio => {
                // 63016: outside the 24-hour window, a template is needed.
                let code = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["code"].as_i64());
                if code == Some(63016) {
                    return WhatsappResult::WindowClosed(format!("{status} Twilio 63016: {text}"));
                }
                classify_twilio(status, &headers, &text).into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;

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
            classify_meta(200, &h, &ok),
            WhatsappResult::Sent("wamid.HBgLMjU0NzEyMzQ1Njc4FQIAERgSQjY=".into())
        );
        let closed = meta_error(131047, "Message failed to send because more than 24 hours have passed since the customer last replied to this number.");
        assert!(matches!(
            classify_meta(400, &h, &closed),
            WhatsappResult::WindowClosed(_)
        ));
        let not_on_wa = meta_error(131026, "Message Undeliverable.");
        assert!(matches!(
            classify_meta(400, &h, &not_on_wa),
            WhatsappResult::BadRecipient(_)
        ));
        let slow = meta_error(130429, "Rate limit hit");
        assert!(matches!(
            classify_meta(400, &h, &slow),
            WhatsappResult::Retry { .. }
        ));
        let no_template = meta_error(132001, "template name does not exist in the translation");
        assert!(matches!(
            classify_meta(404, &h, &no_template),
            WhatsappResult::Rejected(_)
        ));
        let token = meta_error(190, "Error validating access token");
        assert!(matches!(
            classify_meta(401, &h, &token),
            WhatsappResult::Rejected(_)
        ));
        assert!(matches!(
            classify_meta(503, &h, "{}"),
            WhatsappResult::Retry { .. }
        ));
    }
}
