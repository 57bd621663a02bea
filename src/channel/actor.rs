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

use super::messages::{Joined, ListMembers, Member, Publish, Reconcile, Subscribe, Unsubscribe};
use super::presence::{Change, Members};
use super::presence_view::{MemberChange, PresenceView};
use super::registry::{ChannelCounters, ChannelKey, ChannelRegistry};
use crate::metrics::AppMetrics;
use crate::outbox::Outbox;
use crate::webhooks::{Observed, WebhookEvent};

struct Subscriber {
    outbox: Outbox,
    user: Option<UserId>,
    /// Joining (clustered presence): the member frames held until the ledger's snapshot.
    pending: Option<Vec<(u64, ByteString)>>,
    /// Clustered presence: what this socket was told, when it differs from the channel's
    /// shared view (its snapshot is newer than the view, or came from this node alone while
    /// the ledger was away). None: the shared view is what it knows.
    own_view: Option<PresenceView>,
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
    /// Clustered presence: the members list its settled sockets were told.
    view: Option<PresenceView>,
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
            view: None,
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
        if let Some(seq) = member_seq {
            return self.broadcast_member(frame, except, seq);
        }
        let mut sent = 0u64;
        for (id, sub) in &self.subscribers {
            // A joining socket hears nothing before subscription_succeeded.
            if sub.pending.is_none() && Some(*id) != except {
                // A full outbox closes its own connection (4100); the channel moves on.
                if sub.outbox.push(frame.clone()).is_ok() {
                    sent += 1;
                }
            }
        }
        self.count_sent_frames(sent, frame);
    }

    fn count_sent_frames(&self, sent: u64, frame: &ByteString) {
        self.metrics.messages_sent.inc_by(sent);
        self.metrics.bytes_sent.inc_by(sent * frame.len() as u64);
    }

    /// A clustered member frame numbered `seq`: each socket gets it only if it changes what
    /// that socket was told; joining sockets hold it until their snapshot says.
    fn broadcast_member(&mut self, frame: &ByteString, except: Option<SocketId>, seq: u64) {
        let change = MemberChange::parse(frame);
        let shared = match (&mut self.view, &change) {
            (Some(view), Some(c)) => view.apply(c, seq),
            (Some(view), None) => seq > view.seq(),
            (None, _) => true,
        };
        let shared_seq = self.view.as_ref().map_or(0, PresenceView::seq);
        let mut sent = 0u64;
        for (id, sub) in &mut self.subscribers {
            if let Some(held) = &mut sub.pending {
                if Some(*id) != except {
                    held.push((seq, frame.clone()));
                }
                continue;
            }
            let tell = match (&mut sub.own_view, &change) {
                (Some(own), Some(c)) => {
                    let changed = own.apply(c, seq);
                    if own.seq() <= shared_seq {
                        sub.own_view = None;
                    }
                    changed
                }
                _ => shared,
            };
            if tell && Some(*id) != except && sub.outbox.push(frame.clone()).is_ok() {
                sent += 1;
            }
        }
        self.count_sent_frames(sent, frame);
    }

    /// Brings every settled socket to `truth` with the adds and removals it lacks. False
    /// when the shared view is already newer than `truth` (frames overtook the read).
    fn reconcile(&mut self, truth: PresenceView) -> bool {
        if self.view.as_ref().is_some_and(|v| v.seq() > truth.seq()) {
            return false;
        }
        let channel = self.key.name.as_str();
        let mut frames_sent = 0usize;
        for sub in self.subscribers.values_mut() {
            if sub.pending.is_some() {
                continue;
            }
            let Some(told) = sub.own_view.as_ref().or(self.view.as_ref()) else {
                continue;
            };
            if told.seq() > truth.seq() {
                continue;
            }
            for frame in told.frames_to(&truth, channel) {
                if sub.outbox.push(frame).is_ok() {
                    frames_sent += 1;
                }
            }
            sub.own_view = None;
        }
        if frames_sent > 0 {
            tracing::info!(channel = %channel, frames = frames_sent, "presence members reconciled with the cluster");
        }
        self.view = Some(truth);
        true
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
                    own_view: None,
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
                own_view: None,
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
        // What the socket was just told: the ledger's snapshot, or (ledger away) this node's
        // members, which only a reconcile can put right.
        let mut told = match msg.members {
            Some(members) => PresenceView::new(members, msg.seq.unwrap_or(0)),
            None => PresenceView::new(
                self.members
                    .iter()
                    .map(|(id, info)| (id.to_owned(), info.to_owned())),
                0,
            ),
        };
        for (seq, frame) in held {
            let tell = match MemberChange::parse(&frame) {
                Some(change) => told.apply(&change, seq),
                None => seq > told.seq(),
            };
            if tell {
                self.send_to(&outbox, frame);
            }
        }
        self.settle_view(msg.socket_id, told, msg.seq.is_some());
        if self.key.name.is_cache() {
            self.send_cached(&outbox);
        }
    }
}

impl ChannelActor {
    /// A newly joined socket's view becomes the channel's shared view if there is none, is
    /// dropped if the shared view already includes it, else is kept as the socket's own.
    fn settle_view(&mut self, socket: SocketId, told: PresenceView, from_ledger: bool) {
        let own = match &self.view {
            None if from_ledger => {
                self.view = Some(told);
                None
            }
            Some(view) if from_ledger && told.seq() <= view.seq() => None,
            _ => Some(told),
        };
        if let Some(sub) = self.subscribers.get_mut(&socket) {
            sub.own_view = own;
        }
    }
}

impl Handler<Reconcile> for ChannelActor {
    type Result = bool;
    fn handle(&mut self, msg: Reconcile, _: &mut Context<Self>) -> bool {
        self.reconcile(msg.view)
    }
}

impl Handler<ListMembers> for ChannelActor {
    type Result = Vec<UserId>;
    fn handle(&mut self, _: ListMembers, _: &mut Context<Self>) -> Vec<UserId> {
        self.members.ids()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use actix::Addr;
    use bellhop_protocol::{AppId, ChannelName};
    use serde_json::value::RawValue;

    use super::*;
    use crate::outbox::{outbox, Frame, Next, OutboxReceiver};

    fn info() -> Box<RawValue> {
        RawValue::from_string("{}".into()).unwrap()
    }

    fn clustered_presence() -> Addr<ChannelActor> {
        let key = ChannelKey {
            app: AppId::parse("1").unwrap(),
            name: ChannelName::parse("presence-floor").unwrap(),
        };
        ChannelActor::new(key, 1, Default::default(), Weak::new(), None, true).start()
    }

    /// Joins socket `n` with the ledger's snapshot `members` as of member frame `seq`.
    async fn join(addr: &Addr<ChannelActor>, n: u64, members: &[&str], seq: u64) -> OutboxReceiver {
        let (tx, rx) = outbox(64);
        let socket_id = SocketId::new(n, n);
        addr.send(Subscribe {
            socket_id,
            outbox: tx,
            member: None,
            max_members: 100,
            subscription_count: false,
            cluster_members: None,
            pending: true,
        })
        .await
        .unwrap();
        let members = members.iter().map(|m| (m.to_string(), info())).collect();
        addr.send(Joined {
            socket_id,
            members: Some(members),
            seq: Some(seq),
        })
        .await
        .unwrap();
        rx
    }

    async fn member_frame(addr: &Addr<ChannelActor>, frame: String, seq: u64) {
        addr.send(Publish {
            frame: frame.into(),
            except: None,
            from: None,
            member_seq: Some(seq),
        })
        .await
        .unwrap();
    }

    /// The member changes queued for a socket, as "+id" / "-id".
    async fn heard(rx: &OutboxReceiver) -> Vec<String> {
        let mut buf = VecDeque::new();
        let ready = futures_util::FutureExt::now_or_never(rx.recv(&mut buf));
        if !matches!(ready, Some(Next::Frames)) {
            return Vec::new();
        }
        buf.into_iter()
            .filter_map(|f| match f {
                Frame::Text(t) => MemberChange::parse(&t),
                Frame::Pong(_) => None,
            })
            .map(|c| match c {
                MemberChange::Added { user_id, .. } => format!("+{user_id}"),
                MemberChange::Removed { user_id } => format!("-{user_id}"),
            })
            .collect()
    }

    const CH: &str = "presence-floor";

    #[actix::test]
    async fn member_frames_that_tell_nothing_new_are_dropped() {
        let addr = clustered_presence();
        let rx = join(&addr, 1, &["a", "b"], 100).await;
        heard(&rx).await;
        member_frame(&addr, server::member_added(CH, "a", &info()), 101).await;
        member_frame(&addr, server::member_removed(CH, "zz"), 102).await;
        member_frame(&addr, server::member_added(CH, "c", &info()), 103).await;
        member_frame(&addr, server::member_added(CH, "d", &info()), 99).await;
        assert_eq!(heard(&rx).await, ["+c"]);
    }

    #[actix::test]
    async fn a_reconcile_tells_each_socket_its_own_difference() {
        let addr = clustered_presence();
        let old = join(&addr, 1, &["a", "b"], 100).await;
        member_frame(&addr, server::member_added(CH, "c", &info()), 101).await;
        // A socket whose snapshot is ahead of the frames that reached the actor.
        let ahead = join(&addr, 2, &["a", "b", "c", "d"], 102).await;
        heard(&old).await;
        heard(&ahead).await;
        let stale = PresenceView::new([("a".to_string(), info())], 100);
        assert!(
            !addr.send(Reconcile { view: stale }).await.unwrap(),
            "a read older than the view is refused"
        );
        let truth = PresenceView::new(
            [("a".to_string(), info()), ("e".to_string(), info())],
            5_000,
        );
        assert!(addr.send(Reconcile { view: truth }).await.unwrap());
        assert_eq!(heard(&old).await, ["-b", "-c", "+e"]);
        assert_eq!(heard(&ahead).await, ["-b", "-c", "-d", "+e"]);
        // Frames older than the truth are in it already.
        member_frame(&addr, server::member_added(CH, "d", &info()), 4_000).await;
        member_frame(&addr, server::member_added(CH, "f", &info()), 5_001).await;
        assert_eq!(heard(&old).await, ["+f"]);
        assert_eq!(heard(&ahead).await, ["+f"]);
    }

    #[actix::test]
    async fn held_frames_are_filtered_against_the_joining_sockets_snapshot() {
        let addr = clustered_presence();
        let (tx, rx) = outbox(64);
        let socket_id = SocketId::new(7, 7);
        addr.send(Subscribe {
            socket_id,
            outbox: tx,
            member: None,
            max_members: 100,
            subscription_count: false,
            cluster_members: None,
            pending: true,
        })
        .await
        .unwrap();
        member_frame(&addr, server::member_added(CH, "a", &info()), 10).await;
        member_frame(&addr, server::member_added(CH, "b", &info()), 11).await;
        member_frame(&addr, server::member_added(CH, "a", &info()), 12).await;
        addr.send(Joined {
            socket_id,
            members: Some(vec![("a".to_string(), info())]),
            seq: Some(10),
        })
        .await
        .unwrap();
        assert_eq!(heard(&rx).await, ["+b"], "b is news; a is in the snapshot");
    }
}
