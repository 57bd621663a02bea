//! A push provider for load runs that answers like FCM's HTTP v1 API: `/token` hands out an
//! access token for the service account's JWT, `/v1/projects/{p}/messages:send` accepts a
//! message after a configured latency or fails it (503 UNAVAILABLE) at a configured rate. It
//! records when each message numbered `data.n` was accepted, so the scenario can tell lost
//! from late from repeated.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the fake saw: for each message number, the times (µs since the epoch) it was
/// accepted, and how many sends it failed on purpose.
#[derive(Default)]
pub struct Seen {
    pub accepted: HashMap<u64, Vec<u64>>,
    /// The same acceptances by device token.
    pub by_token: HashMap<String, Vec<u64>>,
    pub failed: u64,
}

pub struct FakeFcm {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
}

#[derive(Clone, Copy)]
pub struct Behaviour {
    pub latency: Duration,
    /// Share of sends answered 503, 0..1.
    pub failure_rate: f64,
}

impl FakeFcm {
    pub async fn start(listen: SocketAddr, behaviour: Behaviour) -> anyhow::Result<FakeFcm> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let shared = seen.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let _ = sock.set_nodelay(true);
                tokio::spawn(serve(sock, shared.clone(), behaviour));
            }
        });
        Ok(FakeFcm { addr, seen })
    }
}

/// Keep-alive: requests on one connection are answered in turn.
async fn serve(mut sock: TcpStream, seen: Arc<Mutex<Seen>>, b: Behaviour) {
    let mut buf = Vec::with_capacity(4096);
    while let Some((path, body)) = read_request(&mut sock, &mut buf).await {
        let (status, answer) = answer(&path, &body, &seen, b).await;
        let text = answer.to_string();
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            text.len()
        );
        if sock.write_all(head.as_bytes()).await.is_err()
            || sock.write_all(text.as_bytes()).await.is_err()
        {
            return;
        }
    }
}

async fn answer(path: &str, body: &[u8], seen: &Mutex<Seen>, b: Behaviour) -> (u16, Value) {
    if path == "/token" {
        return (
            200,
            json!({"access_token": "ya29.load", "expires_in": 3599, "token_type": "Bearer"}),
        );
    }
    if !path.ends_with("/messages:send") {
        return (404, json!({"error": "not found"}));
    }
    tokio::time::sleep(b.latency).await;
    if rand::random::<f64>() < b.failure_rate {
        seen.lock().unwrap().failed += 1;
        return (
            503,
            json!({"error": {"code": 503, "status": "UNAVAILABLE", "message": "The service is currently unavailable."}}),
        );
    }
    let message = serde_json::from_slice::<Value>(body).unwrap_or_default();
    let message = &message["message"];
    let n = message["data"]["n"]
        .as_str()
        .and_then(|n| n.parse::<u64>().ok());
    let now = crate::measure::now_us();
    let mut seen = seen.lock().unwrap();
    if let Some(n) = n {
        seen.accepted.entry(n).or_default().push(now);
    }
    if let Some(token) = message["token"].as_str() {
        seen.by_token.entry(token.to_owned()).or_default().push(now);
    }
    (
        200,
        json!({"name": format!("projects/load/messages/{}", n.unwrap_or(0))}),
    )
}

/// One request's path and body (Content-Length bodies only); None when the peer closes.
async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 8192];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    Some((path, body))
}
