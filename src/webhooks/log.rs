//! The webhook log in the store: each observed event is a row from the moment it is
//! observed (group-committed with whatever else was observed meanwhile), and due rows become
//! jobs in the same transaction that deletes them. A leave waiting out its cancel window is
//! a row with a pair key that the cancelling join deletes. On a node without a cluster,
//! `webhook_held` keeps what the receivers were told is occupied, so that a crash is
//! followed by the matching `channel_vacated` / `member_removed`.

use sqlx::Row;

use crate::jobs::queue::enqueue_in;
use crate::jobs::NewJob;
use crate::store::{now_ms, Dialect, Store, StoreError};

/// One observation as the log records it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub app_id: String,
    pub kind: &'static str,
    /// The event's JSON, as it goes into a batch's `events`.
    pub body: String,
    pub due_at: i64,
    /// Some target wants this kind: recorded to be sent (a join nobody wants still cancels).
    pub wanted: bool,
    /// Single node: the channel or member this opens or closes, paired within the cancel
    /// window and kept in `webhook_held`. None when clustered (the ledger pairs) or unpaired.
    pub pair: Option<Pair>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub channel: String,
    /// "" for the channel itself.
    pub user_id: String,
    pub opens: bool,
}

impl Pair {
    fn key(&self) -> String {
        format!("{}\n{}", self.channel, self.user_id)
    }
}

/// A due event taken from the log.
#[derive(Debug, Clone)]
pub struct DueEvent {
    pub id: i64,
    pub app_id: String,
    pub kind: String,
    pub body: String,
}

impl Store {
    /// Records `entries` in order, in one transaction: once this returns, they survive a
    /// crash. A join that finds its pending leave deletes it and is not recorded.
    pub async fn record_webhooks(&self, entries: &[LogEntry]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for e in entries {
            let Some(pair) = &e.pair else {
                if e.wanted {
                    insert_event(&mut tx, e, None).await?;
                }
                continue;
            };
            let pending =
                sqlx::query("DELETE FROM webhook_events WHERE app_id = $1 AND pair_key = $2")
                    .bind(&e.app_id)
                    .bind(pair.key())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            if pair.opens {
                sqlx::query(
                    "INSERT INTO webhook_held (app_id, channel, user_id) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(&e.app_id)
                .bind(&pair.channel)
                .bind(&pair.user_id)
                .execute(&mut *tx)
                .await?;
                if pending == 0 && e.wanted {
                    insert_event(&mut tx, e, None).await?;
                }
            } else {
                sqlx::query(
                    "DELETE FROM webhook_held WHERE app_id = $1 AND channel = $2 AND user_id = $3",
                )
                .bind(&e.app_id)
                .bind(&pair.channel)
                .bind(&pair.user_id)
                .execute(&mut *tx)
                .await?;
                insert_event(&mut tx, e, Some(pair.key())).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Takes up to `limit` due events out of the log and turns them into jobs with
    /// `jobs_for`, in one transaction (a concurrent flusher on Postgres skips these rows).
    /// Returns how many events were taken.
    pub async fn flush_webhooks(
        &self,
        limit: i64,
        jobs_for: impl FnOnce(Vec<DueEvent>) -> Vec<NewJob>,
    ) -> Result<usize, StoreError> {
        let lock = match self.dialect {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let take = format!(
            "DELETE FROM webhook_events WHERE id IN (SELECT id FROM webhook_events \
             WHERE due_at <= $1 ORDER BY id LIMIT $2{lock}) RETURNING id, app_id, kind, body"
        );
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(&take)
            .bind(now_ms())
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        let mut due = rows
            .iter()
            .map(|r| {
                Ok(DueEvent {
                    id: r.try_get("id")?,
                    app_id: r.try_get("app_id")?,
                    kind: r.try_get("kind")?,
                    body: r.try_get("body")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        if due.is_empty() {
            return Ok(0);
        }
        due.sort_by_key(|d| d.id);
        let taken = due.len();
        let jobs = jobs_for(due);
        for job in &jobs {
            enqueue_in(&mut tx, job).await?;
        }
        tx.commit().await?;
        if !jobs.is_empty() {
            self.wake_workers().await;
        }
        Ok(taken)
    }

    /// What a node without a cluster had told the receivers was open: (app, channel, user).
    pub async fn held_webhook_state(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = sqlx::query("SELECT app_id, channel, user_id FROM webhook_held")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Webhook events waiting in the log (for metrics and tests).
    pub async fn webhook_backlog(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM webhook_events")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }
}

async fn insert_event(
    conn: &mut sqlx::AnyConnection,
    e: &LogEntry,
    pair_key: Option<String>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO webhook_events (app_id, kind, body, pair_key, due_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&e.app_id)
    .bind(e.kind)
    .bind(&e.body)
    .bind(pair_key)
    .bind(e.due_at)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sqlite() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}/w.db", dir.path().display()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        (store, dir)
    }

    async fn postgres() -> Store {
        let url = std::env::var("BELLHOP_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("bellhop_unit_{:x}", rand::random::<u64>());
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .expect("Postgres is reachable (set BELLHOP_TEST_POSTGRES_URL)");
        sqlx::Executor::execute(&mut conn, format!("CREATE SCHEMA {schema}").as_str())
            .await
            .unwrap();
        let store = Store::connect(&format!("{url}?options=-c%20search_path%3D{schema}"))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store
    }

    fn entry(kind: &'static str, channel: &str, opens: Option<bool>, due_in: i64) -> LogEntry {
        LogEntry {
            app_id: "1".into(),
            kind,
            body: format!(r#"{{"name":"{kind}","channel":"{channel}"}}"#),
            due_at: now_ms() + due_in,
            wanted: true,
            pair: opens.map(|opens| Pair {
                channel: channel.into(),
                user_id: String::new(),
                opens,
            }),
        }
    }

    async fn flushed(store: &Store) -> Vec<String> {
        let mut out = Vec::new();
        store
            .flush_webhooks(100, |due| {
                out = due.into_iter().map(|d| d.body).collect();
                Vec::new()
            })
            .await
            .unwrap();
        out
    }

    async fn pairs_cancel_and_the_held_state_follows(store: &Store) {
        store
            .record_webhooks(&[
                entry("channel_occupied", "a", Some(true), 0),
                entry("channel_occupied", "b", Some(true), 0),
                entry("client_event", "b", None, 0),
            ])
            .await
            .unwrap();
        // A leave waits out the window; the join that follows within it takes it back.
        store
            .record_webhooks(&[
                entry("channel_vacated", "a", Some(false), 60_000),
                entry("channel_occupied", "a", Some(true), 0),
                entry("channel_vacated", "b", Some(false), 60_000),
            ])
            .await
            .unwrap();
        let sent = flushed(store).await;
        assert_eq!(sent.len(), 3, "{sent:?}");
        assert!(sent[0].contains("\"a\"") && sent[2].contains("client_event"));
        assert_eq!(store.webhook_backlog().await.unwrap(), 1, "b's leave waits");
        let held = store.held_webhook_state().await.unwrap();
        assert_eq!(held, vec![("1".into(), "a".into(), String::new())]);
        assert!(flushed(store).await.is_empty(), "taken once");
    }

    #[tokio::test]
    async fn sqlite_pairs_cancel_and_the_held_state_follows() {
        let (store, _dir) = sqlite().await;
        pairs_cancel_and_the_held_state_follows(&store).await;
    }

    #[tokio::test]
    async fn postgres_pairs_cancel_and_the_held_state_follows() {
        pairs_cancel_and_the_held_state_follows(&postgres().await).await;
    }

    #[tokio::test]
    async fn due_events_become_jobs_in_the_same_transaction() {
        let store = postgres().await;
        store
            .record_webhooks(&[entry("channel_occupied", "a", None, 0)])
            .await
            .unwrap();
        let job = |due: Vec<DueEvent>| {
            due.into_iter()
                .map(|d| NewJob {
                    kind: "webhook",
                    app_id: d.app_id,
                    payload: d.body,
                    dedupe_key: None,
                    run_at: now_ms(),
                    expires_at: now_ms() + 60_000,
                })
                .collect()
        };
        assert_eq!(store.flush_webhooks(100, job).await.unwrap(), 1);
        let jobs = store.jobs(None, 10).await.unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(store.webhook_backlog().await.unwrap(), 0);
    }
}
