//! Accepted against arrived: what every fault scenario counts, and the one line it reports
//! (`FAULT-REPORT {json}` on stderr), which `scripts/faults.sh` gathers into
//! `docs/reliability.md`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

/// How much longer than the test command's short form `scripts/faults.sh` runs each fault.
pub fn scale() -> u64 {
    std::env::var("BELLHOP_FAULTS_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// Ids the system accepted (a 2xx, a committed row) and the ids that arrived, with repeats.
#[derive(Default, Debug)]
pub struct Tally {
    pub accepted: Vec<u64>,
    pub refused: u64,
    arrived: BTreeMap<u64, u32>,
}

impl Tally {
    pub fn arrived(&mut self, id: u64) {
        *self.arrived.entry(id).or_default() += 1;
    }

    /// How many times `id` arrived.
    pub fn arrived_count(&self, id: u64) -> u32 {
        self.arrived.get(&id).copied().unwrap_or(0)
    }

    /// Accepted ids that never arrived.
    pub fn lost(&self) -> Vec<u64> {
        self.accepted
            .iter()
            .copied()
            .filter(|id| !self.arrived.contains_key(id))
            .collect()
    }

    /// Ids that arrived more than once.
    pub fn duplicated(&self) -> Vec<u64> {
        self.arrived
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Prints the report line and fails on any loss or duplicate.
    pub fn report(&self, scenario: &str, recovery: Option<Duration>, grown_kb: Option<u64>) {
        let line = json!({
            "scenario": scenario,
            "accepted": self.accepted.len(),
            "refused": self.refused,
            "delivered": self.arrived.len(),
            "lost": self.lost().len(),
            "duplicated": self.duplicated().len(),
            "recovery_s": recovery.map(|d| (d.as_secs_f64() * 10.0).round() / 10.0),
            "grown_kb": grown_kb,
        });
        eprintln!("FAULT-REPORT {line}");
        assert!(self.lost().is_empty(), "{scenario}: lost {:?}", self.lost());
        assert!(
            self.duplicated().is_empty(),
            "{scenario}: duplicated {:?}",
            self.duplicated()
        );
    }
}

/// A memory-only scenario's report line.
pub fn report_memory(scenario: &str, idle_kb: u64, grown_kb: u64) {
    let line = json!({"scenario": scenario, "rss_kb": idle_kb + grown_kb, "grown_kb": grown_kb});
    eprintln!("FAULT-REPORT {line}");
}
