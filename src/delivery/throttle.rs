//! Per-provider gates of an app: a send rate (`max_per_second` in the provider's config) and
//! a pause set when the provider answers with a Retry-After (429, or 503 with the header).
//! Clustered, both live in Redis, so every node counts against one budget and one node's 429
//! holds the provider for all of them; alone, this node keeps them in memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bellhop_protocol::AppId;
use parking_lot::Mutex;

use crate::apps::SecondWindow;
use crate::cluster::{now_ms, Ledger, LedgerError};

/// Whether a send may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// This second's budget is spent; the next one starts after this.
    Full(Duration),
    /// The provider asked for a pause; it ends after this.
    Paused(Duration),
}

#[derive(Default)]
struct Local {
    paused_until: Option<Instant>,
    sent: SecondWindow,
}

pub struct Throttle {
    ledger: Option<Arc<Ledger>>,
    local: Mutex<HashMap<(AppId, &'static str), Local>>,
}

impl Throttle {
    pub fn new(ledger: Option<Arc<Ledger>>) -> Self {
        Self {
            ledger,
            local: Mutex::new(HashMap::new()),
        }
    }

    pub async fn admit(
        &self,
        app: &AppId,
        provider: &'static str,
        per_second: Option<u32>,
    ) -> Result<Gate, LedgerError> {
        if let Some(l) = &self.ledger {
            return l.admit_provider(app, provider, per_second).await;
        }
        let now = now_ms();
        let mut all = self.local.lock();
        let g = all.entry((app.clone(), provider)).or_default();
        if let Some(until) = g.paused_until {
            match until.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => return Ok(Gate::Paused(left)),
                _ => g.paused_until = None,
            }
        }
        let Some(limit) = per_second else {
            return Ok(Gate::Open);
        };
        if g.sent.take(now / 1000, 1, limit.into()) {
            Ok(Gate::Open)
        } else {
            Ok(Gate::Full(Duration::from_millis(1000 - now % 1000)))
        }
    }

    pub async fn pause(
        &self,
        app: &AppId,
        provider: &'static str,
        pause: Duration,
    ) -> Result<(), LedgerError> {
        if let Some(l) = &self.ledger {
            return l.pause_provider(app, provider, pause).await;
        }
        let until = Instant::now() + pause;
        let mut all = self.local.lock();
        let g = all.entry((app.clone(), provider)).or_default();
        if g.paused_until.is_none_or(|u| u < until) {
            g.paused_until = Some(until);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_budget_refills_each_second_and_a_pause_holds_every_send() {
        let t = Throttle::new(None);
        let app = AppId::parse("1").unwrap();
        // Starts early in a second, so the five tries share one window.
        tokio::time::sleep(Duration::from_millis(1000 - now_ms() % 1000 + 10)).await;
        let mut open = 0;
        for _ in 0..5 {
            if t.admit(&app, "sms", Some(3)).await.unwrap() == Gate::Open {
                open += 1;
            }
        }
        assert_eq!(open, 3);
        match t.admit(&app, "sms", Some(3)).await.unwrap() {
            Gate::Full(wait) => assert!(wait <= Duration::from_secs(1)),
            g => panic!("{g:?}"),
        }
        assert_eq!(t.admit(&app, "zoho", None).await.unwrap(), Gate::Open);
        t.pause(&app, "zoho", Duration::from_secs(30))
            .await
            .unwrap();
        t.pause(&app, "zoho", Duration::from_secs(1)).await.unwrap();
        match t.admit(&app, "zoho", None).await.unwrap() {
            Gate::Paused(left) => assert!(left > Duration::from_secs(28), "{left:?}"),
            g => panic!("{g:?}"),
        }
        assert_eq!(
            t.admit(&AppId::parse("2").unwrap(), "zoho", None)
                .await
                .unwrap(),
            Gate::Open,
            "another app's provider is not paused"
        );
    }
}
