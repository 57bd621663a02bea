//! A run's result: a human summary and one JSON line.

use serde_json::Value;

pub struct Report {
    pub scenario: &'static str,
    /// False when the run saw losses, duplicates or failures it should not have.
    pub ok: bool,
    pub summary: Vec<String>,
    pub json: Value,
}

impl Report {
    pub fn print(&self) {
        println!(
            "== {} ({})",
            self.scenario,
            if self.ok { "ok" } else { "FAILED" }
        );
        for line in &self.summary {
            println!("   {line}");
        }
        let mut json = self.json.clone();
        json["scenario"] = self.scenario.into();
        json["ok"] = self.ok.into();
        println!("{json}");
    }
}
