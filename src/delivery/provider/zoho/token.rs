//! The access token, shared by every node through the store. A node with a valid token in
//! memory uses it; otherwise it reads the store's; when that is missing or about to expire,
//! the one node whose conditional update takes the refresh lease asks Zoho, and the others
//! wait for its answer. So each expiry costs one refresh however many nodes and workers need
//! a token at that moment.

use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;

use super::{Failure, ZohoConfig, ACCOUNTS};
use crate::store::provider_state::SharedToken;
use crate::store::{now_ms, Store};

const PROVIDER: &str = "zoho";
/// A token this close to its expiry is not used: a call must not outlive it.
const MARGIN_MS: i64 = 60_000;
/// How long one node may take to refresh before another may try.
const LEASE_MS: i64 = 15_000;
/// How long a caller waits for another node's refresh.
const WAIT: Duration = Duration::from_secs(20);

pub(super) struct TokenCache {
    app: String,
    refresh_token: bellhop_protocol::Secret,
    client_id: String,
    client_secret: bellhop_protocol::Secret,
    token_url: String,
    local: Mutex<Option<SharedToken>>,
}

impl TokenCache {
    pub(super) fn new(app: &str, c: &ZohoConfig) -> Self {
        Self {
            app: app.to_owned(),
            refresh_token: c.refresh_token.clone(),
            client_id: c.client_id.clone(),
            client_secret: c.client_secret.clone(),
            token_url: format!(
                "{}/oauth/v2/token",
                c.accounts_url
                    .as_deref()
                    .unwrap_or(ACCOUNTS)
                    .trim_end_matches('/')
                    .to_owned()
            ),
            local: Mutex::new(None),
        }
    }

    pub(super) async fn get(
        &self,
        http: &reqwest::Client,
        store: &Store,
    ) -> Result<SharedToken, Failure> {
        if let Some(t) = self
            .local
            .lock()
            .clone()
            .filter(|t| t.expires_at > now_ms() + MARGIN_MS)
        {
            return Ok(t);
        }
        let store_err = |e: crate::store::StoreError| Failure::retry(format!("store: {e}"));
        let give_up = tokio::time::Instant::now() + WAIT;
        loop {
            let valid_until = now_ms() + MARGIN_MS;
            if let Some(t) = store
                .shared_token(&self.app, PROVIDER, valid_until)
                .await
                .map_err(store_err)?
            {
                *self.local.lock() = Some(t.clone());
                return Ok(t);
            }
            if store
                .claim_token_refresh(&self.app, PROVIDER, valid_until, now_ms() + LEASE_MS)
                .await
                .map_err(store_err)?
            {
                let fetched = self.fetch(http).await;
                let stored = match &fetched {
                    Ok(t) => store.put_shared_token(&self.app, PROVIDER, t).await,
                    Err(_) => store.release_token_refresh(&self.app, PROVIDER).await,
                };
                let t = fetched?;
                stored.map_err(store_err)?;
                tracing::info!(app_id = %self.app, "Zoho access token refreshed");
                crate::metrics::METRICS
                    .provider_token_refreshes
                    .with_label_values(&[PROVIDER])
                    .inc();
                *self.local.lock() = Some(t.clone());
                return Ok(t);
            }
            if tokio::time::Instant::now() > give_up {
                return Err(Failure::retry(
                    "another node's Zoho token refresh did not finish in time",
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Zoho refused `token`: forget it here and for every node (unless a newer one is there).
    pub(super) async fn refused(&self, store: &Store, token: &str) {
        {
            let mut local = self.local.lock();
            if local.as_ref().is_some_and(|t| t.token == token) {
                *local = None;
            }
        }
        if let Err(e) = store.expire_shared_token(&self.app, PROVIDER, token).await {
            tracing::warn!(app_id = %self.app, error = %e, "cannot mark the Zoho token expired");
        }
    }

    async fn fetch(&self, http: &reqwest::Client) -> Result<SharedToken, Failure> {
        let resp = http
            .post(&self.token_url)
            .form(&[
                ("refresh_token", self.refresh_token.expose()),
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.expose()),
                ("grant_type", "refresh_token"),
            ])
            .send()
            .await
            .map_err(|_| Failure::retry("Zoho accounts unreachable"))?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        match (body["access_token"].as_str(), body["api_domain"].as_str()) {
            (Some(token), Some(domain)) => {
                let ttl = body["expires_in"].as_i64().unwrap_or(3600).max(0);
                Ok(SharedToken {
                    token: token.to_owned(),
                    api_domain: domain.trim_end_matches('/').to_owned(),
                    expires_at: now_ms() + ttl * 1000,
                })
            }
            _ if status == 429 || status >= 500 => {
                Err(Failure::retry(format!("{status} from Zoho accounts")))
            }
            // Accounts answers 200 with {"error": "invalid_code"} for a revoked refresh token;
            // too many refreshes in a short time are refused as "Access Denied".
            _ => {
                let error = body["error"].as_str().unwrap_or("no access_token");
                if body["error_description"]
                    .as_str()
                    .is_some_and(|d| d.contains("too many requests"))
                {
                    return Err(Failure::Retry {
                        after: Some(Duration::from_secs(60)),
                        reason: format!("Zoho accounts: {error}"),
                    });
                }
                Err(Failure::Rejected(format!(
                    "Zoho refused the refresh token: {error}"
                )))
            }
        }
    }
}
