//! Nodes of one cluster share published events through a [`Bus`]: the in-memory bus (one
//! node, the embedded default) or Redis pub/sub (`BELLHOP_REDIS_URL`). The bus carries
//! frames already encoded by the node that accepted the event; a node delivers what it
//! receives to its local channels and never re-publishes it.
//!
//! What must be counted across nodes — subscriptions, presence members, signed-in users,
//! connections — lives in the [`Ledger`] (Redis only), whose facts the [`Announcer`] turns into
//! member events, watchlist events and webhooks exactly once.

mod announce;
mod envelope;
mod ledger;
pub mod reconcile;
mod redis_bus;

use std::sync::Arc;

use futures_util::future::BoxFuture;

pub use announce::{Announcer, Fact};
pub use envelope::{Body, Envelope, EnvelopeError};
pub use ledger::{now_ms, Entry, Ledger, LedgerError, Op, Outcome, Timing};
pub use redis_bus::{BusTiming, RedisBus};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the cluster bus is unavailable: {0}")]
    Unavailable(String),
}

/// How events reach the other nodes.
pub trait Bus: Send + Sync + 'static {
    /// Hands `envelope` to every other node. `Ok` means every live node is listening and the
    /// broker accepted it for them; an error means no other node will see it (nothing was
    /// half-published), and the caller must say so rather than succeed.
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), BusError>>;

    /// Hands several envelopes to the other nodes in order, in one round trip where the
    /// broker allows it.
    fn publish_many(&self, envelopes: Vec<Envelope>) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            for e in envelopes {
                self.publish(e).await?;
            }
            Ok(())
        })
    }

    /// Whether the bus is connected (readiness).
    fn healthy(&self) -> bool;

    /// True when there are no other nodes, so callers can skip building envelopes.
    fn alone(&self) -> bool {
        false
    }
}

/// One node: nothing to share with.
pub struct MemoryBus;

impl Bus for MemoryBus {
    fn publish(&self, _: Envelope) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }

    fn healthy(&self) -> bool {
        true
    }

    fn alone(&self) -> bool {
        true
    }
}

pub type SharedBus = Arc<dyn Bus>;
