//! What providers' clients share across nodes through the store: access tokens (refreshed by
//! one node per expiry) and the Zoho sync log.

use serde::Serialize;
use sqlx::Row;

use super::{now_ms, Store, StoreError};

/// A shared access token and the API domain it is valid for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedToken {
    pub token: String,
    pub api_domain: String,
    pub expires_at: i64,
}

/// One row of the Zoho sync log.
#[derive(Debug, Clone, Serialize)]
pub struct SyncLog {
    pub id: i64,
    pub delivery_id: i64,
    pub reference: Option<String>,
    pub operation: String,
    pub entity: String,
    pub remote_id: Option<String>,
    pub status: String,
    pub error: Option<String>,
    pub created_at: i64,
}

/// A sync record to append.
pub struct NewSyncLog<'a> {
    pub delivery_id: i64,
    pub reference: Option<&'a str>,
    pub operation: &'a str,
    pub entity: &'a str,
    pub remote_id: Option<&'a str>,
    pub status: &'a str,
    pub error: Option<&'a str>,
}

impl Store {
    /// The token valid until at least `valid_until` (Unix ms), if any.
    pub async fn shared_token(
        &self,
        app: &str,
        provider: &str,
        valid_until: i64,
    ) -> Result<Option<SharedToken>, StoreError> {
        let row = sqlx::query(
            "SELECT token, api_domain, expires_at FROM provider_tokens WHERE app_id = $1 \
             AND provider = $2 AND token <> '' AND expires_at > $3",
        )
        .bind(app)
        .bind(provider)
        .bind(valid_until)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(SharedToken {
                token: r.try_get("token")?,
                api_domain: r.try_get("api_domain")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    /// Takes the right to refresh the token until `lease_until`; false when another node
    /// holds it or a token valid until `valid_until` is already there (someone just
    /// refreshed). One conditional update decides, so two nodes never both refresh.
    pub async fn claim_token_refresh(
        &self,
        app: &str,
        provider: &str,
        valid_until: i64,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        sqlx::query(
            "INSERT INTO provider_tokens (app_id, provider) VALUES ($1, $2) \
             ON CONFLICT (app_id, provider) DO NOTHING",
        )
        .bind(app)
        .bind(provider)
        .execute(&self.pool)
        .await?;
        let n = sqlx::query(
            "UPDATE provider_tokens SET refreshing_until = $1 WHERE app_id = $2 AND provider = $3 \
             AND refreshing_until < $4 AND NOT (token <> '' AND expires_at > $5)",
        )
        .bind(lease_until)
        .bind(app)
        .bind(provider)
        .bind(now_ms())
        .bind(valid_until)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Stores a fresh token and ends the refresh lease.
    pub async fn put_shared_token(
        &self,
        app: &str,
        provider: &str,
        token: &SharedToken,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE provider_tokens SET token = $1, api_domain = $2, expires_at = $3, \
             refreshing_until = 0 WHERE app_id = $4 AND provider = $5",
        )
        .bind(&token.token)
        .bind(&token.api_domain)
        .bind(token.expires_at)
        .bind(app)
        .bind(provider)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends a refresh lease that produced no token, so another node may try at once.
    pub async fn release_token_refresh(&self, app: &str, provider: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE provider_tokens SET refreshing_until = 0 WHERE app_id = $1 AND provider = $2",
        )
        .bind(app)
        .bind(provider)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks `token` expired because the provider refused it. Only that token: a newer one
    /// another node already fetched stays.
    pub async fn expire_shared_token(
        &self,
        app: &str,
        provider: &str,
        token: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE provider_tokens SET expires_at = 0 WHERE app_id = $1 AND provider = $2 \
             AND token = $3",
        )
        .bind(app)
        .bind(provider)
        .bind(token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn add_sync_logs(
        &self,
        app: &str,
        logs: &[NewSyncLog<'_>],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        for l in logs {
            sqlx::query(
                "INSERT INTO zoho_sync_logs (app_id, delivery_id, reference, operation, entity, \
                 remote_id, status, error, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(app)
            .bind(l.delivery_id)
            .bind(l.reference)
            .bind(l.operation)
            .bind(l.entity)
            .bind(l.remote_id)
            .bind(l.status)
            .bind(l.error)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// An app's sync log, newest first, optionally for one reference only.
    pub async fn sync_logs(
        &self,
        app: &str,
        reference: Option<&str>,
        limit: i64,
    ) -> Result<Vec<SyncLog>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, delivery_id, reference, operation, entity, remote_id, status, error, \
             created_at FROM zoho_sync_logs WHERE app_id = $1 AND ($2 IS NULL OR reference = $2) \
             ORDER BY id DESC LIMIT $3",
        )
        .bind(app)
        .bind(reference)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SyncLog {
                    id: r.try_get("id")?,
                    delivery_id: r.try_get("delivery_id")?,
                    reference: r.try_get("reference")?,
                    operation: r.try_get("operation")?,
                    entity: r.try_get("entity")?,
                    remote_id: r.try_get("remote_id")?,
                    status: r.try_get("status")?,
                    error: r.try_get("error")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }
}
