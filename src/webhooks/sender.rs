//! Sends one webhook batch: POSTs the stored body with `X-Pusher-Key` and
//! `X-Pusher-Signature` (HMAC-SHA256 of the body with the app's current secret), and
//! classifies the answer: 2xx done; 408, 429, 5xx, timeouts and network errors retried
//! (honouring `Retry-After`); other 4xx permanent.

use std::sync::Arc;
use std::time::Duration;

use bellhop_protocol::signing;
use futures_util::future::BoxFuture;
use serde::Deserialize;

use crate::apps::AppDirectory;
use crate::jobs::retry::Schedule;
use crate::jobs::{Attempt, Claimed, Handler, Verdict};

pub const KIND: &str = "webhook";

pub struct WebhookSender {
    apps: Arc<AppDirectory>,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Payload {
    url: String,
    body: String,
}

impl WebhookSender {
    pub fn new(apps: Arc<AppDirectory>, timeout: Duration) -> Self {
        Self {
            apps,
            http: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                // unwrap: a client with these options always builds (rustls, no system config).
                .unwrap(),
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
        let Some(app) = self.apps.by_id(&job.app_id) else {
            return permanent(format!("app {} no longer exists", job.app_id));
        };
        // The operator may have removed the target since the batch was made: then it is not
        // sent (and never signed) again.
        let Some(headers) = app
            .webhooks
            .iter()
            .find(|t| t.url == p.url)
            .map(|t| t.headers.clone())
        else {
            return permanent(format!("target {} is no longer configured", p.url));
        };
        let signature = signing::sign_webhook(app.signing_secret(), p.body.as_bytes());
        let mut req = self
            .http
            .post(&p.url)
            .header("Content-Type", "application/json")
            .header("X-Pusher-Key", app.key.as_str())
            .header("X-Pusher-Signature", signature)
            .body(p.body);
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        send_classified(req).await
    }
}

/// Sends a webhook and classifies the answer: 2xx done; 408, 429, 5xx, timeouts and network
/// errors retried (honouring `Retry-After`); other 4xx permanent.
pub(crate) async fn send_classified(req: reqwest::RequestBuilder) -> Attempt {
    match req.send().await {
        Err(e) => Attempt {
            verdict: Verdict::Retry { retry_after: None },
            http_status: None,
            detail: if e.is_timeout() {
                "timed out".into()
            } else {
                format!("request failed: {}", without_url(&e))
            },
        },
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(3600)));
            let text = read_prefix(resp, 512).await;
            let detail = format!("HTTP {status}: {}", truncate(&text, 200));
            let verdict = match status {
                200..=299 => Verdict::Done,
                408 | 429 | 500..=599 => Verdict::Retry { retry_after },
                _ => Verdict::Permanent,
            };
            Attempt {
                verdict,
                http_status: Some(status),
                detail,
            }
        }
    }
}

fn without_url(e: &reqwest::Error) -> String {
    // The URL may carry credentials in its query; the kind of failure is what matters.
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "<target>");
    }
    s
}

/// At most `limit` bytes of a response body: a receiver cannot make us buffer megabytes.
async fn read_prefix(mut resp: reqwest::Response, limit: usize) -> String {
    let mut buf = Vec::new();
    while buf.len() < limit {
        match resp.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk[..chunk.len().min(limit - buf.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
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
