//! The delivery engine's rows: the directory (users, devices), notifications and their
//! deliveries (the audit record, one state per channel), the in-app inbox, and answers kept
//! for `Idempotency-Key` retries. A notification, its deliveries and their jobs are written in
//! one transaction: once it commits, they are accepted and survive a crash.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use crate::jobs::queue::enqueue_in;
use crate::jobs::NewJob;
use crate::store::{now_ms, Store, StoreError};

pub const JOB_KIND: &str = "delivery";
/// How long an unanswered Idempotency-Key claim blocks a retry.
const STALE_CLAIM_MS: i64 = 60_000;
/// Marks a delivery cancelled and frees its idempotency key for a later notification.
const CANCEL: &str = "state = 'cancelled', \
    idempotency_key = idempotency_key || ':cancelled:' || CAST(id AS TEXT)";
/// A delivery job gives up (dead-letters) a week after it was due.
const DELIVERY_EXPIRY_MS: i64 = 7 * 24 * 3600 * 1000;

#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Profile {
    /// Taken from the path when the body leaves it out.
    #[serde(default)]
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whatsapp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default)]
    pub preferences: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<super::preferences::QuietHours>,
}

/// The platform of a Web Push subscription (its token is the push service's endpoint).
pub const WEB_PUSH: &str = "webpush";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Device {
    pub token: String,
    pub user_id: String,
    pub platform: String,
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deactivated_reason: Option<String>,
    /// Web Push: the browser's keys (`{"p256dh", "auth"}`), never shown.
    #[serde(skip)]
    pub push_keys: Option<String>,
}

/// One delivery to accept with its notification.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub channel: String,
    pub idempotency_key: String,
    pub run_at: i64,
    /// What the worker needs to send it (rendered at send time): the rule's channel entry
    /// and extra template variables (`{"deliver": …, "vars": …}`).
    pub spec: Value,
    /// Scheduled deliveries of one rule, key and recipient; a newer notification with the
    /// same key replaces the pending ones (a rescheduled booking re-times its reminders).
    pub schedule_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewNotification {
    pub app_id: String,
    pub user_id: Option<String>,
    pub address: Option<String>,
    pub kind: String,
    pub priority: String,
    pub rule: Option<String>,
    /// Where it came from: `event:<id>` or `api`.
    pub source: String,
    /// The template context.
    pub data: Value,
    pub deliveries: Vec<NewDelivery>,
}

/// A delivery as the worker loads it.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub id: i64,
    pub notification_id: i64,
    pub app_id: String,
    pub channel: String,
    pub state: String,
    pub spec: Value,
    pub provider_id: Option<String>,
    pub user_id: Option<String>,
    pub address: Option<String>,
    pub kind: String,
    pub priority: String,
    pub data: Value,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliveryView {
    pub id: i64,
    pub channel: String,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub idempotency_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<i64>,
    pub run_at: i64,
    pub updated_at: i64,
    /// What the provider reported later (status callbacks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_status: Option<String>,
    pub attempts: Vec<crate::jobs::AttemptRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NotificationView {
    pub id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub priority: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub source: String,
    pub created_at: i64,
    pub deliveries: Vec<DeliveryView>,
}

/// An in-app item to add, for one notification.
pub struct NewInboxItem<'a> {
    pub notification: i64,
    pub delivery: i64,
    pub kind: &'a str,
    pub title: &'a str,
    pub body: &'a str,
    pub data: &'a Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct InboxItem {
    pub id: i64,
    pub notification_id: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub body: String,
    pub data: Value,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_at: Option<i64>,
}

fn opt(r: &sqlx::any::AnyRow, col: &str) -> Result<Option<String>, sqlx::Error> {
    r.try_get::<Option<String>, _>(col)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

impl Store {
    // ----- directory -----

    pub async fn upsert_profile(&self, app: &str, p: &Profile) -> Result<(), StoreError> {
        let now = now_ms();
        let quiet = p
            .quiet_hours
            .as_ref()
            .map(|q| serde_json::to_string(q).unwrap_or_default());
        let prefs = if p.preferences.is_null() {
            "{}".to_owned()
        } else {
            p.preferences.to_string()
        };
        sqlx::query(
            "INSERT INTO directory_users (app_id, user_id, email, phone, whatsapp, locale, time_zone, \
             display_name, preferences, quiet_hours, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) \
             ON CONFLICT (app_id, user_id) DO UPDATE SET email = $3, phone = $4, whatsapp = $5, \
             locale = $6, time_zone = $7, display_name = $8, preferences = $9, quiet_hours = $10, \
             updated_at = $11",
        )
        .bind(app)
        .bind(&p.user_id)
        .bind(p.email.as_deref())
        .bind(p.phone.as_deref())
        .bind(p.whatsapp.as_deref())
        .bind(p.locale.as_deref())
        .bind(p.time_zone.as_deref())
        .bind(p.display_name.as_deref())
        .bind(prefs)
        .bind(quiet)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    fn profile_row(r: &sqlx::any::AnyRow) -> Result<Profile, sqlx::Error> {
        let prefs: String = r.try_get("preferences")?;
        Ok(Profile {
            user_id: r.try_get("user_id")?,
            email: opt(r, "email")?,
            phone: opt(r, "phone")?,
            whatsapp: opt(r, "whatsapp")?,
            locale: opt(r, "locale")?,
            time_zone: opt(r, "time_zone")?,
            display_name: opt(r, "display_name")?,
            preferences: json(&prefs),
            quiet_hours: opt(r, "quiet_hours")?.and_then(|q| serde_json::from_str(&q).ok()),
        })
    }

    pub async fn profile(&self, app: &str, user: &str) -> Result<Option<Profile>, StoreError> {
        let row = sqlx::query("SELECT * FROM directory_users WHERE app_id = $1 AND user_id = $2")
            .bind(app)
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(Self::profile_row).transpose()?)
    }

    pub async fn profiles(
        &self,
        app: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<Profile>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM directory_users WHERE app_id = $1 AND user_id > $2 ORDER BY user_id LIMIT $3",
        )
        .bind(app)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(Self::profile_row)
            .collect::<Result<_, _>>()?)
    }

    /// Deletes the user and their devices; true when the user existed.
    pub async fn delete_profile(&self, app: &str, user: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM devices WHERE app_id = $1 AND user_id = $2")
            .bind(app)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query("DELETE FROM directory_users WHERE app_id = $1 AND user_id = $2")
            .bind(app)
            .bind(user)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Registers a device token for `user`; a token already registered (to anyone) moves to
    /// this user and becomes active again.
    /// A device for the user (a token registered again moves to them). `push_keys`: a Web
    /// Push subscription's browser keys.
    pub async fn register_device(
        &self,
        app: &str,
        user: &str,
        token: &str,
        platform: &str,
        push_keys: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO devices (app_id, token, user_id, platform, active, created_at, updated_at, push_keys) \
             VALUES ($1, $2, $3, $4, 1, $5, $5, $6) ON CONFLICT (app_id, token) DO UPDATE SET \
             user_id = $3, platform = $4, active = 1, deactivated_reason = NULL, updated_at = $5, \
             push_keys = $6",
        )
        .bind(app)
        .bind(token)
        .bind(user)
        .bind(platform)
        .bind(now_ms())
        .bind(push_keys)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn devices(&self, app: &str, user: &str) -> Result<Vec<Device>, StoreError> {
        let rows = sqlx::query(
            "SELECT token, user_id, platform, active, deactivated_reason, push_keys FROM devices \
             WHERE app_id = $1 AND user_id = $2 ORDER BY created_at, token",
        )
        .bind(app)
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Device {
                    token: r.try_get("token")?,
                    user_id: r.try_get("user_id")?,
                    platform: r.try_get("platform")?,
                    active: r.try_get::<i64, _>("active")? != 0,
                    deactivated_reason: opt(r, "deactivated_reason")?,
                    push_keys: opt(r, "push_keys")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    pub async fn delete_device(&self, app: &str, token: &str) -> Result<bool, StoreError> {
        let n = sqlx::query("DELETE FROM devices WHERE app_id = $1 AND token = $2")
            .bind(app)
            .bind(token)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// Stops sending to a token the provider said is gone.
    pub async fn deactivate_device(
        &self,
        app: &str,
        token: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE devices SET active = 0, deactivated_reason = $3, updated_at = $4 \
             WHERE app_id = $1 AND token = $2",
        )
        .bind(app)
        .bind(token)
        .bind(reason)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ----- notifications and deliveries -----

    /// Accepts notifications: each with the deliveries whose idempotency key is new, and one
    /// job per delivery, with `jobs` (business webhooks of the same events, deduplicated by
    /// their keys), in one transaction. A notification whose every delivery was accepted
    /// before is not written again. Returns the new delivery ids.
    pub async fn accept_notifications(
        &self,
        notes: &[NewNotification],
        jobs: &[NewJob],
    ) -> Result<Vec<i64>, StoreError> {
        let now = now_ms();
        let mut accepted = Vec::new();
        let mut tx = self.pool.begin().await?;
        // Every statement here writes, the first one included: on SQLite a transaction that
        // read first could not upgrade to a write once another writer committed.
        let mut any_job = false;
        for job in jobs {
            any_job |= enqueue_in(&mut tx, job).await?.is_some();
        }
        for n in notes {
            let note_id: i64 = sqlx::query(
                "INSERT INTO notifications (app_id, user_id, address, type, priority, rule, source, \
                 data, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
            )
            .bind(&n.app_id)
            .bind(n.user_id.as_deref())
            .bind(n.address.as_deref())
            .bind(&n.kind)
            .bind(&n.priority)
            .bind(n.rule.as_deref())
            .bind(&n.source)
            .bind(n.data.to_string())
            .bind(now)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            let mut any = false;
            for d in &n.deliveries {
                let state = if d.run_at > now {
                    "scheduled"
                } else {
                    "pending"
                };
                // ON CONFLICT covers a concurrent accept of the same key on another node.
                let id: Option<i64> = sqlx::query(
                    "INSERT INTO deliveries (notification_id, app_id, channel, state, idempotency_key, \
                     run_at, created_at, updated_at, spec, schedule_key) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9) \
                     ON CONFLICT (app_id, idempotency_key) DO NOTHING RETURNING id",
                )
                .bind(note_id)
                .bind(&n.app_id)
                .bind(&d.channel)
                .bind(state)
                .bind(&d.idempotency_key)
                .bind(d.run_at)
                .bind(now)
                .bind(d.spec.to_string())
                .bind(d.schedule_key.as_deref())
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
                let Some(id) = id else { continue };
                let job = NewJob {
                    kind: JOB_KIND,
                    app_id: n.app_id.clone(),
                    payload: serde_json::json!({ "delivery_id": id }).to_string(),
                    dedupe_key: Some(format!("delivery:{id}")),
                    run_at: d.run_at,
                    expires_at: d.run_at.saturating_add(DELIVERY_EXPIRY_MS),
                };
                let Some(job_id) = enqueue_in(&mut tx, &job).await? else {
                    // A new delivery's key was never used: its job cannot exist already.
                    return Err(StoreError::Query(sqlx::Error::RowNotFound));
                };
                sqlx::query("UPDATE deliveries SET job_id = $1 WHERE id = $2")
                    .bind(job_id)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                accepted.push(id);
                any = true;
            }
            if !any {
                // Every delivery was accepted before: the notification is not recorded twice.
                sqlx::query("DELETE FROM notifications WHERE id = $1")
                    .bind(note_id)
                    .execute(&mut *tx)
                    .await?;
                continue;
            }
            let keys: BTreeSet<&str> = n
                .deliveries
                .iter()
                .filter_map(|d| d.schedule_key.as_deref())
                .collect();
            for key in keys {
                // The pending deliveries of an earlier notification with this key give way.
                sqlx::query(&format!(
                    "UPDATE deliveries SET {CANCEL}, reason = 'superseded by a later event', \
                     updated_at = $1 WHERE app_id = $2 AND schedule_key = $3 \
                     AND notification_id <> $4 AND state IN ('scheduled', 'pending', 'held')"
                ))
                .bind(now)
                .bind(&n.app_id)
                .bind(key)
                .bind(note_id)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        if !accepted.is_empty() || any_job {
            self.wake_workers().await;
        }
        Ok(accepted)
    }

    /// Cancels the pending deliveries whose schedule key starts with `prefix`; returns how
    /// many. Their idempotency keys are freed, so a later event may schedule them anew.
    pub async fn cancel_scheduled(
        &self,
        app: &str,
        prefix: &str,
        reason: &str,
    ) -> Result<u64, StoreError> {
        let n = sqlx::query(&format!(
            "UPDATE deliveries SET {CANCEL}, reason = $1, updated_at = $2 WHERE app_id = $3 \
             AND substr(schedule_key, 1, length($4)) = $4 \
             AND state IN ('scheduled', 'pending', 'held')"
        ))
        .bind(reason)
        .bind(now_ms())
        .bind(app)
        .bind(prefix)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    /// Records what a provider later reported of the message it acknowledged as
    /// `provider_id`; returns whether a delivery had that id.
    pub async fn record_provider_status(
        &self,
        app: &str,
        provider_id: &str,
        status: &str,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE deliveries SET provider_status = $1, updated_at = $2 WHERE app_id = $3 \
             AND provider_id = $4",
        )
        .bind(status)
        .bind(now_ms())
        .bind(app)
        .bind(provider_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    pub async fn delivery(&self, id: i64) -> Result<Option<DeliveryRow>, StoreError> {
        let row = sqlx::query(
            "SELECT d.id, d.notification_id, d.app_id, d.channel, d.state, d.spec, d.provider_id, \
             d.created_at, n.user_id, n.address, n.type, n.priority, n.data \
             FROM deliveries d JOIN notifications n ON n.id = d.notification_id WHERE d.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let spec: String = r.try_get("spec")?;
        let data: String = r.try_get("data")?;
        Ok(Some(DeliveryRow {
            id: r.try_get("id")?,
            notification_id: r.try_get("notification_id")?,
            app_id: r.try_get("app_id")?,
            channel: r.try_get("channel")?,
            state: r.try_get("state")?,
            spec: json(&spec),
            provider_id: opt(&r, "provider_id")?,
            user_id: opt(&r, "user_id")?,
            address: opt(&r, "address")?,
            kind: r.try_get("type")?,
            priority: r.try_get("priority")?,
            data: json(&data),
            created_at: r.try_get("created_at")?,
        }))
    }

    /// Records what became of a delivery: `sent`, `failed`, `skipped` or `cancelled` with a
    /// reason, or `pending`/`held` while it waits. `provider_id` keeps what the provider
    /// acknowledged, so a retry does not send it again.
    pub async fn set_delivery_state(
        &self,
        id: i64,
        state: &str,
        reason: Option<&str>,
        provider_id: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE deliveries SET state = $1, reason = $2, provider_id = COALESCE($3, provider_id), \
             updated_at = $4 WHERE id = $5 AND state <> 'cancelled'",
        )
        .bind(state)
        .bind(reason)
        .bind(provider_id)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A user's notifications, newest first, each with its deliveries and their attempts.
    pub async fn notifications_of(
        &self,
        app: &str,
        user: &str,
        limit: i64,
    ) -> Result<Vec<NotificationView>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, user_id, address, type, priority, rule, source, created_at FROM notifications \
             WHERE app_id = $1 AND user_id = $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(app)
        .bind(user)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: i64 = r.try_get("id")?;
            out.push(NotificationView {
                id,
                user_id: opt(&r, "user_id")?,
                address: opt(&r, "address")?,
                kind: r.try_get("type")?,
                priority: r.try_get("priority")?,
                rule: opt(&r, "rule")?,
                source: r.try_get("source")?,
                created_at: r.try_get("created_at")?,
                deliveries: self.deliveries_of(id).await?,
            });
        }
        Ok(out)
    }

    pub async fn deliveries_of(&self, notification: i64) -> Result<Vec<DeliveryView>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, channel, state, reason, idempotency_key, job_id, run_at, updated_at, \
             provider_status FROM deliveries WHERE notification_id = $1 ORDER BY id",
        )
        .bind(notification)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let job_id: Option<i64> = r.try_get("job_id")?;
            let attempts = match job_id {
                Some(j) => self.job(j).await?.map(|(_, a)| a).unwrap_or_default(),
                None => Vec::new(),
            };
            out.push(DeliveryView {
                id: r.try_get("id")?,
                channel: r.try_get("channel")?,
                state: r.try_get("state")?,
                reason: opt(&r, "reason")?,
                idempotency_key: r.try_get("idempotency_key")?,
                job_id,
                run_at: r.try_get("run_at")?,
                updated_at: r.try_get("updated_at")?,
                provider_status: opt(&r, "provider_status")?,
                attempts,
            });
        }
        Ok(out)
    }

    // ----- inbox -----

    /// Adds the in-app item of a notification (once: a retried job adds nothing). Returns the
    /// item when it was added now.
    pub async fn add_inbox_item(
        &self,
        app: &str,
        user: &str,
        item: NewInboxItem<'_>,
    ) -> Result<Option<InboxItem>, StoreError> {
        let NewInboxItem {
            notification,
            delivery,
            kind,
            title,
            body,
            data,
        } = item;
        let now = now_ms();
        let id: Option<i64> = sqlx::query(
            "INSERT INTO inbox_items (app_id, user_id, notification_id, delivery_id, type, title, \
             body, data, created_at) VALUES ($1, $2, $3, $9, $4, $5, $6, $7, $8) \
             ON CONFLICT (delivery_id) DO NOTHING RETURNING id",
        )
        .bind(app)
        .bind(user)
        .bind(notification)
        .bind(kind)
        .bind(title)
        .bind(body)
        .bind(data.to_string())
        .bind(now)
        .bind(delivery)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
        Ok(id.map(|id| InboxItem {
            id,
            notification_id: notification,
            kind: kind.to_owned(),
            title: title.to_owned(),
            body: body.to_owned(),
            data: data.clone(),
            created_at: now,
            read_at: None,
        }))
    }

    /// A page of the inbox, newest first: items older than `before` (an item id), optionally
    /// only unread ones.
    pub async fn inbox(
        &self,
        app: &str,
        user: &str,
        before: Option<i64>,
        unread_only: bool,
        limit: i64,
    ) -> Result<Vec<InboxItem>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, notification_id, type, title, body, data, created_at, read_at FROM inbox_items \
             WHERE app_id = $1 AND user_id = $2 AND id < $3 AND ($4 = 0 OR read_at IS NULL) \
             ORDER BY id DESC LIMIT $5",
        )
        .bind(app)
        .bind(user)
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(unread_only))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let data: String = r.try_get("data")?;
                Ok(InboxItem {
                    id: r.try_get("id")?,
                    notification_id: r.try_get("notification_id")?,
                    kind: r.try_get("type")?,
                    title: r.try_get("title")?,
                    body: r.try_get("body")?,
                    data: json(&data),
                    created_at: r.try_get("created_at")?,
                    read_at: r.try_get("read_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    pub async fn unread_count(&self, app: &str, user: &str) -> Result<i64, StoreError> {
        let r = sqlx::query(
            "SELECT COUNT(*) FROM inbox_items WHERE app_id = $1 AND user_id = $2 AND read_at IS NULL",
        )
        .bind(app)
        .bind(user)
        .fetch_one(&self.pool)
        .await?;
        Ok(r.try_get(0)?)
    }

    /// Marks one item (or, with `None`, every item) read; returns how many changed.
    pub async fn mark_read(
        &self,
        app: &str,
        user: &str,
        item: Option<i64>,
    ) -> Result<u64, StoreError> {
        let n = sqlx::query(
            "UPDATE inbox_items SET read_at = $1 WHERE app_id = $2 AND user_id = $3 \
             AND read_at IS NULL AND ($4 = 0 OR id = $4)",
        )
        .bind(now_ms())
        .bind(app)
        .bind(user)
        .bind(item.unwrap_or(0))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    pub async fn delete_inbox_item(
        &self,
        app: &str,
        user: &str,
        item: i64,
    ) -> Result<bool, StoreError> {
        let n =
            sqlx::query("DELETE FROM inbox_items WHERE app_id = $1 AND user_id = $2 AND id = $3")
                .bind(app)
                .bind(user)
                .bind(item)
                .execute(&self.pool)
                .await?
                .rows_affected();
        Ok(n > 0)
    }

    /// Frees the idempotency keys of deliveries and event-webhook jobs older than `age_ms`,
    /// so the same event much later (next week's identical order) is a new one. Within the
    /// window a repeat is a duplicate. Returns how many keys were freed.
    pub async fn expire_keys(&self, age_ms: i64) -> Result<u64, StoreError> {
        let cutoff = now_ms() - age_ms;
        let d = sqlx::query(
            "UPDATE deliveries SET idempotency_key = idempotency_key || ':expired:' || CAST(id AS TEXT) \
             WHERE created_at < $1 AND state IN ('sent', 'skipped', 'failed', 'ambiguous') \
             AND idempotency_key NOT LIKE '%:expired:%' AND idempotency_key NOT LIKE '%:cancelled:%'",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let j = sqlx::query(
            "UPDATE jobs SET dedupe_key = NULL WHERE kind = $1 AND created_at < $2 \
             AND state IN ('done', 'dead') AND dedupe_key IS NOT NULL",
        )
        .bind(super::event_webhooks::KIND)
        .bind(cutoff)
        .execute(&self.pool)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM api_idempotency WHERE created_at < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        Ok(d + j)
    }

    // ----- Idempotency-Key -----

    /// Claims `key` for a request: `Ok(None)` when this request is the first with it (its
    /// answer must then be stored with `finish_idempotent`), else the first answer.
    pub async fn claim_idempotency(
        &self,
        app: &str,
        key: &str,
    ) -> Result<Option<(u16, Value)>, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO api_idempotency (app_id, idem_key, status, response, created_at) \
             VALUES ($1, $2, 0, '', $3) ON CONFLICT (app_id, idem_key) DO NOTHING",
        )
        .bind(app)
        .bind(key)
        .bind(now_ms())
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(None);
        }
        // A claim never finished (its request died) is taken over after a minute; accepting
        // again is safe, as the deliveries' own keys stop a second send.
        let now = now_ms();
        let taken = sqlx::query(
            "UPDATE api_idempotency SET created_at = $1 WHERE app_id = $2 AND idem_key = $3 \
             AND status = 0 AND created_at < $4",
        )
        .bind(now)
        .bind(app)
        .bind(key)
        .bind(now - STALE_CLAIM_MS)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if taken == 1 {
            return Ok(None);
        }
        let r = sqlx::query(
            "SELECT status, response FROM api_idempotency WHERE app_id = $1 AND idem_key = $2",
        )
        .bind(app)
        .bind(key)
        .fetch_one(&self.pool)
        .await?;
        let status: i64 = r.try_get("status")?;
        let body: String = r.try_get("response")?;
        // Status 0: the first request is still being answered.
        Ok(Some((status as u16, json(&body))))
    }

    pub async fn finish_idempotent(
        &self,
        app: &str,
        key: &str,
        status: u16,
        response: &Value,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_idempotency SET status = $1, response = $2 WHERE app_id = $3 AND idem_key = $4",
        )
        .bind(i64::from(status))
        .bind(response.to_string())
        .bind(app)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a claimed key whose request failed before it was accepted, so a retry may run.
    pub async fn release_idempotency(&self, app: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM api_idempotency WHERE app_id = $1 AND idem_key = $2 AND status = 0",
        )
        .bind(app)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
