//! Runs the worked examples in `examples/` as their users would drive them: the official
//! Python `pusher` SDK triggers events, pusher-js clients stay connected, a fake FCM checks
//! every push and a real SMTP server receives the mail (see each script's header).

use std::path::Path;
use std::process::Command;

fn run(script: &str) {
    crate::sdk::ensure_node_modules();
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

#[test]
fn bookings_confirm_remind_reschedule_and_cancel_as_the_booking_backend_drives_them() {
    run("tests/examples/booking.py");
}
