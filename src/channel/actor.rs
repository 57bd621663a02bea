//! One channel's actor: its subscribers, its presence members, and the fan-out of frames.
//! Handlers change state and return; they never wait on IO. A frame is encoded once by
//! whoever publishes it, and each subscriber's outbox gets a clone of the same bytes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Recipient};
use bellhop_protocol::server::{self, SubscriptionErrorKind};
use bellhop_protocol::{SocketId, UserId};
use bytestring::ByteString;

use super::messages::{Joined, ListMembers, Member, Publish, Subscribe, Unsubscribe};
use super::presence::{Change, Members};
use super::registry::{ChannelCounters, ChannelKey, ChannelRegistry};
use crate::connection::Outbox;
use crate::metrics::AppMetrics;
use crate::webhooks::{Observed, WebhookEvent};

struct Subscriber {
    outbox: Outbox,
    user: Option<UserId>,
    /// Joining (clustered presence): the member frames held until the ledger's snapshot.
    pending: Option<Vec<(u64, ByteString)>>,
    /// The number of the last member frame its snapshot included: an older frame that
    /// arrives late is already in the snapshot and is not sent again.
    snapshot_seq: Option<u64>,
    info: Option<std::sync::Arc<serde_json::value::RawValue>>,
}

/// `subscription_count` events wait this long so a burst of joins sends one event.
const COUNT_DEBOUNCE: std::time::Duration = std::time::Duration::from_secs(1);

pub struct ChannelActor {
    key: ChannelKey,
    generation: u64,
    subscribers: HashMap<SocketId, Subscriber>,
    members: Members,
    counters: Arc<ChannelCounters>,
    registry: Weak<ChannelRegistry>,
    subscribes_seen: u64,
    observer: Option<Recipient<Observed>>,
    /// `subscription_count` events: on for the app, one pending debounce, last count sent.
    count_events: bool,
    count_pending: bool,
    count_sent: Option<u64>,
    metrics: AppMetrics,
    /// The cluster ledger decides members, occupancy and counts; this actor only delivers.
    clustered: bool,
}

impl ChannelActor {
    pub(super) fn new(
        key: ChannelKey,
        generation: u64,
        counters: Arc<ChannelCounters>,
        registry: Weak<ChannelRegistry>,
        observer: Option<Recipient<Observed>>,
        clustered: bool,
    ) -> Self {
        Self {
            clustered,
            metrics: AppMetrics::for_app(key.app.as_str()),
            observer,
            count_events: false,
            count_pending: false,
            count_sent: None,
            key,
            generation,
            subscribers: HashMap::new(),
            members: Members::default(),
            counters,
            registry,
            subscribes_seen: 0,
        }
    }

    /// Queues a frame for one subscriber (answers, cached events), counted like fan-out.
    fn send_to(&self, outbox: &Outbox, frame: ByteString) {
        let len = frame.len() as u64;
        if outbox.push(frame).is_ok() {
            self.metrics.messages_sent.inc();
            self.metrics.bytes_sent.inc_by(len);
        }
    }

    fn broadcast(&mut self, frame: &ByteString, except: Option<SocketId>, member_seq: Option<u64>) {
        let mut sent = 0u64;
        for (id, sub) in &mut self.subscribers {
            if let Some(held) = &mut sub.pending {
                // A joining socket hears member changes only after its snapshot, and nothing
                // else before subscription_succeeded.
                if let (Some(seq), true) = (member_seq, Some(*id) != except) {
                    held.push((seq, frame.clone()));
                }
                continue;
            }
            let seen = matches!((member_seq, sub.snapshot_seq), (Some(q), Some(s)) if q <= s);
            if Some(*id) != except && !seen {
                // A full outbox closes its own connection (4100); the channel moves on.
                if sub.outbox.push(frame.clone()).is_ok() {
                    sent += 1;
                }
            }
        }
        self.metrics.messages_sent.inc_by(sent);
        self.metrics.bytes_sent.inc_by(sent * frame.len() as u64);
    }

    fn observe(&self, event: WebhookEvent) {
        if self.clustered && !matches!(event, WebhookEvent::CacheMiss { .. }) {
            // Reported once, by the node the ledger told.
            return;
        }
        if let Some(o) = &self.observer {
            o.do_send(Observed {
                app: self.key.app.clone(),
                event,
                settled: false,
            });
        }
    }

    fn channel(&self) -> String {
        self.key.name.as_str().to_owned()
    }

    fn update_counters(&self) {
        self.counters
            .subscriptions
            .store(self.subscribers.len() as u64, Ordering::Relaxed);
        self.counters
            .users
            .store(self.members.len() as u64, Ordering::Relaxed);
    }

    /// Sends the subscription count once things settle: at most one event a second.
    fn count_changed(&mut self, ctx: &mut Context<Self>) {
        if self.clustered || !self.count_events || self.key.name.is_presence() || self.count_pending
        {
            return;
        }
        self.count_pending = true;
        ctx.run_later(COUNT_DEBOUNCE, |this, _| {
            this.count_pending = false;
            let n = this.subscribers.len() as u64;
            if this.count_sent == Some(n) || n == 0 {
                return;
            }
            this.count_sent = Some(n);
            let frame = server::subscription_count(this.key.name.as_str(), n);
            this.broadcast(&frame.into(), None, None);
            this.observe(WebhookEvent::SubscriptionCount {
                channel: this.channel(),
                count: n,
            });
        });
    }

    /// A new subscriber of a cache channel gets the last event, or `pusher:cache_miss`.
    fn send_cached(&self, outbox: &Outbox) {
        let cached = self.registry.upgrade().and_then(|r| r.cached(&self.key));
        match cached {
            Some(frame) => self.send_to(outbox, frame),
            None => {
                self.send_to(outbox, server::cache_miss(self.key.name.as_str()).into());
                self.observe(WebhookEvent::CacheMiss {
                    channel: self.channel(),
                });
            }
        }
    }

    fn subscribe(&mut self, msg: Subscribe, ctx: &mut Context<Self>) {
        self.count_events = msg.subscription_count;
        let channel = self.key.name.as_str();
        // Clustered, the members come from the ledger (which already counts this one).
        let cluster_succeeded: Option<ByteString> = match &msg.cluster_members {
            Some(members) if self.key.name.is_presence() => Some(
                server::presence_subscription_succeeded(
                    channel,
                    members.iter().map(|(id, info)| (id.as_str(), &**info)),
                )
                .into(),
            ),
            _ => None,
        };
        if let Some(existing) = self.subscribers.get(&msg.socket_id) {
            // A repeated subscribe from the same socket is answered again, changing nothing.
            let succeeded = cluster_succeeded.unwrap_or_else(|| self.succeeded_frame());
            self.send_to(&existing.outbox, succeeded);
            return;
        }
        if msg.pending {
            let (user, info) = match msg.member {
                Some(Member { user_id, user_info }) => (Some(user_id), Some(user_info)),
                None => (None, None),
            };
            self.subscribers.insert(
                msg.socket_id,
                Subscriber {
                    outbox: msg.outbox,
                    user,
                    pending: Some(Vec::new()),
                    snapshot_seq: None,
                    info,
                },
            );
            self.update_counters();
            return;
        }
        let user = match msg.member {
            Some(Member { user_id, user_info }) if self.clustered => {
                // The ledger admitted the member and announces it cluster-wide.
                if self.members.join(user_id.clone(), user_info) == Change::First {
                    self.metrics.presence_members.inc();
                }
                Some(user_id)
            }
            Some(Member { user_id, user_info }) => {
                if !self.members.contains(&user_id) && self.members.len() >= msg.max_members {
                    let frame = server::subscription_error(
                        channel,
                        SubscriptionErrorKind::LimitReached,
                        &format!(
                            "presence channel is full: at most {} members",
                            msg.max_members
                        ),
                        400,
                    );
                    self.send_to(&msg.outbox, frame.into());
                    return;
                }
                if self.subscribers.is_empty() {
                    self.observe(WebhookEvent::ChannelOccupied {
                        channel: self.channel(),
                    });
                }
                if self.members.join(user_id.clone(), user_info.clone()) == Change::First {
                    self.metrics.presence_members.inc();
                    let frame = server::member_added(channel, user_id.as_str(), &user_info);
                    self.broadcast(&frame.into(), None, None);
                    self.observe(WebhookEvent::MemberAdded {
                        channel: self.channel(),
                        user_id: user_id.as_str().to_owned(),
                    });
                }
                Some(user_id)
            }
            None => None,
        };
        let succeeded = cluster_succeeded.unwrap_or_else(|| self.succeeded_frame());
        self.send_to(&msg.outbox, succeeded);
        if self.key.name.is_cache() {
            self.send_cached(&msg.outbox);
        }
        self.subscribers.insert(
            msg.socket_id,
            Subscriber {
                outbox: msg.outbox,
                user,
                pending: None,
                snapshot_seq: None,
                info: None,
            },
        );
        self.update_counters();
        if self.subscribers.len() == 1 && !self.key.name.is_presence() {
            // Presence channels reported it above, before their first member_added.
            self.observe(WebhookEvent::ChannelOccupied {
                channel: self.channel(),
            });
        }
        self.count_changed(ctx);
    }

    fn succeeded_frame(&self) -> ByteString {
        let channel = self.key.name.as_str();
        if self.key.name.is_presence() {
            server::presence_subscription_succeeded(channel, self.members.iter()).into()
        } else {
            server::subscription_succeeded(channel).into()
        }
    }

    fn unsubscribe(&mut self, socket_id: SocketId, ctx: &mut Context<Self>) {
        let Some(sub) = self.subscribers.remove(&socket_id) else {
            return;
        };
        // A socket that never finished joining was never counted as a member here.
        if let Some(user) = sub.user.filter(|_| sub.pending.is_none()) {
            let last = self.members.leave(&user) == Some(Change::First);
            if last {
                self.metrics.presence_members.dec();
            }
            if last && !self.clustered {
                let frame = server::member_removed(self.key.name.as_str(), user.as_str());
                self.broadcast(&frame.into(), None, None);
                self.observe(WebhookEvent::MemberRemoved {
                    channel: self.channel(),
                    user_id: user.as_str().to_owned(),
                });
            }
        }
        self.update_counters();
        self.count_changed(ctx);
        if self.subscribers.is_empty() {
            self.observe(WebhookEvent::ChannelVacated {
                channel: self.channel(),
            });
            let retire = match self.registry.upgrade() {
                Some(r) => r.try_retire(&self.key, self.generation, self.subscribes_seen),
                None => true,
            };
            if retire {
                ctx.stop();
            }
        }
    }
}

// Senders use `do_send`, which never waits on the mailbox, so a busy channel cannot stall a
// publisher or a connection.
impl Actor for ChannelActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        self.metrics.channels.inc();
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.metrics.channels.dec();
        self.metrics.presence_members.sub(self.members.len() as i64);
    }
}

impl Handler<Subscribe> for ChannelActor {
    type Result = ();
    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) {
        self.subscribes_seen += 1;
        self.subscribe(msg, ctx);
    }
}

impl Handler<Unsubscribe> for ChannelActor {
    type Result = ();
    fn handle(&mut self, msg: Unsubscribe, ctx: &mut Context<Self>) {
        self.unsubscribe(msg.socket_id, ctx);
    }
}

impl Handler<Publish> for ChannelActor {
    type Result = ();
    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
        if let Some(from) = msg.from {
            if !self.subscribers.contains_key(&from) {
                return;
            }
        }
        self.broadcast(&msg.frame, msg.except, msg.member_seq);
    }
}

impl Handler<Joined> for ChannelActor {
    type Result = ();
    fn handle(&mut self, msg: Joined, _: &mut Context<Self>) {
        let Some(sub) = self.subscribers.get_mut(&msg.socket_id) else {
            return;
        };
        let Some(held) = sub.pending.take() else {
            return;
        };
        sub.snapshot_seq = msg.seq;
        let user = sub.user.clone();
        let info = sub.info.take();
        let outbox = sub.outbox.clone();
        if let (Some(u), Some(i)) = (user, info) {
            if self.members.join(u, i) == Change::First {
                self.metrics.presence_members.inc();
            }
        }
        let channel = self.key.name.as_str();
        let succeeded: ByteString = match &msg.members {
            Some(members) => server::presence_subscription_succeeded(
                channel,
                members.iter().map(|(id, info)| (id.as_str(), &**info)),
            )
            .into(),
            None => self.succeeded_frame(),
        };
        self.send_to(&outbox, succeeded);
        for (seq, frame) in held {
            if msg.seq.is_none_or(|snapshot| seq > snapshot) {
                self.send_to(&outbox, frame);
            }
        }
        if self.key.name.is_cache() {
            self.send_cached(&outbox);
        }
    }
}

impl Handler<ListMembers> for ChannelActor {
    type Result = Vec<UserId>;
    fn handle(&mut self, _: ListMembers, _: &mut Context<Self>) -> Vec<UserId> {
        self.members.ids()
    }
}
