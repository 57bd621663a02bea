//! Per-provider gates of an app: a send rate (`max_per_second` in the provider's config) and a
//! pause set when the provider answers with a `Retry-After` (429, or 503 with the header).
//! Where the gates live is one interface, [`Gates`]: in this node's memory when alone
//! ([`memory`]), in Redis when clustered ([`redis`]), so every node counts against one budget
//! and one node's 429 holds the provider for all of them.

pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

/// Whether a send may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// This second's budget is spent; the next one starts after this.
    Full(Duration),
    /// The provider asked for a pause; it ends after this.
    Paused(Duration),
}

#[derive(Debug, thiserror::Error)]
#[error("the provider gate is unavailable: {0}")]
pub struct GateError(pub String);

/// Where an app's provider gates are kept.
pub trait Gates: Send + Sync {
    /// Counts one send against `provider`'s budget of `per_second` (`None`: no budget) unless
    /// the provider is paused or the budget is spent, in which case nothing is counted.
    fn admit<'a>(
        &'a self,
        app: &'a str,
        provider: &'a str,
        per_second: Option<u32>,
    ) -> BoxFuture<'a, Result<Gate, GateError>>;

    /// Pauses `provider` for `pause`, unless it is already paused for longer.
    fn pause<'a>(
        &'a self,
        app: &'a str,
        provider: &'a str,
        pause: Duration,
    ) -> BoxFuture<'a, Result<(), GateError>>;
}

/// What a send's turn came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    Go,
    /// Not now: the provider is paused, or the budget will not free up soon enough.
    Wait {
        reason: String,
        wait: Duration,
    },
    /// The gates cannot be read; try again shortly.
    Unknown(String),
}

pub struct Throttle {
    gates: Arc<dyn Gates>,
}

impl Throttle {
    pub fn new(gates: Arc<dyn Gates>) -> Self {
        Self { gates }
    }

    /// Waits in place for the provider's next second when its budget is spent (two seconds
    /// at most); answers a wait when the provider is paused or the wait would be longer.
    pub async fn turn(&self, app: &str, provider: &'static str, per_second: Option<u32>) -> Turn {
        if per_second.is_none() && provider == "in_app" {
            return Turn::Go;
        }
        let give_up = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let (why, wait) = match self.gates.admit(app, provider, per_second).await {
                Ok(Gate::Open) => return Turn::Go,
                Ok(Gate::Full(wait)) => ("rate", wait),
                Ok(Gate::Paused(wait)) => ("paused", wait),
                Err(e) => return Turn::Unknown(format!("{provider} rate gate unavailable: {e}")),
            };
            if why == "rate" && tokio::time::Instant::now() + wait < give_up {
                tokio::time::sleep(wait).await;
                continue;
            }
            crate::metrics::METRICS
                .provider_throttled
                .with_label_values(&[provider, why])
                .inc();
            let reason = match why {
                "paused" => format!(
                    "{provider} asked to pause; resuming in {} ms",
                    wait.as_millis()
                ),
                _ => format!("{provider} rate limit reached"),
            };
            return Turn::Wait { reason, wait };
        }
    }

    /// A provider that answered with a `Retry-After` is paused for every node until then.
    pub async fn pause(&self, app: &str, provider: &'static str, after: Duration) {
        if let Err(e) = self.gates.pause(app, provider, after).await {
            tracing::warn!(provider, error = %e, "cannot share the provider's pause");
        }
        tracing::info!(app_id = %app, provider, pause_ms = after.as_millis() as u64, "provider paused by its Retry-After");
    }
}
