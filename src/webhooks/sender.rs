//! Sends one webhook batch: POSTs the stored body with `X-Pusher-Key` and
//! `X-Pusher-Signature` (HMAC-SHA256 of the body with the app's current secret), and
//! classifies the answer: 2xx done; 408, 429, 5xx, timeouts and network errors retried
//! (honouring `Retry-After`); other 4xx permanent.

use std::sync::Arc;
use std::time::Duration;

use bellhop_protocol::signing;
use futures_util::future::BoxFuture;
use serde::Deserialize;

use crate::jobs::retry::Schedule;
use crate::jobs::{Attempt, Claimed, Handler, Verdict};

/// What signing a batch for a target needs, looked up when it is sent: the secret may have
/// been rotated, the target removed, since the batch was made.
pub struct Signing {
    pub key: String,
    pub secret: bellhop_protocol::Secret,
    pub headers: std::collections::BTreeMap<String, String>,
}

/// Where webhooks find an app's targets (the app directory answers).
pub trait Targets: Send + Sync {
    /// The app's targets now (none for an unknown app).
    fn targets(&self, app_id: &str) -> Vec<super::WebhookTarget>;

    /// The signing of `url` for `app_id`, or why there is none any more (permanent).
    fn signing(&self, app_id: &str, url: &str) -> Result<Signing, String>;
}

pub const KIND: &str = "webhook";

pub struct WebhookSender {
    targets: Arc<dyn Targets>,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Payload {
    url: String,
    body: String,
}

impl WebhookSender {
    pub fn new(targets: Arc<dyn Targets>, timeout: Duration) -> Self {
        Self {
            targets,
            http: crate::outbound::client(timeout),
        }
    }

    async fn send(&self, job: &Claimed) -> Attempt {
        let permanent = |detail: String| Attempt {
            verdict: Verdict::Permanent,
            http_status: None,
            detail,
        };
        let Ok(p) = serde_json::from_str::<Payload>(&job.payload) else {
            return permanent("malformed webhook job payload".into());
        };
        let signing = match self.targets.signing(&job.app_id, &p.url) {
            Ok(s) => s,
            Err(reason) => return permanent(reason),
        };
        let signature = signing::sign_webhook(&signing.secret, p.body.as_bytes());
        let mut headers = vec![
            ("X-Pusher-Key".to_owned(), signing.key),
            ("X-Pusher-Signature".to_owned(), signature),
        ];
        headers.extend(signing.headers);
        super::post::post(&self.http, &p.url, p.body, headers).await
    }
}

impl Handler for WebhookSender {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn schedule(&self) -> Schedule {
        Schedule::WEBHOOK
    }

    fn run<'a>(&'a self, job: &'a Claimed) -> BoxFuture<'a, Attempt> {
        Box::pin(self.send(job))
    }
}
