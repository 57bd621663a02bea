//! Web Push to the user's browsers: each subscription (a device of platform `webpush`: the
//! push service's endpoint, and the browser's `p256dh` and `auth` keys) gets the message as
//! JSON, encrypted for that browser (RFC 8291, `aes128gcm`) and signed for the push service
//! with the app's VAPID key (RFC 8292). A push service's 404 or 410 means the subscription is
//! gone: it is deactivated at once. Like FCM, the subscriptions reached are kept on the
//! delivery, so a run again after a crash skips them.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bellhop_protocol::Secret;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use web_push_native::jwt_simple::algorithms::{
    ECDSAP256KeyPairLike, ECDSAP256PublicKeyLike, ES256KeyPair,
};
use web_push_native::jwt_simple::claims::Claims;
use web_push_native::{p256, Auth, WebPushBuilder};

use super::devices::{push_to_each, DeviceAnswer as Delivered, Fleet};
use super::{Message, Outcome, Provider, Services};
use crate::delivery::records::{Device, WEB_PUSH};
use crate::store::StoreError;

/// `[apps.web_push]` in the config file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebPushConfig {
    /// The VAPID private key: the P-256 scalar, base64url without padding (what
    /// `web-push generate-vapid-keys` prints as the private key).
    pub vapid_private_key: Secret,
    /// Who runs this sender, for the push service: `mailto:` or `https:`.
    pub subject: String,
    /// How long a push service keeps a message for a browser that is offline.
    #[serde(default = "d_ttl")]
    pub ttl_secs: u64,
    #[serde(default = "d_timeout")]
    pub timeout_secs: u64,
}

fn d_ttl() -> u64 {
    24 * 3600
}

fn d_timeout() -> u64 {
    15
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WebPushSetupError {
    #[error("web_push: vapid_private_key must be a P-256 private key, base64url (32 bytes)")]
    Key,
    #[error("web_push: subject must be a mailto: or https: URL")]
    Subject,
}

impl WebPushConfig {
    fn key_pair(&self) -> Result<ES256KeyPair, WebPushSetupError> {
        let raw = URL_SAFE_NO_PAD
            .decode(self.vapid_private_key.expose().trim().trim_end_matches('='))
            .map_err(|_| WebPushSetupError::Key)?;
        ES256KeyPair::from_bytes(&raw).map_err(|_| WebPushSetupError::Key)
    }

    pub fn validate(&self) -> Result<(), WebPushSetupError> {
        self.key_pair()?;
        if !(self.subject.starts_with("mailto:") || self.subject.starts_with("https:")) {
            return Err(WebPushSetupError::Subject);
        }
        Ok(())
    }
}

/// A browser's subscription keys, as `PushSubscription.toJSON()` gives them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Keys {
    pub p256dh: String,
    pub auth: String,
}

impl Keys {
    /// The browser's public key and auth secret, if they are what a browser makes.
    fn parse(&self) -> Option<(p256::PublicKey, Auth)> {
        let public = URL_SAFE_NO_PAD
            .decode(self.p256dh.trim_end_matches('='))
            .ok()?;
        let auth = URL_SAFE_NO_PAD
            .decode(self.auth.trim_end_matches('='))
            .ok()?;
        if auth.len() != 16 {
            return None;
        }
        let public = p256::PublicKey::from_sec1_bytes(&public).ok()?;
        Some((public, Auth::clone_from_slice(&auth)))
    }

    /// Whether these keys can encrypt a push (checked when a subscription is registered).
    pub fn usable(&self) -> bool {
        self.parse().is_some()
    }
}

pub struct WebPush {
    key: ES256KeyPair,
    /// The VAPID public key, uncompressed point, base64url: browsers subscribe with it.
    public_key: String,
    subject: String,
    ttl: Duration,
    http: reqwest::Client,
}

impl WebPush {
    pub fn new(c: &WebPushConfig) -> Result<Self, WebPushSetupError> {
        c.validate()?;
        let key = c.key_pair()?;
        let public_key =
            URL_SAFE_NO_PAD.encode(key.public_key().public_key().to_bytes_uncompressed());
        Ok(Self {
            key,
            public_key,
            subject: c.subject.clone(),
            ttl: Duration::from_secs(c.ttl_secs),
            http: crate::outbound::client(Duration::from_secs(c.timeout_secs.max(1))),
        })
    }

    /// The key a browser's `pushManager.subscribe` needs as `applicationServerKey`.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// `Authorization: vapid t=…, k=…` for `endpoint`: a JWT for the push service's origin
    /// (port included when it is not the scheme's default, as RFC 6454 serialises origins).
    fn vapid(&self, endpoint: &reqwest::Url) -> Result<String, String> {
        let origin = endpoint.origin().ascii_serialization();
        let claims = Claims::create(self.ttl.min(Duration::from_secs(12 * 3600)).into())
            .with_audience(origin)
            .with_subject(&self.subject);
        let token = self.key.sign(claims).map_err(|e| e.to_string())?;
        Ok(format!("vapid t={token}, k={}", self.public_key))
    }

    /// One push to one subscription.
    async fn push(&self, device: &Device, payload: &[u8]) -> Delivered {
        let keys = device
            .push_keys
            .as_deref()
            .and_then(|k| serde_json::from_str::<Keys>(k).ok())
            .and_then(|k| k.parse());
        let (Some((public, auth)), Ok(endpoint)) = (keys, reqwest::Url::parse(&device.token))
        else {
            return Delivered::Gone("the subscription's keys or endpoint are unusable".into());
        };
        let built = endpoint
            .as_str()
            .parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string())
            .and_then(|uri| {
                WebPushBuilder::new(uri, public, auth)
                    .with_valid_duration(self.ttl)
                    .build(payload.to_vec())
                    .map_err(|e| e.to_string())
            });
        let (request, vapid) = match (built, self.vapid(&endpoint)) {
            (Ok(r), Ok(v)) => (r, v),
            (Err(e), _) | (_, Err(e)) => return Delivered::Failed(e),
        };
        let mut req = self.http.post(endpoint).header("Authorization", vapid);
        for (name, value) in request.headers() {
            req = req.header(name.as_str(), value.as_bytes());
        }
        match crate::outbound::exchange(req.body(request.into_body())).await {
            Ok(a) => classify(a.status, &a.headers, &a.body),
            Err(e) => Delivered::Retry {
                after: None,
                reason: format!("{e:?}"),
            },
        }
    }
}

/// A push service's answer (RFC 8030 §5, §8.3): 201 accepted; 404/410 the subscription is
/// gone; 429 and 5xx retry; 413 (too large), 400/401/403 (a bad VAPID signature) are permanent.
fn classify(status: u16, headers: &reqwest::header::HeaderMap, body: &str) -> Delivered {
    let reason = || format!("{status}: {}", crate::outbound::truncate(body.trim(), 200));
    match status {
        200..=299 => Delivered::Sent,
        404 | 410 => Delivered::Gone(reason()),
        429 | 500..=599 => Delivered::Retry {
            after: crate::outbound::retry_after(headers),
            reason: reason(),
        },
        _ => Delivered::Failed(reason()),
    }
}

/// What the browser's service worker receives (`event.data.json()`).
fn payload(m: &Message<'_>) -> Vec<u8> {
    json!({
        "title": m.rendered.title,
        "body": m.rendered.body,
        "data": Value::Object(m.rendered.data.clone()),
        "type": m.row.kind,
        "notification_id": m.row.notification_id,
    })
    .to_string()
    .into_bytes()
}

impl Provider for WebPush {
    fn name(&self) -> &'static str {
        "web_push"
    }

    fn send<'a>(
        &'a self,
        m: &'a Message<'a>,
        services: &'a Services<'a>,
    ) -> BoxFuture<'a, Result<Outcome, StoreError>> {
        Box::pin(async move {
            let body = payload(m);
            let body = &body;
            push_to_each(m, services, &BROWSERS, move |s| async move {
                self.push(&s, body).await
            })
            .await
        })
    }
}

const BROWSERS: Fleet = Fleet {
    serves: |d| d.platform == WEB_PUSH,
    noun: "browser",
    none: "no web push subscription",
    all_gone: "every subscription is gone",
};

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn config() -> WebPushConfig {
        let key = ES256KeyPair::generate();
        WebPushConfig {
            vapid_private_key: Secret::parse(&URL_SAFE_NO_PAD.encode(key.to_bytes())).unwrap(),
            subject: "mailto:ops@hotel.example".into(),
            ttl_secs: 60,
            timeout_secs: 5,
        }
    }

    #[test]
    fn keys_and_subjects_are_checked() {
        assert!(config().validate().is_ok());
        let mut c = config();
        c.vapid_private_key = Secret::parse("not-a-key").unwrap();
        assert_eq!(c.validate(), Err(WebPushSetupError::Key));
        let mut c = config();
        c.subject = "ops@hotel.example".into();
        assert_eq!(c.validate(), Err(WebPushSetupError::Subject));
        assert!(!Keys {
            p256dh: "AAAA".into(),
            auth: "AAAA".into()
        }
        .usable());
    }

    #[test]
    fn the_vapid_audience_is_the_endpoints_origin_with_its_port() {
        let push = WebPush::new(&config()).unwrap();
        let header = push
            .vapid(&reqwest::Url::parse("http://127.0.0.1:8123/push/abc").unwrap())
            .unwrap();
        let (t, k) = header
            .strip_prefix("vapid t=")
            .and_then(|r| r.split_once(", k="))
            .unwrap();
        assert_eq!(k, push.public_key());
        let claims: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(t.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["aud"], "http://127.0.0.1:8123");
        assert_eq!(claims["sub"], "mailto:ops@hotel.example");
    }

    #[test]
    fn push_service_answers_are_classified() {
        let h = HeaderMap::new();
        assert_eq!(classify(201, &h, ""), Delivered::Sent);
        assert!(matches!(classify(410, &h, "gone"), Delivered::Gone(_)));
        assert!(matches!(classify(404, &h, ""), Delivered::Gone(_)));
        let mut later = HeaderMap::new();
        later.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(
            classify(429, &later, "slow down"),
            Delivered::Retry {
                after: Some(Duration::from_secs(7)),
                reason: "429: slow down".into()
            }
        );
        assert!(matches!(classify(413, &h, ""), Delivered::Failed(_)));
        assert!(matches!(classify(403, &h, "bad jwt"), Delivered::Failed(_)));
    }
}
