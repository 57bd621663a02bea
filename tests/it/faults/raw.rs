//! A WebSocket and HTTP client at the byte level, for what no well-behaved library will send:
//! frame headers that lie about their length, bodies that stop half way.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Server, KEY};

/// Opens `/app/{KEY}` and reads the 101 and `connection_established`.
pub async fn ws(server: &Server) -> TcpStream {
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let req = format!(
        "GET /app/{KEY}?protocol=7&client=it&version=1 HTTP/1.1\r\nHost: {}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (op, payload) = read_frame(&mut s).await.expect("connection_established");
    assert_eq!(op, 0x1);
    assert!(String::from_utf8_lossy(&payload).contains("connection_established"));
    s
}

/// Reads an HTTP response head, byte by byte so nothing after it is consumed.
pub async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// One unmasked server frame: its opcode and payload; None when the socket ends.
pub async fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await.ok()?;
    let len = match h[1] & 0x7f {
        126 => u64::from(s.read_u16().await.ok()?),
        127 => s.read_u64().await.ok()?,
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).await.ok()?;
    Some((h[0] & 0x0f, payload))
}

/// Frames until a close frame (its code) or the end of the socket, within `wait`; the text
/// frames seen before it.
pub async fn until_close(s: &mut TcpStream, wait: Duration) -> (Option<u16>, Vec<String>) {
    let mut texts = Vec::new();
    let read = async {
        while let Some((op, payload)) = read_frame(s).await {
            match op {
                0x1 => texts.push(String::from_utf8_lossy(&payload).into_owned()),
                0x8 => return payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])),
                _ => {}
            }
        }
        None
    };
    let code = tokio::time::timeout(wait, read)
        .await
        .expect("the server answered within the wait");
    (code, texts)
}

/// A masked client frame header (mask 0, so the payload goes as is) declaring `len` bytes.
pub fn header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
    let mut h = vec![(u8::from(fin) << 7) | opcode];
    match len {
        0..=125 => h.push(0x80 | len as u8),
        126..=0xffff => {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            h.push(0x80 | 127);
            h.extend_from_slice(&len.to_be_bytes());
        }
    }
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}
