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
    /// Records how much of the run the host took from this VM's cores.
    pub fn add_host_steal(&mut self, steal: Value) {
        if let Some(ms) = steal["per_core_ms"].as_array() {
            let cores: Vec<String> = ms
                .iter()
                .enumerate()
                .map(|(i, v)| format!("cpu{i} {} ms", v.as_f64().unwrap_or(0.0)))
                .collect();
            self.summary.push(format!(
                "host steal during the run: {} (worst core {} %)",
                cores.join(", "),
                steal["max_percent"]
            ));
        }
        self.json["host_steal"] = steal;
    }

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
