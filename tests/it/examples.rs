//! Runs the worked examples in `examples/` as their users would drive them: the official
//! Python `pusher` SDK triggers events, a WebSocket client stays connected, and a fake FCM
//! checks every push (see each script's header).

use std::path::Path;
use std::process::Command;

fn run(script: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(root.join(script))
        .env("BELLHOP_BIN", env!("CARGO_BIN_EXE_bellhop"))
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
    assert!(
        text.contains(" passed, 0 failed"),
        "{script} ran no check:\n{text}"
    );
}

#[test]
fn hotelmate_pushes_as_the_hotel_backend_drives_them() {
    run("tests/examples/hotelmate.py");
}
