//! A local HTTP server standing in for a hosted API (FCM, its token endpoint): every request
//! is recorded, and a closure decides each answer (status, headers, body), so tests can check
//! the exact request and answer as the real service does, errors included.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

pub use crate::receiver::Request;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// How long the service takes to answer.
    pub delay: Option<std::time::Duration>,
}

impl Response {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
            delay: None,
        }
    }

    pub fn after(mut self, delay: std::time::Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

/// A form-encoded body (`a=1&b=x%20y`) as its fields, decoded as browsers and SDKs encode it.
pub fn form(body: &str) -> HashMap<String, String> {
    // unwrap: a fixed base with any query parses.
    reqwest::Url::parse(&format!("http://x/?{body}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

type Responder = dyn Fn(&Request) -> Response + Send + Sync;

#[derive(Clone)]
pub struct Mock {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Mock {
    pub async fn start(respond: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let respond: Arc<Responder> = Arc::new(respond);
        let recorded = requests.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, recorded.clone(), respond.clone()));
            }
        });
        Mock { addr, requests }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Requests whose path starts with `prefix`, waiting up to `secs` for `n` of them.
    pub async fn wait_for(&self, prefix: &str, n: usize, secs: u64) -> Vec<Request> {
        let end = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let got: Vec<_> = self
                .requests()
                .into_iter()
                .filter(|r| r.path.starts_with(prefix))
                .collect();
            if got.len() >= n || tokio::time::Instant::now() > end {
                return got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }
}

async fn serve(mut sock: TcpStream, recorded: Arc<Mutex<Vec<Request>>>, respond: Arc<Responder>) {
    // Keep-alive: requests on one connection are answered in turn.
    while let Some(req) = crate::receiver::read_request(&mut sock).await {
        let resp = respond(&req);
        if let Some(d) = resp.delay {
            tokio::time::sleep(d).await;
        }
        recorded.lock().unwrap().push(req);
        let mut out = format!(
            "HTTP/1.1 {} X\r\ncontent-length: {}\r\n",
            resp.status,
            resp.body.len()
        );
        for (k, v) in &resp.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(&resp.body);
        if sock.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}
