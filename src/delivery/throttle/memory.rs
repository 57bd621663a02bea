//! Provider gates in this node's memory: a node alone counts its own sends and keeps its own
//! pauses.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;

use super::{Gate, GateError, Gates};
use crate::rate::SecondWindow;
use crate::store::now_ms;

#[derive(Default)]
struct Local {
    paused_until: Option<Instant>,
    sent: SecondWindow,
}

#[derive(Default)]
pub struct MemoryGates {
    gates: Mutex<HashMap<(String, String), Local>>,
}

impl MemoryGates {
    fn admit_now(&self, app: &str, provider: &str, per_second: Option<u32>) -> Gate {
        let now = now_ms() as u64;
        let mut all = self.gates.lock();
        let g = all
            .entry((app.to_owned(), provider.to_owned()))
            .or_default();
        if let Some(until) = g.paused_until {
            match until.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => return Gate::Paused(left),
                _ => g.paused_until = None,
            }
        }
        let Some(limit) = per_second else {
            return Gate::Open;
        };
        if g.sent.take(now / 1000, 1, limit.into()) {
            Gate::Open
        } else {
            Gate::Full(Duration::from_millis(1000 - now % 1000))
        }
    }
}

impl Gates for MemoryGates {
    fn admit<'a>(
        &'a self,
        app: &'a str,
        provider: &'a str,
        per_second: Option<u32>,
    ) -> BoxFuture<'a, Result<Gate, GateError>> {
        let gate = self.admit_now(app, provider, per_second);
        Box::pin(async move { Ok(gate) })
    }

    fn pause<'a>(
        &'a self,
        app: &'a str,
        provider: &'a str,
        pause: Duration,
    ) -> BoxFuture<'a, Result<(), GateError>> {
        let until = Instant::now() + pause;
        let mut all = self.gates.lock();
        let g = all
            .entry((app.to_owned(), provider.to_owned()))
            .or_default();
        if g.paused_until.is_none_or(|u| u < until) {
            g.paused_until = Some(until);
        }
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_budget_per_second_and_a_pause() {
        let g = MemoryGates::default();
        assert_eq!(g.admit("1", "sms", None).await.unwrap(), Gate::Open);
        for _ in 0..3 {
            if let Gate::Full(_) = g.admit("1", "sms", Some(3)).await.unwrap() {
                // The second turned over mid-test: start again in the new one.
                return;
            }
        }
        assert!(matches!(
            g.admit("1", "sms", Some(3)).await.unwrap(),
            Gate::Full(_) | Gate::Open
        ));
        g.pause("1", "sms", Duration::from_secs(30)).await.unwrap();
        assert!(
            matches!(g.admit("1", "sms", Some(3)).await.unwrap(), Gate::Paused(d) if d > Duration::from_secs(29))
        );
        assert_eq!(
            g.admit("2", "sms", Some(3)).await.unwrap(),
            Gate::Open,
            "per app"
        );
    }
}
