//! The socket's reading side once the upgrade has handed the connection over: client frames
//! decoded straight from the socket (masked, at most `max` bytes), continuations joined, text
//! checked to be UTF-8. It owns one small buffer that grows only for a large frame, so an idle
//! connection holds about a kilobyte here, not the HTTP layer's pair of 8 KB buffers.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_codec::Decoder;
use actix_http::ws::{Codec, Frame, Item, ProtocolError};
use actix_web::web::{Bytes, BytesMut};
use actix_ws::AggregatedMessage;
use bytestring::ByteString;
use futures_util::Stream;
use tokio::io::AsyncRead;

/// Room made for a read when the buffer is (nearly) full.
const READ_CHUNK: usize = 1024;

pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    codec: Codec,
    max: usize,
    /// A text (true) or binary message being assembled from continuations.
    partial: Option<(bool, BytesMut)>,
    done: bool,
}

impl<R> FrameReader<R> {
    /// `leftover`: bytes read past the upgrade request (a client may send before the 101).
    pub fn new(io: R, leftover: BytesMut, max: usize) -> Self {
        Self {
            io,
            buf: leftover,
            codec: Codec::new().max_size(max),
            max,
            partial: None,
            done: false,
        }
    }

    /// The next whole message in the buffer, if one is complete.
    fn decode(&mut self) -> Result<Option<AggregatedMessage>, ProtocolError> {
        while let Some(frame) = self.codec.decode(&mut self.buf)? {
            let whole = match frame {
                Frame::Text(b) => text(b)?,
                Frame::Binary(b) => AggregatedMessage::Binary(b),
                Frame::Ping(b) => AggregatedMessage::Ping(b),
                Frame::Pong(b) => AggregatedMessage::Pong(b),
                Frame::Close(reason) => AggregatedMessage::Close(reason),
                Frame::Continuation(item) => match self.continue_with(item)? {
                    Some(m) => m,
                    None => continue,
                },
            };
            return Ok(Some(whole));
        }
        Ok(None)
    }

    fn continue_with(&mut self, item: Item) -> Result<Option<AggregatedMessage>, ProtocolError> {
        let (first, is_text, bytes, last) = match item {
            Item::FirstText(b) => (true, true, b, false),
            Item::FirstBinary(b) => (true, false, b, false),
            Item::Continue(b) => (false, false, b, false),
            Item::Last(b) => (false, false, b, true),
        };
        if first {
            if self.partial.is_some() {
                return Err(ProtocolError::ContinuationStarted);
            }
            self.partial = Some((is_text, BytesMut::new()));
        }
        let Some((is_text, acc)) = self.partial.as_mut() else {
            return Err(ProtocolError::ContinuationNotStarted);
        };
        if acc.len() + bytes.len() > self.max {
            self.partial = None;
            return Err(ProtocolError::Overflow);
        }
        acc.extend_from_slice(&bytes);
        if !last {
            return Ok(None);
        }
        let is_text = *is_text;
        let whole = self
            .partial
            .take()
            .map(|(_, b)| b.freeze())
            .unwrap_or_default();
        Ok(Some(if is_text {
            text(whole)?
        } else {
            AggregatedMessage::Binary(whole)
        }))
    }
}

fn text(b: Bytes) -> Result<AggregatedMessage, ProtocolError> {
    ByteString::try_from(b)
        .map(AggregatedMessage::Text)
        .map_err(|e| ProtocolError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

impl<R: AsyncRead + Unpin> Stream for FrameReader<R> {
    type Item = Result<AggregatedMessage, ProtocolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.decode() {
                Ok(Some(m)) => return Poll::Ready(Some(Ok(m))),
                Ok(None) => {}
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if this.buf.capacity() - this.buf.len() < READ_CHUNK / 4 {
                this.buf.reserve(READ_CHUNK);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(ProtocolError::Io(e))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;

    /// A masked client frame (mask 0: the payload reads as itself).
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mut f = vec![
            (u8::from(fin) << 7) | opcode,
            0x80 | payload.len() as u8,
            0,
            0,
            0,
            0,
        ];
        f.extend_from_slice(payload);
        f
    }

    async fn read_all(bytes: Vec<u8>, max: usize) -> Vec<Result<AggregatedMessage, ProtocolError>> {
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(&bytes).await.unwrap();
        drop(client);
        FrameReader::new(server, BytesMut::new(), max)
            .collect()
            .await
    }

    #[tokio::test]
    async fn continuations_are_joined_and_control_frames_pass_between_them() {
        let mut bytes = frame(false, 0x1, b"{\"event\":");
        bytes.extend(frame(true, 0x9, b"p"));
        bytes.extend(frame(true, 0x0, b"\"x\"}"));
        bytes.extend(frame(true, 0x1, b"second"));
        let got = read_all(bytes, 100).await;
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(matches!(&got[0], Ok(AggregatedMessage::Ping(p)) if &p[..] == b"p"));
        assert!(matches!(&got[1], Ok(AggregatedMessage::Text(t)) if t == "{\"event\":\"x\"}"));
        assert!(matches!(&got[2], Ok(AggregatedMessage::Text(t)) if t == "second"));
    }

    #[tokio::test]
    async fn oversized_frames_and_messages_overflow_and_bad_text_is_refused() {
        let got = read_all(frame(true, 0x1, &[b'a'; 20]), 10).await;
        assert!(
            matches!(got.as_slice(), [Err(ProtocolError::Overflow)]),
            "{got:?}"
        );
        let mut parts = frame(false, 0x1, &[b'a'; 8]);
        parts.extend(frame(true, 0x0, &[b'a'; 8]));
        let got = read_all(parts, 10).await;
        assert!(
            matches!(got.as_slice(), [Err(ProtocolError::Overflow)]),
            "{got:?}"
        );
        let got = read_all(frame(true, 0x1, &[0xff, 0xfe]), 10).await;
        assert!(
            matches!(got.as_slice(), [Err(ProtocolError::Io(_))]),
            "{got:?}"
        );
        let got = read_all(frame(true, 0x0, b"x"), 10).await;
        assert!(
            matches!(got.as_slice(), [Err(ProtocolError::ContinuationNotStarted)]),
            "a continuation with no start: {got:?}"
        );
    }
}
