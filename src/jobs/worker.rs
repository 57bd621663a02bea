//! Workers: claim due jobs, run each through the handler for its kind, record the outcome.
//! They wake as soon as a job is enqueued in this process (or, on Postgres, anywhere, via
//! LISTEN/NOTIFY), when the next scheduled job falls due, and every second as well, so a
//! missed wake-up costs at most a second.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{watch, Semaphore};

use super::queue::{Attempt, Claimed, Outcome, Verdict};
use super::retry::{next_run, Schedule};
use crate::store::{now_ms, Dialect, Store};

/// Runs one kind of job. `run` makes the outbound call and classifies the answer; it never
/// touches the store.
pub trait Handler: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    fn schedule(&self) -> Schedule;
    fn run<'a>(&'a self, job: &'a Claimed) -> BoxFuture<'a, Attempt>;
}

/// How long a claim waits for more running jobs to finish once one has.
const BATCH_WAIT: Duration = Duration::from_millis(5);

pub struct Workers {
    store: Store,
    handlers: HashMap<&'static str, Arc<dyn Handler>>,
    node: String,
    concurrency: usize,
    lease: Duration,
    poll: Duration,
}

impl Workers {
    pub fn new(store: Store, node: String) -> Self {
        Self {
            store,
            handlers: HashMap::new(),
            node,
            concurrency: 16,
            lease: Duration::from_secs(60),
            poll: Duration::from_secs(1),
        }
    }

    pub fn handler(mut self, h: Arc<dyn Handler>) -> Self {
        self.handlers.insert(h.kind(), h);
        self
    }

    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often to look for due jobs without a wake-up (default 1 s).
    pub fn poll(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Runs until `stop` turns true. Jobs in flight finish; unclaimed ones stay queued for
    /// the next worker.
    ///
    /// Claims come in batches: while jobs run, the next claim waits for a quarter of the slots
    /// to free up (or a few milliseconds after the first one does), so a busy queue costs one
    /// claim per batch, not one per job or per enqueue.
    pub async fn run(self, pg_url: Option<String>, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        if let (Dialect::Postgres, Some(url)) = (this.store.dialect(), pg_url) {
            tokio::spawn(listen(url, this.store.clone(), stop.clone()));
        }
        let slots = Arc::new(Semaphore::new(this.concurrency));
        let finished = Arc::new(tokio::sync::Notify::new());
        let batch = (this.concurrency / 4).max(1);
        loop {
            if *stop.borrow() {
                break;
            }
            this.room_for(&slots, &finished, batch, &mut stop).await;
            let free = slots.available_permits();
            let claimed = match this.store.claim(this.lease, free).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming jobs failed; will retry");
                    Vec::new()
                }
            };
            let got = claimed.len();
            for job in claimed {
                // unwrap: the semaphore is never closed.
                let permit = slots.clone().acquire_owned().await.unwrap();
                let (this, finished) = (this.clone(), finished.clone());
                tokio::spawn(async move {
                    this.run_one(job).await;
                    drop(permit);
                    finished.notify_one();
                });
            }
            if got > 0 && got == free {
                continue;
            }
            // Nothing more is due: wait for an enqueue (here or, on Postgres, anywhere), the
            // next job falling due (a reminder, a retry), the poll, or the stop.
            let idle = this.until_next_due().await;
            tokio::select! {
                _ = this.store.enqueued.notified() => {}
                _ = tokio::time::sleep(idle) => {}
                _ = stop.changed() => {}
            }
        }
        // Let jobs in flight record their outcome.
        let _ = slots.acquire_many(this.concurrency as u32).await;
    }

    /// How long to wait for work: until the next pending job falls due, the poll at most (a
    /// job enqueued by another node without a wake-up is found by then).
    async fn until_next_due(&self) -> Duration {
        match self.store.next_due().await {
            Ok(Some(at)) => {
                // At least a moment: a job due now that this claim did not get is another
                // node's, or will be claimed on the next turn anyway.
                let wait = (at - now_ms()).max(10) as u64;
                Duration::from_millis(wait).min(self.poll)
            }
            _ => self.poll,
        }
    }

    /// Waits until a claim is worth making: `batch` slots free, or at least one free and a
    /// moment passed for others to finish too.
    async fn room_for(
        &self,
        slots: &Semaphore,
        finished: &tokio::sync::Notify,
        batch: usize,
        stop: &mut watch::Receiver<bool>,
    ) {
        while slots.available_permits() == 0 {
            tokio::select! {
                _ = finished.notified() => {}
                _ = stop.changed() => return,
            }
        }
        if slots.available_permits() < batch {
            tokio::time::sleep(BATCH_WAIT).await;
        }
    }

    async fn run_one(&self, job: Claimed) {
        let started = now_ms();
        let (attempt, schedule) = match self.handlers.get(job.kind.as_str()) {
            Some(h) => (h.run(&job).await, h.schedule()),
            None => (
                Attempt {
                    verdict: Verdict::Permanent,
                    http_status: None,
                    detail: format!("no handler for job kind {:?}", job.kind),
                },
                Schedule::WEBHOOK,
            ),
        };
        let outcome = match &attempt.verdict {
            Verdict::Done => Outcome::Done,
            Verdict::Permanent => Outcome::Dead,
            Verdict::Retry { retry_after } => next_run(
                schedule,
                now_ms(),
                job.attempt,
                *retry_after,
                job.expires_at,
                rand::random::<f64>(),
            )
            .map_or(Outcome::Dead, Outcome::RetryAt),
        };
        crate::metrics::METRICS
            .job_attempts
            .with_label_values(&[job.kind.as_str(), attempt.verdict.label()])
            .inc();
        match self
            .store
            .finish(&job, &self.node, started, &attempt, &outcome)
            .await
        {
            Ok(true) => {
                if outcome == Outcome::Dead {
                    tracing::warn!(job_id = job.id, kind = %job.kind, app_id = %job.app_id, attempts = job.attempt, error = %attempt.detail, "job dead-lettered");
                } else {
                    tracing::debug!(job_id = job.id, kind = %job.kind, outcome = ?outcome, "job attempt recorded");
                }
            }
            Ok(false) => {
                tracing::warn!(
                    job_id = job.id,
                    "lease expired before the attempt finished; the next holder decides"
                )
            }
            Err(e) => {
                tracing::error!(job_id = job.id, error = %e, "cannot record job outcome; it will run again when its lease expires")
            }
        }
    }
}

/// Wakes local workers when any node enqueues (Postgres NOTIFY), reconnecting on failure.
async fn listen(url: String, store: Store, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(200);
    while !*stop.borrow() {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut l) => {
                if l.listen("bellhop_jobs").await.is_ok() {
                    backoff = Duration::from_millis(200);
                    loop {
                        tokio::select! {
                            n = l.recv() => match n {
                                Ok(_) => store.enqueued.notify_one(),
                                Err(_) => break,
                            },
                            _ = stop.changed() => return,
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "job LISTEN connection failed; polling meanwhile"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}
