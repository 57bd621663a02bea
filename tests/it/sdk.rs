//! Runs the Node test suite in `tests/sdk/` (the real `pusher-js` and `pusher` packages)
//! against the bellhop binary built for these tests.

use std::path::Path;
use std::process::Command;

/// Installs the pinned npm packages of `tests/sdk` once (the examples use them too).
pub fn ensure_node_modules() {
    static ONCE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    if !*done && !dir.join("node_modules").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm is installed (Node 18+)");
        assert!(status.success(), "npm ci failed in tests/sdk");
    }
    *done = true;
}

#[test]
fn official_sdks_work_unchanged() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    ensure_node_modules();
    let out = Command::new("npm")
        .arg("test")
        .current_dir(&dir)
        .env("BELLHOP_BIN", env!("CARGO_BIN_EXE_bellhop"))
        .output()
        .expect("npm test runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "SDK tests failed:\n{text}");
    assert!(text.contains("# pass"), "no SDK test ran:\n{text}");
    assert!(text.contains("# fail 0"), "SDK tests failed:\n{text}");
}
