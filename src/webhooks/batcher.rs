//! The webhook batcher: every fact worth a webhook is written to the store's webhook log as it
//! is observed (see [`super::log`]), in order, by one writer task that commits whatever was
//! observed meanwhile together; every `flush_every` the due events become one durable job per
//! (app, target) batch. `channel_vacated` and `member_removed` wait out a cancel window in the
//! log, and a join within it deletes the leave (so no flapping pair reaches the receiver).
//! A node without a cluster starts by closing what the receivers were told is open: those
//! channels and members died with the previous process, unless their clients come back
//! within the window.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Context, Handler};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::event::{Observed, WebhookEvent};
use super::log::{DueEvent, LogEntry, Pair};
use super::sender::Targets;
use crate::jobs::NewJob;
use crate::store::{now_ms, Store};

/// How long webhook jobs keep retrying.
pub const WEBHOOK_EXPIRY: Duration = Duration::from_secs(15 * 60);
/// Due events turned into jobs per flush at most (the rest go on the next).
const FLUSH_LIMIT: i64 = 5_000;
/// Observations kept in memory while the store refuses them; beyond, the oldest are lost
/// (and logged as errors).
const MAX_UNWRITTEN: usize = 100_000;

/// The actor: the address every observer sends to. It only classifies and queues.
pub struct WebhookBatcher {
    apps: Arc<dyn Targets>,
    delay: Duration,
    log: mpsc::UnboundedSender<LogEntry>,
}

impl WebhookBatcher {
    /// Starts the log writer; `clustered`: the ledger pairs leaves and joins cluster-wide,
    /// so nothing is paired or held here.
    pub fn new(
        apps: Arc<dyn Targets>,
        store: Store,
        delay: Duration,
        flush_every: Duration,
        clustered: bool,
    ) -> Self {
        let (log, rx) = mpsc::unbounded_channel();
        let writer = LogWriter {
            apps: apps.clone(),
            store,
            delay,
            unwritten: VecDeque::new(),
        };
        tokio::spawn(writer.run(rx, flush_every, clustered));
        Self { apps, delay, log }
    }

    fn entry(&self, msg: Observed) -> Option<LogEntry> {
        let targets = self.apps.targets(msg.app.as_str());
        if targets.is_empty() {
            return None;
        }
        let kind = msg.event.kind();
        let wanted = targets.iter().any(|t| t.wants(kind));
        let pair =
            (!msg.settled)
                .then(|| msg.event.pair())
                .flatten()
                .map(|(channel, user_id, opens)| Pair {
                    channel: channel.to_owned(),
                    user_id: user_id.to_owned(),
                    opens,
                });
        if !wanted && pair.is_none() {
            return None;
        }
        Some(entry_for(
            msg.app.as_str(),
            &msg.event,
            wanted,
            pair,
            self.delay,
        ))
    }
}

/// The log entry of an observed event: a paired leave is due after the cancel window.
fn entry_for(
    app_id: &str,
    event: &WebhookEvent,
    wanted: bool,
    pair: Option<Pair>,
    delay: Duration,
) -> LogEntry {
    let now = now_ms();
    let due_at = match &pair {
        Some(p) if !p.opens => now + delay.as_millis() as i64,
        _ => now,
    };
    LogEntry {
        app_id: app_id.to_owned(),
        kind: event.kind(),
        body: event.to_json().to_string(),
        due_at,
        wanted,
        pair,
    }
}

impl Actor for WebhookBatcher {
    type Context = Context<Self>;
}

impl Handler<Observed> for WebhookBatcher {
    type Result = ();
    fn handle(&mut self, msg: Observed, _: &mut Context<Self>) {
        if let Some(entry) = self.entry(msg) {
            // The writer lives as long as the runtime; a send after it stopped is shutdown.
            let _ = self.log.send(entry);
        }
    }
}

/// The one writer of the webhook log.
struct LogWriter {
    apps: Arc<dyn Targets>,
    store: Store,
    delay: Duration,
    /// Observed, not yet committed (the store refused them): retried in order.
    unwritten: VecDeque<LogEntry>,
}

impl LogWriter {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<LogEntry>,
        flush_every: Duration,
        clustered: bool,
    ) {
        if !clustered {
            self.close_what_a_crash_left().await;
        }
        let mut flush = tokio::time::interval(flush_every);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                entry = rx.recv() => {
                    let Some(entry) = entry else { break };
                    self.unwritten.push_back(entry);
                    while let Ok(more) = rx.try_recv() {
                        self.unwritten.push_back(more);
                    }
                }
                _ = flush.tick() => {
                    if let Err(e) = self.flush().await {
                        tracing::warn!(error = %e, "webhook batches wait for the store");
                    }
                }
            }
            if self.write().await {
                backoff = Duration::from_millis(100);
            } else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        // Shutdown: what was observed last is committed before the process goes.
        let _ = self.write().await;
    }

    /// Commits what is unwritten. False when the store refused (kept for the next try).
    async fn write(&mut self) -> bool {
        if self.unwritten.is_empty() {
            return true;
        }
        let batch: Vec<LogEntry> = self.unwritten.iter().cloned().collect();
        match self.store.record_webhooks(&batch).await {
            Ok(()) => {
                self.unwritten.clear();
                true
            }
            Err(e) => {
                let over = self.unwritten.len().saturating_sub(MAX_UNWRITTEN);
                if over > 0 {
                    self.unwritten.drain(..over);
                    tracing::error!(
                        lost = over,
                        "webhook events lost: the store refused them and too many wait"
                    );
                }
                tracing::warn!(error = %e, waiting = self.unwritten.len(), "the store refused webhook events; holding them in memory");
                false
            }
        }
    }

    /// Due events become one job per (app, target) batch, as many flushes as it takes.
    async fn flush(&self) -> Result<(), crate::store::StoreError> {
        loop {
            let taken = self
                .store
                .flush_webhooks(FLUSH_LIMIT, |due| jobs_for(&*self.apps, due))
                .await?;
            if taken < FLUSH_LIMIT as usize {
                return Ok(());
            }
        }
    }

    /// A node without a cluster that starts finds what its previous process told the
    /// receivers was open: each gets its leave, after the cancel window like any leave (a
    /// client that reconnects within it cancels the pair).
    async fn close_what_a_crash_left(&mut self) {
        let held = match self.store.held_webhook_state().await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "cannot read what the last process left open; its channel_vacated/member_removed webhooks are not sent");
                return;
            }
        };
        if !held.is_empty() {
            tracing::info!(
                open = held.len(),
                "closing the channels and members the previous process left open"
            );
        }
        for (app_id, channel, user_id) in held {
            let event = WebhookEvent::closing(channel.clone(), user_id.clone());
            let wanted = self
                .apps
                .targets(&app_id)
                .iter()
                .any(|t| t.wants(event.kind()));
            let pair = Pair {
                channel,
                user_id,
                opens: false,
            };
            let entry = entry_for(&app_id, &event, wanted, Some(pair), self.delay);
            self.unwritten.push_back(entry);
        }
        self.write().await;
    }
}

/// One job per (app, target) with the events that target wants, in the order observed.
fn jobs_for(apps: &dyn Targets, due: Vec<DueEvent>) -> Vec<NewJob> {
    let now = now_ms();
    let mut by_app: Vec<(String, Vec<DueEvent>)> = Vec::new();
    for d in due {
        match by_app.iter_mut().find(|(a, _)| *a == d.app_id) {
            Some((_, list)) => list.push(d),
            None => by_app.push((d.app_id.clone(), vec![d])),
        }
    }
    let mut jobs = Vec::new();
    for (app_id, events) in by_app {
        for (i, target) in apps.targets(&app_id).iter().enumerate() {
            let wanted: Vec<Value> = events
                .iter()
                .filter(|e| target.wants(&e.kind))
                .filter_map(|e| serde_json::from_str(&e.body).ok())
                .collect();
            if wanted.is_empty() {
                continue;
            }
            // One timestamp per flush: every target of a batch gets the same body.
            let body = json!({"time_ms": now, "events": wanted}).to_string();
            let payload = json!({"target": i, "url": target.url, "body": body}).to_string();
            jobs.push(NewJob {
                kind: super::sender::KIND,
                app_id: app_id.clone(),
                payload,
                dedupe_key: None,
                run_at: now,
                expires_at: now + WEBHOOK_EXPIRY.as_millis() as i64,
            });
        }
    }
    jobs
}
