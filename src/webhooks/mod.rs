//! Pusher webhooks: channel and member facts from the channel actors and the cluster ledger
//! (and client events from connections) are written to the store's webhook log as they are
//! observed, held back where Pusher holds them back, batched per app into durable jobs; the
//! sender signs each body with the app secret exactly as Pusher does.

mod batcher;
mod event;
mod log;
pub mod post;
pub(crate) mod sender;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use batcher::{WebhookBatcher, WEBHOOK_EXPIRY};
pub use event::{Observed, WebhookEvent};
pub use sender::{Signing, Targets, WebhookSender};

pub const KINDS: [&str; 7] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
];

/// Where an app's webhooks go and which kinds it wants.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTarget {
    pub url: String,
    /// Kinds to send; empty means all.
    #[serde(default, alias = "event_types")]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("webhook url {0:?} must be an http:// or https:// URL")]
    Url(String),
    #[error("unknown webhook event type {0:?}; known: channel_occupied, channel_vacated, member_added, member_removed, client_event, cache_miss, subscription_count")]
    Kind(String),
    #[error("webhook header {0:?} is not a valid HTTP header")]
    Header(String),
}

impl WebhookTarget {
    pub fn validate(&self) -> Result<(), TargetError> {
        let url = reqwest::Url::parse(&self.url).map_err(|_| TargetError::Url(self.url.clone()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(TargetError::Url(self.url.clone()));
        }
        if let Some(k) = self
            .event_types
            .iter()
            .find(|k| !KINDS.contains(&k.as_str()))
        {
            return Err(TargetError::Kind(k.clone()));
        }
        for (name, value) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(value).is_err()
            {
                return Err(TargetError::Header(name.clone()));
            }
        }
        Ok(())
    }

    pub fn wants(&self, kind: &str) -> bool {
        self.event_types.is_empty() || self.event_types.iter().any(|k| k == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str, kinds: &[&str]) -> WebhookTarget {
        WebhookTarget {
            url: url.into(),
            event_types: kinds.iter().map(|s| s.to_string()).collect(),
            headers: BTreeMap::new(),
        }
    }

    #[test]
    fn validates_urls_and_kinds() {
        assert!(target("http://127.0.0.1:9876/webhook", &["member_added"])
            .validate()
            .is_ok());
        assert!(target("ftp://x/y", &[]).validate().is_err());
        assert!(target("not a url", &[]).validate().is_err());
        assert!(target("http://x/", &["channel_ocupied"])
            .validate()
            .is_err());
        let mut t = target("https://x/", &[]);
        t.headers.insert("bad header".into(), "v".into());
        assert!(t.validate().is_err());
    }

    #[test]
    fn empty_filter_means_everything() {
        assert!(target("http://x/", &[]).wants("client_event"));
        assert!(!target("http://x/", &["member_added"]).wants("client_event"));
    }
}
