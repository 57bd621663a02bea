//! Puts the presence members that this node's sockets were told right with the ledger after a
//! gap in what they heard: Redis came back empty (the ledger was rebuilt, and the members who
//! left during the outage were never announced), or this node's bus subscription dropped
//! (member frames published meanwhile never arrived). Each live presence channel reads the
//! ledger's members with their frame number and its actor tells each socket the difference
//! (see [`crate::channel::messages::Reconcile`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::Ledger;
use crate::channel::ChannelRegistry;

/// Reads a channel again at most this many times when its frames overtake the read.
const ATTEMPTS: usize = 5;

/// Waits for a request, lets the cluster settle for `settle` (every node rebuilds on its
/// next beat), then reconciles every live presence channel; requests during a pass start
/// another one after it.
pub async fn run(
    ledger: Arc<Ledger>,
    registry: Arc<ChannelRegistry>,
    requests: Arc<Notify>,
    settle: Duration,
) {
    loop {
        requests.notified().await;
        tokio::time::sleep(settle).await;
        for key in registry.presence_channels() {
            for _ in 0..ATTEMPTS {
                let truth = match ledger.presence_truth(&key.app, &key.name).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(channel = %key.name.as_str(), error = %e, "cannot reconcile presence yet");
                        requests.notify_one();
                        break;
                    }
                };
                if registry.reconcile(&key, truth).await {
                    break;
                }
            }
        }
    }
}
