//! The Redis bus: PUBLISH on one channel per cluster (`{prefix}:bus`), and a subscriber task
//! that reconnects with back-off after Redis restarts or drops, delivering what other nodes
//! published to this node's channels.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Bus, BusError, Envelope};

const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

pub struct RedisBus {
    client: redis::Client,
    publisher: ConnectionManager,
    channel: String,
    subscribed: Arc<AtomicBool>,
}

impl RedisBus {
    /// Connects (failing fast if Redis cannot be reached now) and starts the subscriber,
    /// which hands every envelope from another node to `deliver`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        node: String,
        deliver: impl Fn(Envelope) + Send + Sync + 'static,
    ) -> Result<Arc<Self>, BusError> {
        let client = redis::Client::open(url).map_err(|e| BusError::Unavailable(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(PUBLISH_TIMEOUT))
            .set_number_of_retries(2);
        let publisher = tokio::time::timeout(
            Duration::from_secs(5),
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| BusError::Unavailable("timed out connecting to Redis".into()))?
        .map_err(|e| BusError::Unavailable(e.to_string()))?;
        let channel = format!("{prefix}:bus");
        let subscribed = Arc::new(AtomicBool::new(false));
        tokio::spawn(subscribe(
            client.clone(),
            channel.clone(),
            node,
            subscribed.clone(),
            Arc::new(deliver),
        ));
        // Readiness waits for the subscription, so a fresh node never misses what others send.
        for _ in 0..50 {
            if subscribed.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Arc::new(Self {
            client,
            publisher,
            channel,
            subscribed,
        }))
    }
}

impl RedisBus {
    /// A new connection manager to the same Redis, for the ledger.
    pub async fn connection(&self) -> Result<ConnectionManager, BusError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(PUBLISH_TIMEOUT))
            .set_number_of_retries(2);
        ConnectionManager::new_with_config(self.client.clone(), config)
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))
    }
}

async fn subscribe(
    client: redis::Client,
    channel: String,
    node: String,
    subscribed: Arc<AtomicBool>,
    deliver: Arc<dyn Fn(Envelope) + Send + Sync>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if pubsub.subscribe(&channel).await.is_ok() {
                    subscribed.store(true, Ordering::Relaxed);
                    backoff = Duration::from_millis(100);
                    tracing::info!(channel = %channel, "cluster bus subscribed");
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
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
        if subscribed.swap(false, Ordering::Relaxed) {
            tracing::warn!("cluster bus lost Redis; reconnecting");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

impl RedisBus {
    /// Sends `pipe` once more if the first try fails: after Redis comes back, the first
    /// command on a connection that broke fails while the manager reconnects.
    async fn send(&self, pipe: &redis::Pipeline) -> Result<(), BusError> {
        let mut last = None;
        for _ in 0..2 {
            let mut conn = self.publisher.clone();
            match tokio::time::timeout(PUBLISH_TIMEOUT, pipe.query_async::<()>(&mut conn)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = Some(BusError::Unavailable(e.to_string())),
                Err(_) => return Err(BusError::Unavailable("Redis did not answer in time".into())),
            }
        }
        Err(last.unwrap_or_else(|| BusError::Unavailable("Redis refused".into())))
    }
}

impl Bus for RedisBus {
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), BusError>> {
        self.publish_many(vec![envelope])
    }

    fn publish_many(&self, envelopes: Vec<Envelope>) -> BoxFuture<'_, Result<(), BusError>> {
        let mut pipe = redis::pipe();
        for e in &envelopes {
            pipe.cmd("PUBLISH")
                .arg(&self.channel)
                .arg(e.encode())
                .ignore();
        }
        Box::pin(async move {
            if envelopes.is_empty() {
                return Ok(());
            }
            self.send(&pipe).await
        })
    }

    fn healthy(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }
}
