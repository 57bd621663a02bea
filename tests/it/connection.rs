//! Handshake, refusals with their codes, keep-alive, and frame-level errors.

use serde_json::{json, Value};

use crate::client::{data, Client, Received};
use crate::harness::{run_cli, Setup, KEY};

#[tokio::test]
async fn handshake_gives_socket_id_and_activity_timeout() {
    let server = Setup::new().start();
    let mut ws = Client::connect_raw(&server.ws_url(KEY)).await;
    use futures_util::StreamExt;
    let first = ws.next().await.unwrap().unwrap().into_text().unwrap();
    let ev: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(ev["event"], "pusher:connection_established");
    assert!(
        ev["data"].is_string(),
        "data is a JSON string as Pusher sends it"
    );
    let d = data(&ev);
    let sid = d["socket_id"].as_str().unwrap();
    let (a, b) = sid.split_once('.').unwrap();
    assert!(a.chars().all(|c| c.is_ascii_digit()) && b.chars().all(|c| c.is_ascii_digit()));
    assert_eq!(d["activity_timeout"], 120);
}

#[tokio::test]
async fn socket_ids_are_unique() {
    let server = Setup::new().start();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..20 {
        let c = Client::connect(&server).await;
        assert!(ids.insert(c.socket_id.clone()));
    }
}

#[tokio::test]
async fn refusals_send_error_then_close_code() {
    let server = Setup::new()
        .env("BELLHOP_APP_MAX_CONNECTIONS", "1")
        .toml("[[apps]]\nid = '200'\nkey = 'disabled-key'\nsecret = 's'\nenabled = false\n")
        .start();
    let base = format!("ws://{}", server.addr);
    let cases = [
        (format!("{base}/app/nope?protocol=7"), 4001),
        (format!("{base}/app/disabled-key?protocol=7"), 4003),
        (format!("{base}/app/{KEY}"), 4008),
        (format!("{base}/app/{KEY}?protocol=abc"), 4006),
        (format!("{base}/app/{KEY}?protocol=99"), 4007),
    ];
    for (url, code) in cases {
        let mut c = Client::connect_raw_client(&url).await;
        c.expect_refusal(code).await;
    }
    // The limit is one connection: the second is refused, and the slot frees on close.
    let first = Client::connect(&server).await;
    let mut second = Client::connect_raw_client(&server.ws_url(KEY)).await;
    second.expect_refusal(4004).await;
    first.close().await;
    let mut again = None;
    for _ in 0..50 {
        let mut c = Client::connect_raw_client(&server.ws_url(KEY)).await;
        match c.next_event().await["event"].as_str() {
            Some("pusher:connection_established") => {
                again = Some(c);
                break;
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    assert!(again.is_some(), "slot was not released after close");
}

#[tokio::test]
async fn ping_pong_both_ways_and_4201_without_pong() {
    let server = Setup::new()
        .env("BELLHOP_ACTIVITY_TIMEOUT", "1")
        .env("BELLHOP_PONG_TIMEOUT", "1")
        .start();
    let mut c = Client::connect(&server).await;
    c.send(json!({"event": "pusher:ping", "data": {}})).await;
    c.expect("pusher:pong").await;

    // Silent client: the server pings after the activity timeout; a pong keeps it open.
    c.expect("pusher:ping").await;
    c.send(json!({"event": "pusher:pong", "data": {}})).await;
    c.expect("pusher:ping").await;
    // No pong this time: closed with 4201 after the pong timeout.
    c.expect_refusal(4201).await;
}

#[tokio::test]
async fn malformed_and_unknown_frames_get_errors_not_disconnects() {
    let server = Setup::new().start();
    let mut c = Client::connect(&server).await;
    c.send_text("not json".into()).await;
    let ev = c.expect("pusher:error").await;
    assert_eq!(ev["data"]["code"], 4300);
    c.send(json!({"event": "pusher:bogus", "data": {}})).await;
    let ev = c.expect("pusher:error").await;
    assert!(ev["data"]["message"]
        .as_str()
        .unwrap()
        .contains("pusher:bogus"));
    c.send(json!({"event": "pusher:subscribe", "data": {"nochannel": 1}}))
        .await;
    c.expect("pusher:error").await;
    c.send(json!({"data": {}})).await;
    c.expect("pusher:error").await;
    // Still alive.
    c.send(json!({"event": "pusher:ping", "data": {}})).await;
    c.expect("pusher:pong").await;
}

#[tokio::test]
async fn oversized_frame_is_refused_with_error_and_close() {
    let server = Setup::new()
        .toml("[server]\nmax_frame_bytes = 4096\n")
        .start();
    let mut c = Client::connect(&server).await;
    c.send_text(format!(
        r#"{{"event":"client-x","channel":"private-a","data":"{}"}}"#,
        "x".repeat(5000)
    ))
    .await;
    let ev = c.expect("pusher:error").await;
    assert!(ev["data"]["message"].as_str().unwrap().contains("4096"));
    match c.next_within(crate::client::WAIT).await {
        Some(Received::Closed(code)) => assert_eq!(code, Some(1009)),
        other => panic!("expected close 1009, got {other:?}"),
    }
}

#[test]
fn config_errors_name_the_problem_and_exit_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nprot = 1\n").unwrap();
    let (ok, out) = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(out.contains("prot"), "{out}");

    let (ok, out) = run_cli(&["check-config"], &[("BELLHOP_HOST", "0.0.0.0")]);
    assert!(!ok);
    assert!(out.contains("default secret"), "{out}");

    let (ok, out) = run_cli(&["check-config"], &[]);
    assert!(ok, "{out}");
    assert!(out.contains("app-key"), "{out}");

    // Provider credentials are checked for their shape, without calling anyone.
    let app = "[[apps]]\nid = '1'\nkey = 'k'\nsecret = 's'\n";
    let zoho =
        "[apps.zoho]\nclient_id = '1000.ABC'\nclient_secret = 'x'\nrefresh_token = '1000.r.t'\n";
    for (toml, want) in [
        (format!("{app}[apps.zoho]\nclient_id = 'ABC'\nclient_secret = 'x'\nrefresh_token = '1000.r'\n"), "zoho.client_id"),
        (format!("{app}{zoho}invoices = {{ organization_id = 'org-1' }}\n"), "organization_id"),
        (format!("{app}{zoho}[[apps.rules]]\nname = 'r'\nchannel = 'c'\nevent = 'e'\ntype = 'T'\nrecipients = [{{ user = 'u' }}]\n[[apps.rules.deliver]]\nchannel = 'zoho'\nzoho = {{ deal = {{ Deal_Name = 'x' }} }}\n"), "linked to its contact"),
    ] {
        std::fs::write(&path, toml).unwrap();
        let (ok, out) = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
        assert!(!ok && out.contains(want), "want {want:?} in {out}");
    }

    let (ok, out) = run_cli(&["--help"], &[]);
    assert!(ok);
    for var in [
        "BELLHOP_PORT",
        "BELLHOP_APP_SECRET",
        "BELLHOP_APP_CLIENT_EVENTS",
        "BELLHOP_CONFIG",
    ] {
        assert!(out.contains(var), "--help lacks {var}");
    }
}

#[test]
fn the_readme_config_example_is_valid() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let blocks: Vec<&str> = readme.split("```toml\n").skip(1).collect();
    assert!(
        blocks.len() >= 2,
        "README has the config and the rules examples"
    );
    for (i, block) in blocks.iter().enumerate() {
        let body = &block[..block.find("```").unwrap()];
        // A fragment (the rules example) is checked inside an app of its own.
        let toml = if body.contains("[[apps]]\n") {
            body.to_owned()
        } else {
            format!("[[apps]]\nid = '1001'\nkey = 'readme-key'\nsecret = 'readme-secret'\n{body}")
        };
        let path = dir.path().join(format!("example-{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        let (ok, out) = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
        assert!(ok, "README TOML block {i}: {out}");
        assert!(out.contains("1001"), "{out}");
    }
}

#[tokio::test]
async fn json_logs_carry_ids_and_never_secrets() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bellhop"))
        .env_clear()
        .env("BELLHOP_PORT", "0")
        .env("BELLHOP_METRICS_PORT", "0")
        .env("BELLHOP_DATA_DIR", dir.path())
        .env("BELLHOP_APP_ID", "100")
        .env("BELLHOP_APP_KEY", KEY)
        .env("BELLHOP_APP_SECRET", "super-secret-value-123")
        .env("BELLHOP_LOG_FORMAT", "json")
        .env("BELLHOP_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // The log lines as they are written, read on a thread of their own.
    let stderr = child.stderr.take().unwrap();
    let logged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = logged.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let addr = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("listening http://").map(str::to_owned))
        .unwrap();
    let mut c = Client::connect_to(&format!("ws://{addr}/app/{KEY}?protocol=7")).await;
    c.subscribe_with("private-x", Some("test-key:00"), None)
        .await;
    c.expect("pusher:subscription_error").await;
    c.close().await;
    // Stopped once the refusal is logged (5 s at most).
    let end = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !logged
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("subscription refused"))
    {
        assert!(
            tokio::time::Instant::now() < end,
            "the refusal was never logged: {:?}",
            logged.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap();
    let logs = logged.lock().unwrap().join("\n");
    assert!(!logs.contains("super-secret-value-123"), "secret logged");
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert!(lines
        .iter()
        .any(|l| l["fields"]["socket_id"] == c_socket(&lines)
            && l["fields"]["message"] == "subscription refused"));
    assert!(lines.iter().any(|l| l["fields"]["app_id"] == "100"));
}

fn c_socket(lines: &[Value]) -> Value {
    lines
        .iter()
        .find(|l| l["fields"]["message"] == "connection opened")
        .map(|l| l["fields"]["socket_id"].clone())
        .expect("a connection-opened line")
}
