//! Signed HTTP API requests, made the way the official server SDKs make them.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::bail;
use bellhop_protocol::{signing, AppKey, Secret};

use crate::Target;

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    app_id: String,
    key: AppKey,
    secret: Secret,
}

impl Api {
    pub fn new(target: &Target) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .tcp_nodelay(true)
                .build()?,
            base: format!("http://{}", target.api_addr()),
            app_id: target.app_id.clone(),
            key: AppKey::parse(&target.key)?,
            secret: Secret::parse(&target.secret)?,
        })
    }

    /// The full URL (with signed query) for a POST of `body` to `/apps/{id}/{endpoint}`.
    pub fn signed_url(&self, endpoint: &str, body: &[u8]) -> String {
        signed_url(
            &self.base,
            &self.app_id,
            &self.key,
            &self.secret,
            endpoint,
            body,
            now(),
        )
    }

    pub async fn post(&self, endpoint: &str, body: String) -> anyhow::Result<()> {
        self.post_with_key(endpoint, body, "").await
    }

    /// A POST with an `Idempotency-Key` (none when empty).
    pub async fn post_with_key(
        &self,
        endpoint: &str,
        body: String,
        key: &str,
    ) -> anyhow::Result<()> {
        let url = self.signed_url(endpoint, body.as_bytes());
        let mut req = self
            .http
            .post(url)
            .header("content-type", "application/json");
        if !key.is_empty() {
            req = req.header("Idempotency-Key", key);
        }
        let resp = req.body(body).send().await?;
        let status = resp.status();
        if !status.is_success() {
            bail!("{status}: {}", resp.text().await.unwrap_or_default());
        }
        // Drain the body so the connection returns to the pool.
        let _ = resp.bytes().await?;
        Ok(())
    }

    pub async fn trigger(&self, channel: &str, event: &str, data: &str) -> anyhow::Result<()> {
        let body = serde_json::json!({"name": event, "channel": channel, "data": data}).to_string();
        self.post("events", body).await
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Builds a signed API URL; split out so it can be checked against the Pusher docs' example.
pub fn signed_url(
    base: &str,
    app_id: &str,
    key: &AppKey,
    secret: &Secret,
    endpoint: &str,
    body: &[u8],
    timestamp: u64,
) -> String {
    let path = format!("/apps/{app_id}/{endpoint}");
    let query = signing::signed_query(key, secret, "POST", &path, &[], body, timestamp);
    format!("{base}{path}?{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_pusher_docs_example() {
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let url = signed_url(
            "http://h",
            "3",
            &AppKey::parse("278d425bdf160c739803").unwrap(),
            &Secret::parse("7ad3773142a6692b25b8").unwrap(),
            "events",
            body,
            1353088179,
        );
        assert_eq!(
            url,
            "http://h/apps/3/events?auth_key=278d425bdf160c739803&auth_timestamp=1353088179\
             &auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f\
             &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }
}
