//! The Redis bus: PUBLISH on one channel per cluster (`{prefix}:bus`), and a subscriber task
//! that reconnects after Redis restarts or drops, delivering what other nodes published to
//! this node's channels.
//!
//! A publish goes through one script (`publish.lua`) that first checks that every node that
//! must hear it is subscribed right now, and publishes nothing otherwise: PUBLISH alone
//! answers "accepted" even when a node that is alive has not subscribed again yet after
//! Redis came back, and its subscribers would never see the event.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::ledger::now_ms;
use super::{Bus, BusError, Envelope};

const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// The subscriber retries at most this often while Redis is away: every second it is not
/// subscribed, triggers to its cluster are refused.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

static PUBLISH: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("publish.lua")));

/// How the bus tells a live node from a dead one: nodes beat every `beat`; one silent for
/// `dead_after` is dead.
#[derive(Debug, Clone, Copy)]
pub struct BusTiming {
    pub beat: Duration,
    pub dead_after: Duration,
}

/// What this node knows of the others, for the moments Redis cannot say (it came back empty).
struct Peers {
    /// The live nodes as last read from Redis.
    known: Mutex<Vec<String>>,
    /// Until this time (ms), this node is back from an outage of its own and asks that every
    /// node it knew be listening.
    recovering_until: AtomicU64,
}

impl Peers {
    fn recovering(&self) -> bool {
        now_ms() < self.recovering_until.load(Ordering::Relaxed)
    }

    fn outage(&self, timing: &BusTiming) {
        let until = now_ms() + timing.dead_after.as_millis() as u64;
        self.recovering_until.fetch_max(until, Ordering::Relaxed);
    }
}

pub struct RedisBus {
    client: redis::Client,
    publisher: ConnectionManager,
    prefix: String,
    node: String,
    timing: BusTiming,
    subscribed: Arc<AtomicBool>,
    peers: Arc<Peers>,
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(PUBLISH_TIMEOUT))
        .set_number_of_retries(2)
}

impl RedisBus {
    /// Connects (failing fast if Redis cannot be reached now) and starts the subscriber,
    /// which hands every envelope from another node to `deliver`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        node: String,
        timing: BusTiming,
        resubscribed: Arc<tokio::sync::Notify>,
        deliver: impl Fn(Envelope) + Send + Sync + 'static,
    ) -> Result<Arc<Self>, BusError> {
        let client = redis::Client::open(url).map_err(|e| BusError::Unavailable(e.to_string()))?;
        let publisher = tokio::time::timeout(
            Duration::from_secs(5),
            ConnectionManager::new_with_config(client.clone(), manager_config()),
        )
        .await
        .map_err(|_| BusError::Unavailable("timed out connecting to Redis".into()))?
        .map_err(|e| BusError::Unavailable(e.to_string()))?;
        let subscribed = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Peers {
            known: Mutex::new(Vec::new()),
            recovering_until: AtomicU64::new(0),
        });
        let bus = Arc::new(Self {
            client: client.clone(),
            publisher,
            prefix: prefix.to_owned(),
            node: node.clone(),
            timing,
            subscribed: subscribed.clone(),
            peers: peers.clone(),
        });
        tokio::spawn(subscribe(
            client,
            Channels::new(prefix, &node),
            node,
            (subscribed.clone(), peers, timing, resubscribed),
            Arc::new(deliver),
        ));
        tokio::spawn(follow_peers(Arc::downgrade(&bus)));
        // Readiness waits for the subscription, so a fresh node never misses what others send.
        for _ in 0..50 {
            if subscribed.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(bus)
    }

    /// A new connection manager to the same Redis, for the ledger.
    pub async fn connection(&self) -> Result<ConnectionManager, BusError> {
        ConnectionManager::new_with_config(self.client.clone(), manager_config())
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))
    }
}

/// The bus channel and this node's marker channel.
struct Channels {
    bus: String,
    marker: String,
}

impl Channels {
    fn new(prefix: &str, node: &str) -> Self {
        Self {
            bus: format!("{prefix}:bus"),
            marker: format!("{prefix}:node:{node}"),
        }
    }
}

async fn subscribe(
    client: redis::Client,
    channels: Channels,
    node: String,
    (subscribed, peers, timing, resubscribed): (
        Arc<AtomicBool>,
        Arc<Peers>,
        BusTiming,
        Arc<tokio::sync::Notify>,
    ),
    deliver: Arc<dyn Fn(Envelope) + Send + Sync>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut dropped = false;
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                // The marker second: once it is there, the bus subscription is too.
                if pubsub.subscribe(&channels.bus).await.is_ok()
                    && pubsub.subscribe(&channels.marker).await.is_ok()
                {
                    subscribed.store(true, Ordering::Relaxed);
                    backoff = Duration::from_millis(100);
                    tracing::info!(channel = %channels.bus, "cluster bus subscribed");
                    if std::mem::take(&mut dropped) {
                        // Member frames published while away never came: put presence right.
                        resubscribed.notify_one();
                    }
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        if msg.get_channel_name() != channels.bus {
                            continue;
                        }
                        match Envelope::decode(msg.get_payload_bytes()) {
                            Ok(env) if env.origin != node => deliver(env),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "dropped a malformed bus message"),
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cluster bus cannot reach Redis"),
        }
        peers.outage(&timing);
        dropped = true;
        if subscribed.swap(false, Ordering::Relaxed) {
            tracing::warn!("cluster bus lost Redis; reconnecting");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Reads the live nodes once a beat, so that this node knows whom to wait for if Redis
/// comes back empty.
async fn follow_peers(bus: std::sync::Weak<RedisBus>) {
    loop {
        let Some(b) = bus.upgrade() else { return };
        let beat = b.timing.beat;
        if b.healthy() {
            let _ = b.run(Vec::new()).await;
        }
        drop(b);
        tokio::time::sleep(beat).await;
    }
}

impl RedisBus {
    /// Runs the publish script once more if the first try fails: after Redis comes back, the
    /// first command on a connection that broke fails while the manager reconnects.
    async fn run(&self, messages: Vec<Vec<u8>>) -> Result<(), BusError> {
        let known = serde_json::to_string(&*self.peers.known.lock()).unwrap_or_default();
        let mut invocation = PUBLISH.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(&self.node)
            .arg(2 * self.timing.beat.as_millis() as u64)
            .arg(self.timing.dead_after.as_millis() as u64)
            .arg(if self.peers.recovering() { "1" } else { "0" })
            .arg(known);
        for m in &messages {
            invocation.arg(m.as_slice());
        }
        let mut last = None;
        for _ in 0..2 {
            let mut conn = self.publisher.clone();
            let call = invocation.invoke_async::<(i64, String)>(&mut conn);
            match tokio::time::timeout(PUBLISH_TIMEOUT, call).await {
                Ok(Ok(answer)) => return self.answered(answer),
                Ok(Err(e)) => last = Some(BusError::Unavailable(e.to_string())),
                Err(_) => {
                    last = Some(BusError::Unavailable("Redis did not answer in time".into()));
                    break;
                }
            }
        }
        self.peers.outage(&self.timing);
        Err(last.unwrap_or_else(|| BusError::Unavailable("Redis refused".into())))
    }

    fn answered(&self, (published, detail): (i64, String)) -> Result<(), BusError> {
        if published == 0 {
            return Err(BusError::Unavailable(format!(
                "node {detail} is not listening to the cluster bus yet"
            )));
        }
        if let Ok(mut live) = serde_json::from_str::<Vec<String>>(&detail) {
            live.retain(|n| *n != self.node);
            *self.peers.known.lock() = live;
        }
        Ok(())
    }
}

impl Bus for RedisBus {
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), BusError>> {
        self.publish_many(vec![envelope])
    }

    fn publish_many(&self, envelopes: Vec<Envelope>) -> BoxFuture<'_, Result<(), BusError>> {
        let messages: Vec<Vec<u8>> = envelopes.iter().map(Envelope::encode).collect();
        Box::pin(async move {
            if messages.is_empty() {
                return Ok(());
            }
            self.run(messages).await
        })
    }

    fn healthy(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }
}
