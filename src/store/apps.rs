//! Apps managed at run time through the admin API. A row holds the id, key, current and
//! previous secret (both verify during a rotation), and the other settings as JSON in the
//! shape of the config file's `[[apps]]` entries; what they mean is the apps module's
//! business, not the store's.

use serde_json::Value;
use sqlx::Row;

use super::{now_ms, Store, StoreError};

/// A stored app's row: its `[[apps]]` entry as JSON (id, key, secret and enabled included),
/// and the previous secret while a rotation is open.
#[derive(Debug, Clone)]
pub struct AppRow {
    pub settings: Value,
    pub previous_secret: Option<String>,
}

impl AppRow {
    pub fn id(&self) -> &str {
        self.settings["id"].as_str().unwrap_or("")
    }
}

impl Store {
    pub async fn stored_apps(&self) -> Result<Vec<AppRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, app_key, secret, previous_secret, enabled, settings FROM apps ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let settings: String = r.try_get("settings")?;
                let mut v: Value = serde_json::from_str(&settings).unwrap_or(Value::Null);
                if !v.is_object() {
                    v = serde_json::json!({});
                }
                v["id"] = Value::String(r.try_get("id")?);
                v["key"] = Value::String(r.try_get("app_key")?);
                v["secret"] = Value::String(r.try_get("secret")?);
                v["enabled"] = Value::Bool(r.try_get::<i64, _>("enabled")? != 0);
                Ok(AppRow {
                    settings: v,
                    previous_secret: r.try_get("previous_secret")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    pub async fn stored_app(&self, id: &str) -> Result<Option<AppRow>, StoreError> {
        Ok(self.stored_apps().await?.into_iter().find(|a| a.id() == id))
    }

    /// Inserts or replaces an app's row (settings, key and secrets).
    pub async fn save_app(&self, app: &AppRow) -> Result<(), StoreError> {
        let now = now_ms();
        let s = &app.settings;
        let text = |k: &str| s[k].as_str().unwrap_or("").to_owned();
        sqlx::query(
            "INSERT INTO apps (id, app_key, secret, previous_secret, enabled, settings, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
             ON CONFLICT (id) DO UPDATE SET app_key = $2, secret = $3, previous_secret = $4, \
             enabled = $5, settings = $6, updated_at = $7",
        )
        .bind(text("id"))
        .bind(text("key"))
        .bind(text("secret"))
        .bind(app.previous_secret.as_deref())
        .bind(i64::from(s["enabled"].as_bool().unwrap_or(true)))
        .bind(s.to_string())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
