//! Outbound webhooks for business events (the seeds' event bus: `booking.created`,
//! `booking.cancelled`, …): per-app subscriptions with event filters. A triggered event that a
//! subscription wants becomes a durable job, accepted before the trigger is answered, and is
//! POSTed signed with Standard Webhooks headers (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`), retried with back-off on 408, 429, 5xx and network errors.

use bellhop_protocol::signing::standard_webhook_key;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::jobs::NewJob;
use crate::store::now_ms;

mod sender;

pub use sender::EventWebhookSender;

pub const KIND: &str = "event_webhook";
const EXPIRY_MS: i64 = 24 * 3600 * 1000;

/// `[[apps.event_webhooks]]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    pub url: String,
    /// Event names, `*` matching any run of characters (`booking.*`); empty = all.
    #[serde(default)]
    pub events: Vec<String>,
    /// `whsec_` + base64, as Standard Webhooks libraries expect. Kept in the store with the
    /// app; Debug and the admin API's answers leave it out.
    pub secret: bellhop_protocol::Secret,
}

#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    #[error("event webhook url {0:?} must be an http:// or https:// URL")]
    Url(String),
    #[error("event webhook {0:?}: secret must be whsec_ followed by base64")]
    Secret(String),
}

impl Subscription {
    pub fn validate(&self) -> Result<(), SubscriptionError> {
        let ok = reqwest::Url::parse(&self.url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !ok {
            return Err(SubscriptionError::Url(self.url.clone()));
        }
        if standard_webhook_key(self.secret.expose()).is_none() {
            return Err(SubscriptionError::Secret(self.url.clone()));
        }
        Ok(())
    }

    pub fn wants(&self, event: &str) -> bool {
        self.events.is_empty()
            || self.events.iter().any(|p| {
                let parts: Vec<&str> = p.split('*').collect();
                glob(&parts, event)
            })
    }
}

/// `*`-glob match without building a regex per event.
fn glob(parts: &[&str], s: &str) -> bool {
    match parts {
        [] => s.is_empty(),
        [only] => s == *only,
        [first, rest @ ..] => {
            let Some(mut s) = s.strip_prefix(first) else {
                return false;
            };
            let (last, middle) = rest.split_last().unwrap_or((&"", &[]));
            for m in middle {
                match s.find(m) {
                    Some(i) => s = &s[i + m.len()..],
                    None => return false,
                }
            }
            s.ends_with(last)
        }
    }
}

/// A job's payload: where it goes, its stable id, its body.
#[derive(Serialize, Deserialize)]
struct Payload {
    url: String,
    id: String,
    body: String,
}

/// The jobs for one event: one per subscription that wants it. `event_id` makes a repeated
/// event a duplicate.
pub fn jobs_for(
    app_id: &str,
    subs: &[Subscription],
    event_id: &str,
    name: &str,
    channel: &str,
    data: &Value,
) -> Vec<NewJob> {
    let now = now_ms();
    let ts = chrono::DateTime::from_timestamp_millis(now)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    subs.iter()
        .enumerate()
        .filter(|(_, s)| s.wants(name))
        .map(|(i, s)| {
            let id = format!("msg_{event_id}{i}");
            let body = json!({"type": name, "timestamp": ts, "channel": channel, "data": data});
            NewJob {
                kind: KIND,
                app_id: app_id.to_owned(),
                payload: serde_json::to_string(&Payload {
                    url: s.url.clone(),
                    id: id.clone(),
                    body: body.to_string(),
                })
                .unwrap_or_default(),
                dedupe_key: Some(format!("{KIND}:{app_id}:{id}")),
                run_at: now,
                expires_at: now + EXPIRY_MS,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(events: &[&str]) -> Subscription {
        Subscription {
            url: "http://127.0.0.1:9/hook".into(),
            events: events.iter().map(|s| s.to_string()).collect(),
            secret: bellhop_protocol::Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap(),
        }
    }

    #[test]
    fn filters_glob_event_names() {
        assert!(sub(&[]).wants("anything"));
        assert!(sub(&["booking.*"]).wants("booking.created"));
        assert!(!sub(&["booking.*"]).wants("order.created"));
        assert!(sub(&["*.cancelled"]).wants("booking.cancelled"));
        assert!(sub(&["booking.*.v*"]).wants("booking.x.v2"));
        assert!(!sub(&["booking.created"]).wants("booking.created2"));
    }

    #[test]
    fn subscriptions_are_validated() {
        assert!(sub(&[]).validate().is_ok());
        let mut s = sub(&[]);
        s.secret = bellhop_protocol::Secret::parse("plain").unwrap();
        assert!(s.validate().is_err());
        s = sub(&[]);
        s.url = "ftp://x".into();
        assert!(s.validate().is_err());
    }

    #[test]
    fn one_job_per_interested_subscription_with_a_stable_id() {
        let subs = [sub(&["booking.*"]), sub(&["order.*"])];
        let jobs = jobs_for(
            "1",
            &subs,
            "abc",
            "booking.created",
            "bookings",
            &json!({"id": 1}),
        );
        assert_eq!(jobs.len(), 1);
        let p: Payload = serde_json::from_str(&jobs[0].payload).unwrap();
        assert_eq!(p.id, "msg_abc0");
        let body: Value = serde_json::from_str(&p.body).unwrap();
        assert_eq!(body["type"], "booking.created");
        assert_eq!(body["data"]["id"], 1);
        assert_eq!(
            jobs[0].dedupe_key.as_deref(),
            Some("event_webhook:1:msg_abc0")
        );
    }
}
