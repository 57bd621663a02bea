//! Apps managed at run time through the admin API. A row holds the id, key, current and
//! previous secret (both verify during a rotation), and the other settings as JSON in the
//! shape of the config file's `[[apps]]` entries.

use serde_json::Value;
use sqlx::Row;

use super::{now_ms, Store, StoreError};
use crate::apps::App;
use crate::config::AppConfig;

/// A stored app as the server runs it.
pub struct StoredApp {
    pub config: AppConfig,
    pub previous_secret: Option<String>,
}

impl StoredApp {
    /// The runtime app: settings validated, both secrets valid while a rotation is open.
    pub fn to_app(&self) -> Result<App, crate::apps::AppError> {
        let mut app = App::from_config(&self.config)?;
        if let Some(prev) = &self.previous_secret {
            app.secrets.push(bellhop_protocol::Secret::parse(prev)?);
        }
        Ok(app)
    }
}

impl Store {
    pub async fn stored_apps(&self) -> Result<Vec<StoredApp>, StoreError> {
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
                v["enabled"] = Value::Bool(r.try_get::<i64, _>("enabled")? != 0);
                let mut config: AppConfig =
                    serde_json::from_value(v).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                config.secret = r.try_get("secret")?;
                Ok(StoredApp {
                    config,
                    previous_secret: r.try_get("previous_secret")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    pub async fn stored_app(&self, id: &str) -> Result<Option<StoredApp>, StoreError> {
        Ok(self
            .stored_apps()
            .await?
            .into_iter()
            .find(|a| a.config.id == id))
    }

    /// Inserts or replaces an app's row (settings, key and secrets).
    pub async fn save_app(&self, app: &StoredApp) -> Result<(), StoreError> {
        let now = now_ms();
        let settings = serde_json::to_string(&app.config).unwrap_or_else(|_| "{}".into());
        sqlx::query(
            "INSERT INTO apps (id, app_key, secret, previous_secret, enabled, settings, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
             ON CONFLICT (id) DO UPDATE SET app_key = $2, secret = $3, previous_secret = $4, \
             enabled = $5, settings = $6, updated_at = $7",
        )
        .bind(&app.config.id)
        .bind(&app.config.key)
        .bind(&app.config.secret)
        .bind(app.previous_secret.as_deref())
        .bind(i64::from(app.config.enabled))
        .bind(settings)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
