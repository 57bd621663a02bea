//! When a failed job runs again: exponential back-off with jitter, a server's `Retry-After`
//! honoured, and nothing after the job's expiry. Which failures retry is decided elsewhere
//! (each provider classifies its own responses); this module only decides when.

use std::time::Duration;

/// The schedule of one job kind.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub base: Duration,
    pub max: Duration,
}

impl Schedule {
    pub const WEBHOOK: Schedule = Schedule {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };

    /// Delay before attempt `attempt + 1`, after `attempt` failures (1-based). `unit` is a
    /// uniform random number in [0, 1) that spreads retries over the upper half of the delay,
    /// so that a burst of failures does not retry in lock-step.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.max);
        capped.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }
}

/// When to run next, in Unix ms, or `None` when the job has expired and is dead.
pub fn next_run(
    schedule: Schedule,
    now_ms: i64,
    attempt: u32,
    retry_after: Option<Duration>,
    expires_at_ms: i64,
    unit: f64,
) -> Option<i64> {
    let backoff = schedule.delay(attempt, unit);
    let delay = retry_after.map_or(backoff, |ra| ra.max(backoff));
    let at = now_ms.saturating_add(delay.as_millis() as i64);
    (at <= expires_at_ms).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_caps() {
        let s = Schedule::WEBHOOK;
        assert_eq!(s.delay(1, 1.0), Duration::from_secs(1));
        assert_eq!(s.delay(2, 1.0), Duration::from_secs(2));
        assert_eq!(s.delay(5, 1.0), Duration::from_secs(16));
        assert_eq!(s.delay(30, 1.0), Duration::from_secs(60));
        assert_eq!(s.delay(2, 0.0), Duration::from_secs(1));
    }

    #[test]
    fn retry_after_is_honoured_and_expiry_ends_it() {
        let s = Schedule::WEBHOOK;
        assert_eq!(
            next_run(s, 1000, 1, Some(Duration::from_secs(30)), 100_000, 0.5),
            Some(31_000)
        );
        assert_eq!(next_run(s, 1000, 1, None, 100_000, 1.0), Some(2000));
        assert_eq!(next_run(s, 1000, 1, None, 1500, 1.0), None);
    }

    #[test]
    fn at_least_five_minutes_of_retries_for_webhooks() {
        // The sum of delays until the 15-minute expiry spans more than 5 minutes.
        let s = Schedule::WEBHOOK;
        let (mut t, mut attempt) = (0i64, 1u32);
        while let Some(next) = next_run(s, t, attempt, None, 15 * 60_000, 0.0) {
            t = next;
            attempt += 1;
        }
        assert!(t >= 5 * 60_000, "retries stopped after {t} ms");
    }
}
