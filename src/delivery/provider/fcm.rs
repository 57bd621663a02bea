//! Firebase Cloud Messaging, HTTP v1: a service account's RS256-signed JWT is exchanged at its
//! `token_uri` for an access token (cached until a minute before it expires), then one
//! `messages:send` per device. Every answer is classified: sent, retry (with Retry-After),
//! token gone (the device is deactivated at once), bad payload, or auth.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::Mutex;

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const DEFAULT_BASE: &str = "https://fcm.googleapis.com";
const TIMEOUT: Duration = Duration::from_secs(15);

/// The fields of a Google service-account key file that FCM needs.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceAccount {
    pub project_id: String,
    pub client_email: String,
    pub private_key_id: String,
    pub private_key: bellhop_protocol::Secret,
    pub token_uri: String,
}

/// `[apps.fcm]` in the config file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// Path of the service-account JSON key.
    pub service_account_file: String,
    /// Where `messages:send` goes (tests point it at a local server).
    #[serde(default)]
    pub base_url: Option<String>,
}

impl FcmConfig {
    /// The service account and its signing key, read from the key file.
    fn load(&self) -> Result<(ServiceAccount, jsonwebtoken::EncodingKey), FcmSetupError> {
        let read_err = |reason: String| FcmSetupError::Read {
            path: self.service_account_file.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&self.service_account_file)
            .map_err(|e| read_err(e.to_string()))?;
        let account: ServiceAccount =
            serde_json::from_str(&text).map_err(|e| read_err(e.to_string()))?;
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(account.private_key.expose().as_bytes())
            .map_err(|_| FcmSetupError::Key)?;
        Ok((account, key))
    }

    /// The key file can be read and holds an RSA key (nothing is sent anywhere).
    pub fn validate(&self) -> Result<(), FcmSetupError> {
        self.load().map(drop)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FcmSetupError {
    #[error("cannot read the FCM service account {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the FCM service account's private key is not an RSA PEM key")]
    Key,
}

/// What one send to one device came to.
#[derive(Debug, Clone, PartialEq)]
pub enum SendResult {
    /// Accepted; the message name (`projects/…/messages/…`).
    Sent(String),
    /// The token is no longer valid (unregistered, malformed, another project's).
    TokenGone(String),
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// The message itself is wrong; sending it again will not help.
    Rejected(String),
}

/// One push: what every device of the recipient gets.
#[derive(Debug, Clone, Default)]
pub struct Push {
    pub title: String,
    pub body: String,
    /// FCM data values must be strings.
    pub data: Map<String, Value>,
    pub click_action: Option<String>,
    pub collapse_key: Option<String>,
}

struct Token {
    value: String,
    until: Instant,
}

pub struct Fcm {
    account: ServiceAccount,
    // Debug (below) leaves the key and token out.
    key: jsonwebtoken::EncodingKey,
    base: String,
    http: reqwest::Client,
    token: Mutex<Option<Token>>,
}

impl std::fmt::Debug for Fcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fcm")
            .field("account", &self.account)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// FCM error bodies: `{"error": {"code", "status", "message", "details": [{"errorCode"}]}}`.
fn classify(status: u16, headers: &reqwest::header::HeaderMap, body: &str) -> SendResult {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let err = &v["error"];
    let message = err["message"].as_str().unwrap_or("").to_owned();
    let code = err["details"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|d| d["errorCode"].as_str())
        .or_else(|| err["status"].as_str())
        .unwrap_or("")
        .to_owned();
    let reason = format!("{status} {code}: {message}");
    match (status, code.as_str()) {
        (200, _) => match v["name"].as_str() {
            Some(name) => SendResult::Sent(name.to_owned()),
            None => SendResult::Retry {
                after: None,
                reason: "200 without a message name".into(),
            },
        },
        (_, "UNREGISTERED") | (_, "SENDER_ID_MISMATCH") => SendResult::TokenGone(reason),
        (400, _) if message.to_ascii_lowercase().contains("registration token") => {
            SendResult::TokenGone(reason)
        }
        (429, _) | (_, "QUOTA_EXCEEDED") => SendResult::Retry {
            after: crate::outbound::retry_after(headers),
            reason,
        },
        (401, _) | (403, "THIRD_PARTY_AUTH_ERROR") => SendResult::Retry {
            after: None,
            reason,
        },
        (500..=599, _) => SendResult::Retry {
            after: crate::outbound::retry_after(headers),
            reason,
        },
        _ => SendResult::Rejected(reason),
    }
}

/// The `messages:send` body for one token.
pub fn message(token: &str, push: &Push) -> Value {
    let mut android = Map::new();
    let mut apns_aps = Map::new();
    if let Some(c) = &push.click_action {
        android.insert("notification".into(), json!({ "click_action": c }));
        apns_aps.insert("category".into(), Value::String(c.clone()));
    }
    if let Some(k) = &push.collapse_key {
        android.insert("collapse_key".into(), Value::String(k.clone()));
    }
    let mut msg = json!({
        "token": token,
        "notification": { "title": push.title, "body": push.body },
        "data": push.data,
    });
    if !android.is_empty() {
        msg["android"] = Value::Object(android);
    }
    if !apns_aps.is_empty() {
        msg["apns"] = json!({ "payload": { "aps": apns_aps } });
    }
    json!({ "message": msg })
}

impl Fcm {
    pub fn new(config: &FcmConfig) -> Result<Self, FcmSetupError> {
        let (account, key) = config.load()?;
        Ok(Self {
            base: config
                .base_url
                .clone()
                .unwrap_or_else(|| DEFAULT_BASE.into())
                .trim_end_matches('/')
                .to_owned(),
            account,
            key,
            // unwrap: a client with only a timeout set always builds.
            http: reqwest::Client::builder().timeout(TIMEOUT).build().unwrap(),
            token: Mutex::new(None),
        })
    }

    /// A valid access token, from the cache or the token endpoint.
    async fn access_token(&self) -> Result<String, SendResult> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref().filter(|t| t.until > Instant::now()) {
            return Ok(t.value.clone());
        }
        let now = crate::store::now_ms() as u64 / 1000;
        let claims = Claims {
            iss: &self.account.client_email,
            scope: SCOPE,
            aud: &self.account.token_uri,
            iat: now,
            exp: now + 3600,
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(self.account.private_key_id.clone());
        let jwt = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| SendResult::Rejected(format!("cannot sign the FCM token request: {e}")))?;
        let resp = self
            .http
            .post(&self.account.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", jwt.as_str()),
            ])
            .send()
            .await
            .map_err(|e| SendResult::Retry {
                after: None,
                reason: format!("token endpoint: {e}"),
            })?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let Some(token) = body["access_token"].as_str().filter(|_| status == 200) else {
            let reason = format!(
                "token endpoint answered {status}: {}",
                body["error_description"]
                    .as_str()
                    .or(body["error"].as_str())
                    .unwrap_or("")
            );
            return Err(if status >= 500 || status == 429 {
                SendResult::Retry {
                    after: None,
                    reason,
                }
            } else {
                SendResult::Rejected(reason)
            });
        };
        let ttl = body["expires_in"].as_u64().unwrap_or(3600);
        *cached = Some(Token {
            value: token.to_owned(),
            until: Instant::now() + Duration::from_secs(ttl.saturating_sub(60)),
        });
        Ok(token.to_owned())
    }

    /// Sends `push` to one device token.
    pub async fn send(&self, token: &str, push: &Push) -> SendResult {
        let access = match self.access_token().await {
            Ok(t) => t,
            Err(r) => return r,
        };
        let url = format!(
            "{}/v1/projects/{}/messages:send",
            self.base, self.account.project_id
        );
        let resp = self
            .http
            .post(url)
            .bearer_auth(&access)
            .json(&message(token, push))
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                return SendResult::Retry {
                    after: None,
                    reason: format!("FCM unreachable: {e}"),
                }
            }
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap_or_default();
        if status == 401 {
            // The cached token was refused: the next attempt fetches a new one.
            *self.token.lock().await = None;
        }
        classify(status, &headers, &body)
    }
}

/// A push goes to each of the user's active devices once (`devices::push_to_each`).
impl crate::delivery::provider::Provider for Fcm {
    fn name(&self) -> &'static str {
        "fcm"
    }

    fn send<'a>(
        &'a self,
        m: &'a crate::delivery::provider::Message<'a>,
        services: &'a crate::delivery::provider::Services<'a>,
    ) -> futures_util::future::BoxFuture<
        'a,
        Result<crate::delivery::provider::Outcome, crate::store::StoreError>,
    > {
        use super::devices::{push_to_each, DeviceAnswer};
        Box::pin(async move {
            let push = Push {
                title: m.rendered.title.clone(),
                body: m.rendered.body.clone(),
                data: m.rendered.data.clone(),
                click_action: m.spec.click_action.clone(),
                collapse_key: m.spec.collapse_key.clone(),
            };
            let push = &push;
            push_to_each(m, services, &PHONES, move |d| async move {
                match Fcm::send(self, &d.token, push).await {
                    SendResult::Sent(_) => DeviceAnswer::Sent,
                    SendResult::TokenGone(reason) => DeviceAnswer::Gone(reason),
                    SendResult::Retry { after, reason } => DeviceAnswer::Retry { after, reason },
                    SendResult::Rejected(reason) => DeviceAnswer::Failed(reason),
                }
            })
            .await
        })
    }
}

const PHONES: super::devices::Fleet = super::devices::Fleet {
    serves: |d| d.platform != crate::delivery::records::WEB_PUSH,
    noun: "device",
    none: "no device",
    all_gone: "every device token is gone",
};

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn err(code: u16, status: &str, error_code: Option<&str>, message: &str) -> String {
        let details = match error_code {
            Some(c) => {
                json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": c}])
            }
            None => json!([]),
        };
        json!({"error": {"code": code, "message": message, "status": status, "details": details}})
            .to_string()
    }

    #[test]
    fn real_fcm_answers_are_classified() {
        let none = HeaderMap::new();
        assert_eq!(
            classify(200, &none, r#"{"name": "projects/p/messages/1"}"#),
            SendResult::Sent("projects/p/messages/1".into())
        );
        let gone = err(
            404,
            "NOT_FOUND",
            Some("UNREGISTERED"),
            "Requested entity was not found.",
        );
        assert!(matches!(
            classify(404, &none, &gone),
            SendResult::TokenGone(_)
        ));
        let bad_token = err(
            400,
            "INVALID_ARGUMENT",
            Some("INVALID_ARGUMENT"),
            "The registration token is not a valid FCM registration token",
        );
        assert!(matches!(
            classify(400, &none, &bad_token),
            SendResult::TokenGone(_)
        ));
        let bad_payload = err(
            400,
            "INVALID_ARGUMENT",
            Some("INVALID_ARGUMENT"),
            "Invalid value at 'message.data[0].value'",
        );
        assert!(matches!(
            classify(400, &none, &bad_payload),
            SendResult::Rejected(_)
        ));
        let mut later = HeaderMap::new();
        later.insert("retry-after", HeaderValue::from_static("30"));
        let quota = err(429, "RESOURCE_EXHAUSTED", Some("QUOTA_EXCEEDED"), "quota");
        assert_eq!(
            classify(429, &later, &quota),
            SendResult::Retry {
                after: Some(Duration::from_secs(30)),
                reason: "429 QUOTA_EXCEEDED: quota".into()
            }
        );
        let down = err(503, "UNAVAILABLE", Some("UNAVAILABLE"), "try later");
        assert!(matches!(
            classify(503, &none, &down),
            SendResult::Retry { .. }
        ));
        assert!(matches!(
            classify(401, &none, "{}"),
            SendResult::Retry { .. }
        ));
    }

    #[test]
    fn messages_carry_click_action_for_android_and_apns() {
        let mut data = Map::new();
        data.insert("route".into(), json!("/orders/room-service"));
        let m = message(
            "tok",
            &Push {
                title: "t".into(),
                body: "b".into(),
                data,
                click_action: Some("FLUTTER_NOTIFICATION_CLICK".into()),
                collapse_key: Some("orders".into()),
            },
        );
        assert_eq!(m["message"]["token"], "tok");
        assert_eq!(m["message"]["data"]["route"], "/orders/room-service");
        assert_eq!(
            m["message"]["android"]["notification"]["click_action"],
            "FLUTTER_NOTIFICATION_CLICK"
        );
        assert_eq!(m["message"]["android"]["collapse_key"], "orders");
        assert_eq!(
            m["message"]["apns"]["payload"]["aps"]["category"],
            "FLUTTER_NOTIFICATION_CLICK"
        );
    }
}
