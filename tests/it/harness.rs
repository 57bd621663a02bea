//! Starts a bellhop process on a free port and stops it when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const APP_ID: &str = "100";
pub const KEY: &str = "test-key";
pub const SECRET: &str = "test-secret";
/// The operator token of servers started with [`Setup::admin`].
pub const ADMIN_TOKEN: &str = "admin-token-for-the-tests";

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    _dir: tempfile::TempDir,
}

/// What to start: environment variables and an optional TOML config file.
#[derive(Default, Clone)]
pub struct Setup {
    pub env: Vec<(String, String)>,
    pub toml: Option<String>,
    /// Reuse this data directory (and its SQLite store) instead of a fresh one.
    pub data_dir: Option<std::path::PathBuf>,
}

impl Setup {
    /// The default app (id 100, client events on), as most tests want it.
    pub fn new() -> Self {
        Self::default()
            .env("BELLHOP_APP_ID", APP_ID)
            .env("BELLHOP_APP_KEY", KEY)
            .env("BELLHOP_APP_SECRET", SECRET)
            .env("BELLHOP_APP_CLIENT_EVENTS", "true")
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn toml(mut self, t: &str) -> Self {
        self.toml = Some(t.into());
        self
    }

    /// Turns the operator API on (bearer [`ADMIN_TOKEN`]), for tests that read the job queue.
    pub fn admin(self) -> Self {
        self.env("BELLHOP_ADMIN_TOKEN", ADMIN_TOKEN)
    }

    pub fn data_dir(mut self, dir: &std::path::Path) -> Self {
        self.data_dir = Some(dir.to_owned());
        self
    }

    pub fn start(self) -> Server {
        Server::start(self)
    }
}

impl Server {
    pub fn start(setup: Setup) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bellhop"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("BELLHOP_HOST", "127.0.0.1")
            .env("BELLHOP_PORT", "0")
            .env("BELLHOP_METRICS_PORT", "0")
            .env("BELLHOP_WORKERS", "1")
            .env("BELLHOP_LOG", "warn")
            .env(
                "BELLHOP_DATA_DIR",
                setup.data_dir.as_deref().unwrap_or(dir.path()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(toml) = &setup.toml {
            let path = dir.path().join("bellhop.toml");
            std::fs::write(&path, toml).unwrap();
            cmd.env("BELLHOP_CONFIG", &path);
        }
        for (k, v) in &setup.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("bellhop binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let (mtx, mrx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                let listening = line
                    .strip_prefix("listening http://")
                    .or_else(|| line.strip_prefix("listening https://"));
                if let Some(addr) = listening {
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
                if let Some(rest) = line.strip_prefix("metrics http://") {
                    let addr = rest.trim_end_matches("/metrics");
                    let _ = mtx.send(addr.parse::<SocketAddr>().unwrap());
                }
            }
        });
        let metrics_addr = mrx.recv_timeout(Duration::from_secs(20)).ok();
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("bellhop did not report its address within 20 s");
            }
        };
        Server {
            child,
            addr,
            metrics_addr,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory in KB, from `/proc`.
    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status")
    }

    pub fn ws_url(&self, key: &str) -> String {
        format!(
            "ws://{}/app/{key}?protocol=7&client=it&version=1",
            self.addr
        )
    }

    /// Polls `/ready` until it answers `want`, for at most `wait`. True when it did.
    pub async fn ready_becomes(&self, want: u16, wait: Duration) -> bool {
        let http = reqwest::Client::new();
        let end = tokio::time::Instant::now() + wait;
        loop {
            if let Ok(r) = http.get(self.http("/ready")).send().await {
                if r.status().as_u16() == want {
                    return true;
                }
            }
            if tokio::time::Instant::now() > end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The job queue as `GET /admin/jobs` shows it (the server needs [`Setup::admin`]).
    pub async fn jobs(&self) -> serde_json::Value {
        let r = reqwest::Client::new()
            .get(self.http("/admin/jobs?limit=1000"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET /admin/jobs (is Setup::admin on?)");
        r.json().await.unwrap()
    }

    /// Waits (at most `secs`) until no job is running and none pending is due, and answers the
    /// jobs. A job that finished never runs again, and records its end only after its send
    /// returned, so what such jobs sent has all arrived: the sentinel for "nothing more was
    /// sent". A job waiting out a back-off (due later) does not count: wait for what it must
    /// send first.
    pub async fn due_jobs_finished(&self, secs: u64) -> Vec<serde_json::Value> {
        let end = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let list = self.jobs().await;
            let jobs = list["jobs"].as_array().unwrap().clone();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            let busy: Vec<&serde_json::Value> = jobs
                .iter()
                .filter(|j| {
                    j["state"] == "running"
                        || (j["state"] == "pending" && j["run_at"].as_i64().unwrap() <= now)
                })
                .collect();
            if busy.is_empty() {
                return jobs;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "jobs still due or running after {secs} s: {busy:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, …).
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status();
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits for the process to exit; its success, or None if still running after `secs`.
    pub fn wait_exit(&mut self, secs: u64) -> Option<bool> {
        for _ in 0..secs * 20 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.success());
            }
            std::thread::park_timeout(Duration::from_millis(50));
        }
        None
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `bellhop` with `args` and the given environment and returns (exit success, stdout+stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bellhop"))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
