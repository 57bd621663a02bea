//! A small HTTP server standing in for a webhook receiver (or a hosted API): it records
//! every request and answers from a script (a status per request, or a hang).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Lower-cased names.
    pub headers: HashMap<String, String>,
    pub body: String,
    /// The body's bytes as sent (an encrypted push is not text).
    pub raw: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Status(u16),
    /// 429 or 503 with a Retry-After header in seconds.
    RetryAfter(u16, u64),
    /// Never answer (the connection stays open until the client gives up).
    Hang,
}

#[derive(Default)]
struct Shared {
    requests: Vec<Request>,
    script: Vec<Reply>,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
}

impl Receiver {
    /// Listens on a free loopback port. `script[i]` answers request i; later ones get 200.
    pub async fn start(script: Vec<Reply>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, script)
    }

    /// Listens on a given port (to come up where a target was unreachable before).
    pub async fn start_on(addr: SocketAddr, script: Vec<Reply>) -> Receiver {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, script)
    }

    fn serve(listener: TcpListener, script: Vec<Reply>) -> Receiver {
        let shared = Arc::new(Mutex::new(Shared {
            requests: Vec::new(),
            script,
        }));
        let addr = listener.local_addr().unwrap();
        let s = shared.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(handle(sock, s.clone()));
            }
        });
        Receiver { addr, shared }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().unwrap().requests.clone()
    }

    /// Waits until at least `n` requests arrived (at most `secs`), returning them all.
    pub async fn wait_for(&self, n: usize, secs: u64) -> Vec<Request> {
        let end = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let got = self.requests();
            if got.len() >= n || tokio::time::Instant::now() > end {
                return got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }
}

/// Reads one HTTP/1.1 request (head and a Content-Length body); None when the peer closes.
pub async fn read_request(sock: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("").to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let raw = buf[head_end..head_end + len].to_vec();
    let body = String::from_utf8_lossy(&raw).to_string();
    Some(Request {
        method,
        path,
        headers,
        body,
        raw,
    })
}

async fn handle(mut sock: TcpStream, shared: Arc<Mutex<Shared>>) {
    let Some(request) = read_request(&mut sock).await else {
        return;
    };
    let reply = {
        let mut s = shared.lock().unwrap();
        let i = s.requests.len();
        s.requests.push(request);
        s.script.get(i).copied().unwrap_or(Reply::Status(200))
    };
    let response = match reply {
        Reply::Hang => {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            return;
        }
        Reply::Status(code) => format!(
            "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
        ),
        Reply::RetryAfter(code, secs) => format!(
            "HTTP/1.1 {code} X\r\nretry-after: {secs}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        ),
    };
    let _ = sock.write_all(response.as_bytes()).await;
    let _ = sock.shutdown().await;
}
