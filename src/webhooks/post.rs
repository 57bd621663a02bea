//! The one way a signed webhook leaves bellhop, Pusher's (`X-Pusher-Signature`) and business
//! events' (Standard Webhooks) alike: a JSON POST with the signature headers its caller made,
//! and the answer classified — 2xx done; 408, 429, 5xx, timeouts and network errors retried
//! (honouring `Retry-After`); other 4xx permanent. The body is never logged.

use crate::jobs::{Attempt, Verdict};
use crate::outbound::{read_prefix, retry_after, truncate, without_url};

/// POSTs `body` to `url` with `headers` and classifies the answer.
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    body: String,
    headers: Vec<(String, String)>,
) -> Attempt {
    let mut req = http
        .post(url)
        .header("Content-Type", "application/json")
        .body(body);
    for (k, v) in &headers {
        req = req.header(k.as_str(), v.as_str());
    }
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
            let after = retry_after(resp.headers());
            let text = read_prefix(resp, 512).await;
            let verdict = match status {
                200..=299 => Verdict::Done,
                408 | 429 | 500..=599 => Verdict::Retry { retry_after: after },
                _ => Verdict::Permanent,
            };
            Attempt {
                verdict,
                http_status: Some(status),
                detail: format!("HTTP {status}: {}", truncate(&text, 200)),
            }
        }
    }
}
