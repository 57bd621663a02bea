//! The webhook batcher actor. It holds `channel_vacated` and `member_removed` back for a
//! short window and drops the pair when the channel or member comes back within it (so no
//! flapping pairs reach the receiver), gathers the rest per app for a moment, and enqueues
//! one durable job per (app, target) batch. Handlers only change state; enqueueing runs as a
//! spawned future.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, AsyncContext, Context, Handler, Message};
use bellhop_protocol::AppId;
use serde_json::{json, Value};

use crate::apps::AppDirectory;
use crate::jobs::NewJob;
use crate::store::{now_ms, Store};

/// How long webhook jobs keep retrying.
pub const WEBHOOK_EXPIRY: Duration = Duration::from_secs(15 * 60);

/// A fact worth a webhook.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookEvent {
    ChannelOccupied {
        channel: String,
    },
    ChannelVacated {
        channel: String,
    },
    MemberAdded {
        channel: String,
        user_id: String,
    },
    MemberRemoved {
        channel: String,
        user_id: String,
    },
    ClientEvent {
        channel: String,
        event: String,
        data: String,
        socket_id: String,
        user_id: Option<String>,
    },
    CacheMiss {
        channel: String,
    },
    SubscriptionCount {
        channel: String,
        count: u64,
    },
}

impl WebhookEvent {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ChannelOccupied { .. } => "channel_occupied",
            Self::ChannelVacated { .. } => "channel_vacated",
            Self::MemberAdded { .. } => "member_added",
            Self::MemberRemoved { .. } => "member_removed",
            Self::ClientEvent { .. } => "client_event",
            Self::CacheMiss { .. } => "cache_miss",
            Self::SubscriptionCount { .. } => "subscription_count",
        }
    }

    /// The event as it appears in the webhook body's `events` array.
    pub fn to_json(&self) -> Value {
        let name = self.kind();
        match self {
            Self::ChannelOccupied { channel }
            | Self::ChannelVacated { channel }
            | Self::CacheMiss { channel } => json!({"name": name, "channel": channel}),
            Self::MemberAdded { channel, user_id } | Self::MemberRemoved { channel, user_id } => {
                json!({"name": name, "channel": channel, "user_id": user_id})
            }
            Self::ClientEvent {
                channel,
                event,
                data,
                socket_id,
                user_id,
            } => {
                let mut v = json!({"name": name, "channel": channel, "event": event,
                                   "data": data, "socket_id": socket_id});
                if let Some(u) = user_id {
                    v["user_id"] = u.as_str().into();
                }
                v
            }
            Self::SubscriptionCount { channel, count } => {
                json!({"name": name, "channel": channel, "subscription_count": count})
            }
        }
    }

    /// The key that pairs a delayed leave with the join that cancels it.
    fn pair_key(&self) -> Option<(String, Option<String>)> {
        match self {
            Self::ChannelOccupied { channel } | Self::ChannelVacated { channel } => {
                Some((channel.clone(), None))
            }
            Self::MemberAdded { channel, user_id } | Self::MemberRemoved { channel, user_id } => {
                Some((channel.clone(), Some(user_id.clone())))
            }
            _ => None,
        }
    }

    fn is_delayed_leave(&self) -> bool {
        matches!(
            self,
            Self::ChannelVacated { .. } | Self::MemberRemoved { .. }
        )
    }
}

/// A fact from a channel or connection, for one app.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Observed {
    pub app: AppId,
    pub event: WebhookEvent,
    /// The cancel window was already applied (by the cluster ledger): send as it is.
    pub settled: bool,
}

#[derive(Default)]
struct AppBuffer {
    ready: Vec<WebhookEvent>,
    /// Leaves waiting out the cancel window, by pair key.
    delayed: HashMap<(String, Option<String>), (Instant, WebhookEvent)>,
}

/// The delay-and-cancel and batching rules, apart from the actor so they can be tested
/// without a store.
struct Buffers {
    delay: Duration,
    apps: HashMap<AppId, AppBuffer>,
}

impl Buffers {
    fn observe(&mut self, app: AppId, event: WebhookEvent, now: Instant) {
        let buf = self.apps.entry(app).or_default();
        let Some(key) = event.pair_key() else {
            buf.ready.push(event);
            return;
        };
        if event.is_delayed_leave() {
            buf.delayed.insert(key, (now + self.delay, event));
        } else if buf.delayed.remove(&key).is_none() {
            buf.ready.push(event);
        }
        // else: it came back within the window; neither the leave nor the join is sent.
    }

    /// An event whose cancel window was applied elsewhere.
    fn push_ready(&mut self, app: AppId, event: WebhookEvent) {
        self.apps.entry(app).or_default().ready.push(event);
    }

    /// Moves due leaves to ready and takes every app's ready events.
    fn take_due(&mut self, now: Instant) -> Vec<(AppId, Vec<WebhookEvent>)> {
        let mut out = Vec::new();
        for (app, buf) in &mut self.apps {
            // Due leaves go out in the order they happened (member_removed before the
            // channel_vacated that followed it).
            let mut due: Vec<_> = buf
                .delayed
                .iter()
                .filter(|(_, (at, _))| *at <= now)
                .map(|(k, (at, _))| (*at, k.clone()))
                .collect();
            due.sort_by_key(|(at, _)| *at);
            for (_, k) in due {
                if let Some((_, ev)) = buf.delayed.remove(&k) {
                    buf.ready.push(ev);
                }
            }
            if !buf.ready.is_empty() {
                out.push((app.clone(), std::mem::take(&mut buf.ready)));
            }
        }
        self.apps
            .retain(|_, b| !b.ready.is_empty() || !b.delayed.is_empty());
        out
    }
}

pub struct WebhookBatcher {
    apps: Arc<AppDirectory>,
    store: Store,
    flush_every: Duration,
    buffers: Buffers,
}

impl WebhookBatcher {
    pub fn new(
        apps: Arc<AppDirectory>,
        store: Store,
        delay: Duration,
        flush_every: Duration,
    ) -> Self {
        Self {
            apps,
            store,
            flush_every,
            buffers: Buffers {
                delay,
                apps: HashMap::new(),
            },
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        let due = self.buffers.take_due(Instant::now());
        if due.is_empty() {
            return;
        }
        let mut jobs = Vec::new();
        // One timestamp per flush: every target of a batch gets the same body.
        let now = now_ms();
        for (app_id, events) in due {
            let Some(app) = self.apps.by_id(app_id.as_str()) else {
                continue;
            };
            for (i, target) in app.webhooks.iter().enumerate() {
                let wanted: Vec<Value> = events
                    .iter()
                    .filter(|e| target.wants(e.kind()))
                    .map(WebhookEvent::to_json)
                    .collect();
                if wanted.is_empty() {
                    continue;
                }
                let body = json!({"time_ms": now, "events": wanted}).to_string();
                let payload = json!({"target": i, "url": target.url, "body": body}).to_string();
                jobs.push(NewJob {
                    kind: super::sender::KIND,
                    app_id: app_id.to_string(),
                    payload,
                    dedupe_key: None,
                    run_at: now,
                    expires_at: now + WEBHOOK_EXPIRY.as_millis() as i64,
                });
            }
        }
        let store = self.store.clone();
        ctx.spawn(actix::fut::wrap_future(async move {
            for job in jobs {
                enqueue_with_retry(&store, job).await;
            }
        }));
    }
}

/// How long a batch waits in memory for an unreachable store, and how many may wait.
const HOLD_FOR: Duration = Duration::from_secs(10 * 60);
const MAX_HELD: usize = 10_000;
static HELD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A store outage must not lose a batch: it is kept in memory and retried with back-off for
/// up to ten minutes (at most 10 000 batches at once), then given up loudly.
async fn enqueue_with_retry(store: &Store, job: NewJob) {
    use std::sync::atomic::Ordering;
    let mut wait = Duration::from_millis(100);
    let start = tokio::time::Instant::now();
    let mut held = false;
    loop {
        match store.enqueue(&job).await {
            Ok(_) => break,
            Err(e) => {
                if !held {
                    if HELD.fetch_add(1, Ordering::Relaxed) >= MAX_HELD {
                        HELD.fetch_sub(1, Ordering::Relaxed);
                        tracing::error!(app_id = %job.app_id, "webhook batch lost: {MAX_HELD} batches already wait for the store");
                        return;
                    }
                    held = true;
                }
                if start.elapsed() > HOLD_FOR {
                    tracing::error!(app_id = %job.app_id, error = %e, "webhook batch lost: the store refused it for 10 minutes");
                    break;
                }
                tracing::warn!(app_id = %job.app_id, error = %e, "the store refused a webhook batch; holding it in memory");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    if held {
        HELD.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Actor for WebhookBatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.flush_every, |this, ctx| this.flush(ctx));
    }
}

impl Handler<Observed> for WebhookBatcher {
    type Result = ();
    fn handle(&mut self, msg: Observed, _: &mut Context<Self>) {
        // Only apps with a target that wants this kind pay for buffering.
        let wanted = self
            .apps
            .by_id(msg.app.as_str())
            .is_some_and(|a| a.webhooks.iter().any(|t| t.wants(msg.event.kind())));
        if msg.settled {
            if wanted {
                self.buffers.push_ready(msg.app, msg.event);
            }
        } else if wanted || msg.event.pair_key().is_some() {
            self.buffers.observe(msg.app, msg.event, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occupied(c: &str) -> WebhookEvent {
        WebhookEvent::ChannelOccupied { channel: c.into() }
    }
    fn vacated(c: &str) -> WebhookEvent {
        WebhookEvent::ChannelVacated { channel: c.into() }
    }

    fn batcher() -> Buffers {
        Buffers {
            delay: Duration::from_secs(3),
            apps: HashMap::new(),
        }
    }

    #[test]
    fn leave_then_join_within_the_window_sends_nothing() {
        let app = AppId::parse("1").unwrap();
        let t0 = Instant::now();
        let mut b = batcher();
        b.observe(app.clone(), occupied("a"), t0);
        b.observe(app.clone(), vacated("a"), t0);
        b.observe(app.clone(), occupied("a"), t0 + Duration::from_secs(1));
        let buf = &b.apps[&app];
        assert_eq!(buf.ready, vec![occupied("a")]);
        assert!(buf.delayed.is_empty());
    }

    #[test]
    fn a_leave_is_sent_after_the_window() {
        let app = AppId::parse("1").unwrap();
        let t0 = Instant::now();
        let mut b = batcher();
        b.observe(app.clone(), vacated("a"), t0);
        assert!(b.take_due(t0 + Duration::from_secs(2)).is_empty());
        let due = b.take_due(t0 + Duration::from_secs(3));
        assert_eq!(due, vec![(app, vec![vacated("a")])]);
    }

    #[test]
    fn member_pairs_are_per_user() {
        let app = AppId::parse("1").unwrap();
        let t0 = Instant::now();
        let mut b = batcher();
        let removed = |u: &str| WebhookEvent::MemberRemoved {
            channel: "presence-a".into(),
            user_id: u.into(),
        };
        let added = |u: &str| WebhookEvent::MemberAdded {
            channel: "presence-a".into(),
            user_id: u.into(),
        };
        b.observe(app.clone(), removed("1"), t0);
        b.observe(app.clone(), added("2"), t0);
        b.observe(app.clone(), added("1"), t0);
        let due = b.take_due(t0 + Duration::from_secs(5));
        assert_eq!(due, vec![(app, vec![added("2")])]);
    }

    #[test]
    fn webhook_json_shapes() {
        assert_eq!(
            WebhookEvent::ClientEvent {
                channel: "private-a".into(),
                event: "client-x".into(),
                data: "{}".into(),
                socket_id: "1.2".into(),
                user_id: Some("7".into()),
            }
            .to_json(),
            json!({"name":"client_event","channel":"private-a","event":"client-x","data":"{}","socket_id":"1.2","user_id":"7"})
        );
    }
}
