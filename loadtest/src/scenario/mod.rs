//! One module per scenario. Each takes the target and its own bounded arguments.

pub mod churn;
pub mod client_events;
pub mod connect;
pub mod fanout;
pub mod notify;
pub mod presence_churn;
pub mod trigger;

use std::time::Duration;

/// Paces a loop at `per_sec` iterations per second without drifting.
pub struct Pace {
    start: tokio::time::Instant,
    interval: Duration,
    n: u64,
}

impl Pace {
    pub fn new(per_sec: f64) -> Self {
        Self {
            start: tokio::time::Instant::now(),
            interval: Duration::from_secs_f64(1.0 / per_sec.max(1e-6)),
            n: 0,
        }
    }

    pub async fn tick(&mut self) {
        let due = self.start + self.interval.mul_f64(self.n as f64);
        self.n += 1;
        tokio::time::sleep_until(due).await;
    }
}
