//! Job rows: enqueue, claim under a lease, finish (only while the lease token holds), and
//! the operator's views (list, show with attempts, retry, drop).

use std::time::Duration;

use serde::Serialize;
use sqlx::Row;

use crate::store::{now_ms, Dialect, Store, StoreError};

/// A job to accept.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: &'static str,
    pub app_id: String,
    /// JSON text, opaque to the queue.
    pub payload: String,
    /// A job with the same key is accepted once; later ones are dropped as duplicates.
    pub dedupe_key: Option<String>,
    pub run_at: i64,
    pub expires_at: i64,
}

/// A job this worker holds a lease on.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub kind: String,
    pub app_id: String,
    pub payload: String,
    /// Including this one.
    pub attempt: u32,
    pub expires_at: i64,
    pub token: String,
}

/// What a handler concluded from one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Done,
    /// Worth trying again, not before `retry_after` if the other side said so.
    Retry {
        retry_after: Option<Duration>,
    },
    /// Will never succeed as it is.
    Permanent,
}

impl Verdict {
    /// The outcome as recorded in the attempts table and the metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Done => "ok",
            Self::Retry { .. } => "retry",
            Self::Permanent => "failed",
        }
    }
}

/// One attempt's record: outcome plus what the other side said (redacted, short).
#[derive(Debug, Clone)]
pub struct Attempt {
    pub verdict: Verdict,
    pub http_status: Option<u16>,
    pub detail: String,
}

/// Where the job goes after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    RetryAt(i64),
    Dead,
}

impl Outcome {
    fn state(&self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::RetryAt(_) => "pending",
            Self::Dead => "dead",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub app_id: String,
    pub state: String,
    pub attempts: i64,
    pub run_at: i64,
    pub expires_at: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub payload: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptRow {
    pub attempt: i64,
    pub node: String,
    pub started_at: i64,
    pub duration_ms: i64,
    pub outcome: String,
    pub http_status: Option<i64>,
    pub detail: Option<String>,
}

/// The one writer of job rows: accepts `job` on `conn`, which may be inside the caller's
/// transaction (the job is then accepted when that commits; call [`Store::wake_workers`]
/// after). `None` when a job with the same dedupe key exists.
pub async fn enqueue_in(
    conn: &mut sqlx::AnyConnection,
    job: &NewJob,
) -> Result<Option<i64>, StoreError> {
    let now = now_ms();
    let insert = "INSERT INTO jobs (kind, app_id, payload, dedupe_key, state, attempts, run_at, \
         expires_at, created_at, updated_at) VALUES ($1, $2, $3, $4, 'pending', 0, $5, $6, $7, $7) \
         ON CONFLICT (dedupe_key) DO NOTHING RETURNING id";
    let row = sqlx::query(insert)
        .bind(job.kind)
        .bind(&job.app_id)
        .bind(&job.payload)
        .bind(job.dedupe_key.as_deref())
        .bind(job.run_at)
        .bind(job.expires_at)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|r| r.try_get::<i64, _>(0)).transpose()?)
}

const JOB_COLUMNS: &str =
    "id, kind, app_id, state, attempts, run_at, expires_at, last_error, created_at, payload";

fn job_row(r: &sqlx::any::AnyRow) -> Result<JobRow, sqlx::Error> {
    let payload: String = r.try_get("payload")?;
    Ok(JobRow {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        app_id: r.try_get("app_id")?,
        state: r.try_get("state")?,
        attempts: r.try_get("attempts")?,
        run_at: r.try_get("run_at")?,
        expires_at: r.try_get("expires_at")?,
        last_error: r.try_get("last_error")?,
        created_at: r.try_get("created_at")?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
    })
}

impl Store {
    /// Accepts a job: once this returns `Ok`, the job survives a crash. Returns `None` when
    /// a job with the same dedupe key was accepted before.
    pub async fn enqueue(&self, job: &NewJob) -> Result<Option<i64>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let id = enqueue_in(&mut conn, job).await?;
        if id.is_some() {
            self.wake_workers().await;
        }
        Ok(id)
    }

    /// Tells this node's workers (and, on Postgres, every node's) that jobs were committed.
    /// Callers that enqueue inside their own transaction call it after the commit.
    pub async fn wake_workers(&self) {
        self.enqueued.notify_one();
        if self.dialect == Dialect::Postgres && self.notify_due() {
            // Other nodes' workers wake on this; a missed one is caught by polling.
            let _ = sqlx::query("SELECT pg_notify('bellhop_jobs', '')")
                .execute(&self.pool)
                .await;
        }
    }

    /// At most one NOTIFY per node every 10 ms: under load a wake-up per enqueue is a query
    /// per trigger for nothing (the workers are busy anyway), while a lone job still wakes
    /// every node at once.
    fn notify_due(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = now_ms();
        let last = self.last_notify.load(Ordering::Relaxed);
        now - last >= 10
            && self
                .last_notify
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Claims up to `limit` due jobs for `lease`: running jobs whose lease ran out (their
    /// worker died) first, then pending ones in `run_at` order. On Postgres concurrent
    /// claimers skip each other's rows; SQLite has one writer.
    pub async fn claim(&self, lease: Duration, limit: usize) -> Result<Vec<Claimed>, StoreError> {
        let now = now_ms();
        let token = format!("{:032x}", rand::random::<u128>());
        let until = now + lease.as_millis() as i64;
        let mut claimed = self
            .claim_where(
                &token,
                until,
                now,
                limit,
                "state = 'running' AND lease_until < $3",
                "lease_until",
            )
            .await?;
        if claimed.len() < limit {
            let more = self
                .claim_where(
                    &token,
                    until,
                    now,
                    limit - claimed.len(),
                    "state = 'pending' AND run_at <= $3",
                    "run_at",
                )
                .await?;
            claimed.extend(more);
        }
        Ok(claimed)
    }

    /// One claim statement over the rows `filter` picks, oldest `order` first (each filter has
    /// a partial index in that order).
    async fn claim_where(
        &self,
        token: &str,
        until: i64,
        now: i64,
        limit: usize,
        filter: &str,
        order: &str,
    ) -> Result<Vec<Claimed>, StoreError> {
        // On Postgres the due rows are locked in a materialised step first, so the planner
        // cannot re-run the sub-select and claim more than `limit`; concurrent claimers skip
        // each other's rows. SQLite has a single writer, so a plain sub-select is atomic.
        let sql = match self.dialect {
            Dialect::Postgres => format!(
                "WITH due AS MATERIALIZED (SELECT id FROM jobs WHERE {filter} ORDER BY {order} \
                 LIMIT $4 FOR UPDATE SKIP LOCKED) \
                 UPDATE jobs SET state = 'running', lease_token = $1, lease_until = $2, \
                 attempts = jobs.attempts + 1, updated_at = $3 FROM due WHERE jobs.id = due.id \
                 RETURNING jobs.id, jobs.kind, jobs.app_id, jobs.payload, jobs.attempts, jobs.expires_at"
            ),
            Dialect::Sqlite => format!(
                "UPDATE jobs SET state = 'running', lease_token = $1, lease_until = $2, \
                 attempts = attempts + 1, updated_at = $3 \
                 WHERE id IN (SELECT id FROM jobs WHERE {filter} ORDER BY {order} LIMIT $4) \
                 RETURNING id, kind, app_id, payload, attempts, expires_at"
            ),
        };
        let rows = sqlx::query(&sql)
            .bind(token)
            .bind(until)
            .bind(now)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Claimed {
                    id: r.try_get("id")?,
                    kind: r.try_get("kind")?,
                    app_id: r.try_get("app_id")?,
                    payload: r.try_get("payload")?,
                    attempt: r.try_get::<i64, _>("attempts")? as u32,
                    expires_at: r.try_get("expires_at")?,
                    token: token.to_owned(),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// When the next pending job falls due (Unix ms), if any is waiting.
    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT MIN(run_at) FROM jobs WHERE state = 'pending'")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }

    /// Logs the attempt and moves the job on, if this worker's lease still holds. Returns
    /// whether it did (false: the lease expired and another worker owns the job now).
    pub async fn finish(
        &self,
        job: &Claimed,
        node: &str,
        started_at: i64,
        attempt: &Attempt,
        outcome: &Outcome,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO job_attempts (job_id, attempt, node, started_at, duration_ms, outcome, \
             http_status, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(job.id)
        .bind(i64::from(job.attempt))
        .bind(node)
        .bind(started_at)
        .bind(now - started_at)
        .bind(attempt.verdict.label())
        .bind(attempt.http_status.map(i64::from))
        .bind(&attempt.detail)
        .execute(&mut *tx)
        .await?;
        let run_at = match outcome {
            Outcome::RetryAt(at) => *at,
            _ => now,
        };
        let last_error = (attempt.verdict != Verdict::Done).then_some(attempt.detail.as_str());
        let updated = sqlx::query(
            "UPDATE jobs SET state = $1, run_at = $2, last_error = $3, lease_token = NULL, \
             lease_until = NULL, updated_at = $4 WHERE id = $5 AND lease_token = $6",
        )
        .bind(outcome.state())
        .bind(run_at)
        .bind(last_error)
        .bind(now)
        .bind(job.id)
        .bind(&job.token)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(updated == 1)
    }

    pub async fn jobs(&self, state: Option<&str>, limit: i64) -> Result<Vec<JobRow>, StoreError> {
        let rows = match state {
            Some(s) => {
                sqlx::query(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE state = $1 ORDER BY id DESC LIMIT $2"
                ))
                .bind(s)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs ORDER BY id DESC LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(rows.iter().map(job_row).collect::<Result<_, _>>()?)
    }

    pub async fn job(&self, id: i64) -> Result<Option<(JobRow, Vec<AttemptRow>)>, StoreError> {
        let Some(row) = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let attempts = sqlx::query(
            "SELECT attempt, node, started_at, duration_ms, outcome, http_status, detail \
             FROM job_attempts WHERE job_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(AttemptRow {
                attempt: r.try_get("attempt")?,
                node: r.try_get("node")?,
                started_at: r.try_get("started_at")?,
                duration_ms: r.try_get("duration_ms")?,
                outcome: r.try_get("outcome")?,
                http_status: r.try_get("http_status")?,
                detail: r.try_get("detail")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Some((job_row(&row)?, attempts)))
    }

    /// Puts a dead job back in the queue, due now, with a fresh expiry window.
    pub async fn retry_dead(&self, id: i64, window: Duration) -> Result<bool, StoreError> {
        let now = now_ms();
        let n = sqlx::query(
            "UPDATE jobs SET state = 'pending', run_at = $1, expires_at = $2, updated_at = $1 \
             WHERE id = $3 AND state = 'dead'",
        )
        .bind(now)
        .bind(now + window.as_millis() as i64)
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n == 1 {
            self.enqueued.notify_one();
        }
        Ok(n == 1)
    }

    /// Deletes a dead job and its attempts.
    pub async fn drop_dead(&self, id: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query("DELETE FROM jobs WHERE id = $1 AND state = 'dead'")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 1 {
            sqlx::query("DELETE FROM job_attempts WHERE job_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Jobs per state.
    pub async fn job_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows =
            sqlx::query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state ORDER BY state")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect::<Result<_, sqlx::Error>>()?)
    }
}
