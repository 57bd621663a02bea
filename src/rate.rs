//! Budgets counted in one-second windows (the HTTP API's events per second, a provider's
//! sends per second).

/// A budget that refills at the start of each second.
#[derive(Debug, Default, Clone, Copy)]
pub struct SecondWindow {
    second: u64,
    used: u64,
}

impl SecondWindow {
    /// Takes `n` from `second`'s budget of `per_second`; false (taking nothing) when they do
    /// not fit.
    pub fn take(&mut self, second: u64, n: u64, per_second: u64) -> bool {
        if self.second != second {
            *self = Self { second, used: 0 };
        }
        if self.used.saturating_add(n) > per_second {
            return false;
        }
        self.used += n;
        true
    }
}
