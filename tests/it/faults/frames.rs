//! Hostile frames before any authentication, with only the public key: a frame declaring a
//! huge length is refused on its header (4300 then close 1009), never buffered, and the
//! node's memory stays where it was.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::raw::{self, header};
use crate::harness::Setup;

const TIB: u64 = 1 << 40;

#[tokio::test]
async fn a_frame_declaring_a_terabyte_is_refused_on_its_header() {
    let server = Setup::new().start();
    let mut s = raw::ws(&server).await;
    s.write_all(&header(true, 0x1, TIB)).await.unwrap();
    s.write_all(&[b'a'; 4096]).await.unwrap();
    // The client keeps streaming (or not): the answer must not wait for the payload.
    let (code, texts) = raw::until_close(&mut s, Duration::from_secs(3)).await;
    assert_eq!(code, Some(1009), "{texts:?}");
    assert!(
        texts
            .iter()
            .any(|t| t.contains("pusher:error") && t.contains("65536")),
        "a pusher:error naming the limit first: {texts:?}"
    );
}

#[tokio::test]
async fn a_fragmented_message_over_the_limit_is_refused_on_the_continuation_header() {
    let server = Setup::new().start();
    let mut s = raw::ws(&server).await;
    let mut first = header(false, 0x1, 60_000);
    first.extend(std::iter::repeat_n(b'a', 60_000));
    s.write_all(&first).await.unwrap();
    s.write_all(&header(true, 0x0, 10_000)).await.unwrap();
    let (code, _) = raw::until_close(&mut s, Duration::from_secs(3)).await;
    assert_eq!(code, Some(1009));
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let server = Setup::new().start();
    let mut s = raw::ws(&server).await;
    let mut f = header(true, 0x1, 2);
    f.extend_from_slice(&[0xff, 0xfe]);
    s.write_all(&f).await.unwrap();
    let (code, _) = raw::until_close(&mut s, Duration::from_secs(3)).await;
    assert_eq!(code, Some(1007));
}

/// Eight clients each declare a terabyte and stream 20 MB: the node holds at most one
/// frame limit per connection, so its memory grows by far less than 20 MB in all.
#[tokio::test]
async fn streaming_huge_frames_does_not_grow_the_nodes_memory() {
    let server = Setup::new().start();
    let idle = server.rss_kb();
    let mut attackers = Vec::new();
    for _ in 0..8 {
        let mut s = raw::ws(&server).await;
        attackers.push(tokio::spawn(async move {
            let chunk = vec![b'a'; 64 * 1024];
            let mut sent = 0usize;
            if s.write_all(&header(true, 0x1, TIB)).await.is_err() {
                return sent;
            }
            while sent < 20 * 1024 * 1024 {
                let write = tokio::time::timeout(Duration::from_secs(5), s.write_all(&chunk));
                match write.await {
                    Ok(Ok(())) => sent += chunk.len(),
                    _ => break,
                }
            }
            sent
        }));
    }
    let mut cut_short = 0;
    for a in attackers {
        if a.await.unwrap() < 20 * 1024 * 1024 {
            cut_short += 1;
        }
    }
    let grown = server.rss_kb().saturating_sub(idle);
    super::tally::report_memory("8 clients stream 20 MB frames declaring 1 TiB", idle, grown);
    assert!(grown < 20 * 1024, "RSS grew by {grown} KB (idle {idle} KB)");
    assert_eq!(
        cut_short, 8,
        "every stream is cut off by the server's close"
    );
}
