//! The registry of live channels: the only place that starts or stops a [`ChannelActor`].
//!
//! Retiring races with subscribing: a `Subscribe` may already sit in the mailbox of an actor
//! that has just become empty. Every `Subscribe` is sent while the registry lock is held and
//! counted in the entry; an empty actor retires only if it has handled as many as were sent,
//! and it checks that under the same lock. So no subscription is ever sent to a stopped actor.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use actix::{Actor, Addr, ArbiterHandle, Recipient};
use bellhop_protocol::{AppId, ChannelName, UserId};
use bytestring::ByteString;
use parking_lot::Mutex;

use super::actor::ChannelActor;
use super::messages::{ListMembers, Publish, Reconcile, Subscribe, Unsubscribe};
use super::presence_view::PresenceView;
use crate::webhooks::Observed;

/// A channel is unique per app: one app's clients never reach another app's channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    pub app: AppId,
    pub name: ChannelName,
}

/// Counts a channel actor keeps current, so that queries need not wait on the actor.
#[derive(Debug, Default)]
pub struct ChannelCounters {
    pub subscriptions: AtomicU64,
    pub users: AtomicU64,
}

/// A point-in-time view of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelStats {
    pub subscription_count: u64,
    pub user_count: u64,
}

struct Entry {
    addr: Addr<ChannelActor>,
    counters: Arc<ChannelCounters>,
    generation: u64,
    subscribes_sent: u64,
}

pub struct ChannelRegistry {
    channels: Mutex<HashMap<ChannelKey, Entry>>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: AtomicUsize,
    next_generation: AtomicU64,
    /// Where channel facts (occupied, vacated, members) go for webhooks.
    observer: Option<Recipient<Observed>>,
    /// The last server event of each cache channel, kept whether or not anyone is subscribed.
    caches: Mutex<HashMap<ChannelKey, (ByteString, Instant)>>,
    /// Presence, occupancy and counts are decided by the cluster ledger, not by the actors.
    clustered: bool,
}

impl ChannelRegistry {
    /// Channel actors are spread over `arbiters` (threads) round-robin.
    pub fn new(
        arbiters: Vec<ArbiterHandle>,
        observer: Option<Recipient<Observed>>,
        clustered: bool,
    ) -> Arc<Self> {
        assert!(
            !arbiters.is_empty(),
            "the registry needs at least one arbiter"
        );
        Arc::new(Self {
            channels: Mutex::new(HashMap::new()),
            arbiters,
            next_arbiter: AtomicUsize::new(0),
            next_generation: AtomicU64::new(1),
            observer,
            caches: Mutex::new(HashMap::new()),
            clustered,
        })
    }

    /// Subscribes through the channel's actor, starting one if the channel is not live.
    /// Returns the actor so the connection can send to it directly while subscribed.
    pub fn subscribe(self: &Arc<Self>, key: &ChannelKey, msg: Subscribe) -> Addr<ChannelActor> {
        let mut channels = self.channels.lock();
        let entry = channels
            .entry(key.clone())
            .or_insert_with(|| self.start(key.clone()));
        entry.subscribes_sent += 1;
        entry.addr.do_send(msg);
        entry.addr.clone()
    }

    fn start(self: &Arc<Self>, key: ChannelKey) -> Entry {
        let counters = Arc::new(ChannelCounters::default());
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let i = self.next_arbiter.fetch_add(1, Ordering::Relaxed) % self.arbiters.len();
        let registry: Weak<Self> = Arc::downgrade(self);
        let actor_counters = counters.clone();
        let observer = self.observer.clone();
        let clustered = self.clustered;
        let addr = ChannelActor::start_in_arbiter(&self.arbiters[i], move |_| {
            ChannelActor::new(
                key,
                generation,
                actor_counters,
                registry,
                observer,
                clustered,
            )
        });
        Entry {
            addr,
            counters,
            generation,
            subscribes_sent: 0,
        }
    }

    /// Called by an empty actor. True when it may stop: no `Subscribe` is still on its way.
    pub(super) fn try_retire(
        &self,
        key: &ChannelKey,
        generation: u64,
        subscribes_seen: u64,
    ) -> bool {
        let mut channels = self.channels.lock();
        match channels.get(key) {
            Some(e) if e.generation == generation => {
                if e.subscribes_sent == subscribes_seen {
                    channels.remove(key);
                    true
                } else {
                    false
                }
            }
            // Not ours (already replaced): nothing can reach this actor any more.
            _ => true,
        }
    }

    pub fn unsubscribe(&self, key: &ChannelKey, msg: Unsubscribe) {
        if let Some(e) = self.channels.lock().get(key) {
            e.addr.do_send(msg);
        }
    }

    /// Sends an encoded frame to the channel's local subscribers. Returns false when the
    /// channel has none on this node.
    pub fn publish(&self, key: &ChannelKey, msg: Publish) -> bool {
        match self.channels.lock().get(key) {
            Some(e) => {
                e.addr.do_send(msg);
                true
            }
            None => false,
        }
    }

    /// Keeps `frame` as the cache channel's last event for `ttl`.
    pub fn remember(&self, key: &ChannelKey, frame: ByteString, ttl: Duration) {
        let now = Instant::now();
        let mut caches = self.caches.lock();
        // Expired entries are dropped now and then, so abandoned channels do not accumulate.
        if caches.len() % 1024 == 1023 {
            caches.retain(|_, (_, until)| *until > now);
        }
        caches.insert(key.clone(), (frame, now + ttl));
    }

    /// The cache channel's last event, unless it expired.
    pub fn cached(&self, key: &ChannelKey) -> Option<ByteString> {
        let caches = self.caches.lock();
        caches
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(f, _)| f.clone())
    }

    pub fn stats(&self, key: &ChannelKey) -> Option<ChannelStats> {
        self.channels
            .lock()
            .get(key)
            .and_then(|e| occupied(&e.counters))
    }

    /// Occupied channels of `app` whose names start with `prefix`.
    pub fn list(&self, app: &AppId, prefix: &str) -> Vec<(ChannelName, ChannelStats)> {
        let channels = self.channels.lock();
        let mut out: Vec<_> = channels
            .iter()
            .filter(|(k, _)| &k.app == app && k.name.as_str().starts_with(prefix))
            .filter_map(|(k, e)| occupied(&e.counters).map(|s| (k.name.clone(), s)))
            .collect();
        drop(channels);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The members of a presence channel (empty when it is not live).
    pub async fn members(&self, key: &ChannelKey) -> Vec<UserId> {
        let addr = self.channels.lock().get(key).map(|e| e.addr.clone());
        match addr {
            Some(addr) => addr.send(ListMembers).await.unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// The live presence channels on this node, all apps.
    pub fn presence_channels(&self) -> Vec<ChannelKey> {
        self.channels
            .lock()
            .keys()
            .filter(|k| k.name.is_presence())
            .cloned()
            .collect()
    }

    /// Brings the channel's sockets to `view` (see [`Reconcile`]). False when the channel
    /// moved past it and must be read again; true when done or nobody is there.
    pub async fn reconcile(&self, key: &ChannelKey, view: PresenceView) -> bool {
        let addr = self.channels.lock().get(key).map(|e| e.addr.clone());
        match addr {
            Some(addr) => addr.send(Reconcile { view }).await.unwrap_or(true),
            None => true,
        }
    }

    /// Live channel actors, all apps.
    pub fn len(&self) -> usize {
        self.channels.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn occupied(c: &ChannelCounters) -> Option<ChannelStats> {
    let subscription_count = c.subscriptions.load(Ordering::Relaxed);
    (subscription_count > 0).then(|| ChannelStats {
        subscription_count,
        user_count: c.users.load(Ordering::Relaxed),
    })
}
