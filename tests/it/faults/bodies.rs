//! Slow and unsigned HTTP bodies: the signature is checked before a byte of the body is
//! read, a body that stalls is answered 408 after the body timeout, and the node's body
//! bytes in flight have a ceiling (503 beyond), while signed traffic keeps flowing.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::raw;
use crate::api::Api;
use crate::harness::{Server, Setup, APP_ID};

/// Sends a POST head declaring `declared` bytes and `send` bytes of body, then stalls.
async fn stalled_post(server: &Server, query: &str, declared: usize, send: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /apps/{APP_ID}/events?{query} HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n",
        server.addr
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may close (refusing unread) before all of it is written: that is the point.
    let _ = tokio::time::timeout(Duration::from_secs(2), s.write_all(send)).await;
    s
}

/// The status of the answer, and whether the server then closed the connection.
async fn answer(s: &mut TcpStream, wait: Duration) -> (Option<u16>, bool) {
    let read = async {
        let head = raw::read_head(s).await;
        let status = head.get(9..12).and_then(|c| c.parse().ok());
        let mut rest = Vec::new();
        let closed = s.read_to_end(&mut rest).await.is_ok() || status.is_some();
        (status, closed)
    };
    tokio::time::timeout(wait, read)
        .await
        .unwrap_or((None, false))
}

#[tokio::test]
async fn unsigned_slow_bodies_are_refused_unread_and_memory_stays_flat() {
    let server = Setup::new().start();
    let api = Api::new(&server);
    assert_eq!(api.trigger("warm", "e", "{}").await.status, 200);
    let idle = server.rss_kb();
    let body = vec![b'x'; 1_000_000];
    let mut posts = Vec::new();
    for _ in 0..300 {
        let addr = server.addr;
        let body = body.clone();
        posts.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "POST /apps/{APP_ID}/events HTTP/1.1\r\nHost: {addr}\r\n\
                 Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n"
            );
            s.write_all(head.as_bytes()).await.unwrap();
            let _ = tokio::time::timeout(Duration::from_secs(3), s.write_all(&body)).await;
            let started = Instant::now();
            let (status, closed) = answer(&mut s, Duration::from_secs(5)).await;
            (status, closed, started.elapsed())
        }));
    }
    // Signed traffic is answered meanwhile.
    let during = Instant::now();
    assert_eq!(api.trigger("meanwhile", "e", "{}").await.status, 200);
    assert!(during.elapsed() < Duration::from_secs(2));
    let peak = server.rss_kb();
    let mut refused = 0;
    for p in posts {
        let (status, closed, _) = p.await.unwrap();
        assert!(closed, "the server closes an unsigned request's connection");
        assert!(matches!(status, None | Some(401)), "{status:?}");
        refused += 1;
    }
    assert_eq!(refused, 300);
    let grown = peak.max(server.rss_kb()).saturating_sub(idle);
    super::tally::report_memory("300 unsigned 1 MB POST bodies that stall", idle, grown);
    assert!(grown < 50 * 1024, "RSS grew by {grown} KB (idle {idle} KB)");
}

#[tokio::test]
async fn a_signed_body_that_stalls_is_answered_408_and_closed() {
    let server = Setup::new().env("BELLHOP_BODY_TIMEOUT_MS", "800").start();
    let api = Api::new(&server);
    let body = format!(
        r#"{{"name":"e","channel":"c","data":"{}"}}"#,
        "x".repeat(100_000)
    );
    let path = format!("/apps/{APP_ID}/events");
    let q = api.signed_query("POST", &path, &[], body.as_bytes());
    let started = Instant::now();
    let mut s = stalled_post(&server, &q, body.len(), &body.as_bytes()[..50_000]).await;
    let (status, closed) = answer(&mut s, Duration::from_secs(5)).await;
    assert_eq!(status, Some(408));
    assert!(closed);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(api.trigger("after", "e", "{}").await.status, 200);
}

#[tokio::test]
async fn body_bytes_in_flight_are_capped_per_node() {
    let server = Setup::new()
        .env("BELLHOP_BODY_TIMEOUT_MS", "4000")
        .env("BELLHOP_MAX_BODY_BYTES_IN_FLIGHT", "1048576")
        .start();
    let api = Api::new(&server);
    let body = format!(
        r#"{{"name":"e","channel":"c","data":"{}"}}"#,
        "x".repeat(900_000)
    );
    let path = format!("/apps/{APP_ID}/events");
    let q = api.signed_query("POST", &path, &[], body.as_bytes());
    let started = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(stalled_post(&server, &q, body.len(), &body.as_bytes()[..600_000]).await);
    }
    let mut statuses = Vec::new();
    for mut s in stalled {
        statuses.push(answer(&mut s, Duration::from_secs(8)).await.0);
    }
    assert!(statuses.contains(&Some(503)), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| matches!(s, Some(503 | 408))),
        "{statuses:?}"
    );
    // The budget is given back: a whole body of the same size is read again (and then
    // refused for its event size, 413, not for the budget).
    let reply = api.raw("POST", &path, &q, body.clone().into_bytes()).await;
    assert_eq!(
        reply.status,
        413,
        "{:?} after {:?}",
        reply.body,
        started.elapsed()
    );
}
