//! Signed HTTP API calls, made exactly as the official server SDKs make them.

use std::time::{SystemTime, UNIX_EPOCH};

use bellhop_protocol::{signing, AppKey, Secret};
use serde_json::Value;

use crate::harness::{Server, APP_ID, KEY, SECRET};

pub struct Api<'a> {
    /// `http://host:port` of the server the calls go to.
    base: String,
    _server: std::marker::PhantomData<&'a Server>,
    pub app_id: String,
    pub key: String,
    pub secret: String,
    /// Seconds added to the current time in `auth_timestamp`.
    pub clock_skew: i64,
    http: reqwest::Client,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl<'a> Api<'a> {
    pub fn new(server: &'a Server) -> Self {
        Self::for_app(server, APP_ID, KEY, SECRET)
    }

    pub fn for_app(server: &'a Server, app_id: &str, key: &str, secret: &str) -> Self {
        Self::at(server.addr, app_id, key, secret)
    }

    /// An API client of the given app at `addr`, owning nothing of the server (for tasks
    /// that outlive a borrow).
    pub fn at(addr: std::net::SocketAddr, app_id: &str, key: &str, secret: &str) -> Self {
        Self {
            base: format!("http://{addr}"),
            _server: std::marker::PhantomData,
            app_id: app_id.into(),
            key: key.into(),
            secret: secret.into(),
            clock_skew: 0,
            http: reqwest::Client::new(),
        }
    }

    /// The signed query string for a request.
    pub fn signed_query(
        &self,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
        body: &[u8],
    ) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        signing::signed_query(
            &AppKey::parse(&self.key).unwrap(),
            &Secret::parse(&self.secret).unwrap(),
            method,
            path,
            params,
            body,
            (now + self.clock_skew) as u64,
        )
    }

    pub async fn raw(&self, method: &str, path: &str, query: &str, body: Vec<u8>) -> Reply {
        self.raw_with(method, path, query, body, &[]).await
    }

    pub async fn raw_with(
        &self,
        method: &str,
        path: &str,
        query: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.try_raw_with(method, path, query, body, headers)
            .await
            .unwrap()
    }

    /// A signed POST to `/apps/{id}/{endpoint}`; an error when the server cannot be reached.
    pub async fn try_post(&self, endpoint: &str, body: &Value) -> Result<Reply, reqwest::Error> {
        let path = format!("/apps/{}/{endpoint}", self.app_id);
        let body = body.to_string().into_bytes();
        let q = self.signed_query("POST", &path, &[], &body);
        self.try_raw_with("POST", &path, &q, body, &[]).await
    }

    async fn try_raw_with(
        &self,
        method: &str,
        path: &str,
        query: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, reqwest::Error> {
        let url = format!("{}{path}?{query}", self.base);
        let mut req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            m => self
                .http
                .request(m.parse().unwrap(), url)
                .header("content-type", "application/json")
                .body(body),
        };
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok(Reply {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        })
    }

    pub async fn post(&self, endpoint: &str, body: &Value) -> Reply {
        let path = format!("/apps/{}/{endpoint}", self.app_id);
        let body = body.to_string().into_bytes();
        let q = self.signed_query("POST", &path, &[], &body);
        self.raw("POST", &path, &q, body).await
    }

    /// A signed request of any method to `/apps/{id}{path_after_app}`, with extra headers.
    pub async fn send(
        &self,
        method: &str,
        path_after_app: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let path = format!("/apps/{}{path_after_app}", self.app_id);
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let q = self.signed_query(method, &path, &[], &body);
        self.raw_with(method, &path, &q, body, headers).await
    }

    pub async fn get(&self, path_after_app: &str, params: &[(&str, &str)]) -> Reply {
        let path = format!("/apps/{}{path_after_app}", self.app_id);
        let q = self.signed_query("GET", &path, params, b"");
        self.raw("GET", &path, &q, Vec::new()).await
    }

    /// Polls `GET /channels/{channel}?info=subscription_count` until the count (cluster-wide
    /// when clustered) is `n`; fails after 10 s. How a test knows a subscribe or a leave
    /// has been applied before it sends a sentinel after it.
    pub async fn wait_subscription_count(&self, channel: &str, n: u64) {
        let end = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let r = self
                .get(
                    &format!("/channels/{channel}"),
                    &[("info", "subscription_count")],
                )
                .await;
            if r.status == 200 && r.body["subscription_count"] == n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "{channel} never had {n} subscriptions: {:?}",
                r.body
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub async fn trigger(&self, channel: &str, event: &str, data: &str) -> Reply {
        self.post(
            "events",
            &serde_json::json!({"name": event, "channel": channel, "data": data}),
        )
        .await
    }
}
