//! The socket's reading side once the upgrade has handed the connection over: client frames
//! decoded straight from the socket (masked, at most `max` bytes), continuations joined, text
//! checked to be UTF-8. It owns one small buffer that grows only for a large frame, so an idle
//! connection holds about a kilobyte here, not the HTTP layer's pair of 8 KB buffers.
//!
//! A frame's declared length is checked against `max` as soon as its header is in the buffer,
//! before any of its payload is kept: the codec underneath only checks once the whole payload
//! has arrived, so a client declaring a huge frame could otherwise make the buffer grow without
//! bound before any authentication. The buffer therefore never holds more than one header, one
//! allowed payload and one read's worth of the next frame.

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

/// Why the reader stopped: each maps to one close code (RFC 6455 §7.4.1).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A frame or a message (its continuations together) over the limit: close 1009.
    #[error("frame or message exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// A text message that is not UTF-8: close 1007.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// Any other breach of the framing rules (unmasked, bad opcode, stray continuation): 1002.
    #[error("websocket protocol error: {0}")]
    Protocol(ProtocolError),
    /// The socket failed under us; nothing is sent back.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<ProtocolError> for FrameError {
    fn from(e: ProtocolError) -> Self {
        match e {
            ProtocolError::Io(e) => FrameError::Io(e),
            other => FrameError::Protocol(other),
        }
    }
}

/// A frame's header as far as the size check needs it: its opcode nibble and declared
/// payload length, once enough header bytes are buffered.
fn declared_payload(buf: &[u8]) -> Option<(u8, u64)> {
    let (first, second) = (*buf.first()?, *buf.get(1)?);
    let len = match second & 0x7f {
        126 => u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
        127 => u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?),
        n => u64::from(n),
    };
    Some((first & 0x0f, len))
}

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

    /// Refuses the frame at the front of the buffer if its declared length, alone or added
    /// to the message being assembled, is over the limit, before its payload is read.
    fn check_declared(&self) -> Result<(), FrameError> {
        let Some((opcode, len)) = declared_payload(&self.buf) else {
            return Ok(());
        };
        let assembled = match (opcode, &self.partial) {
            (0x0, Some((_, acc))) => acc.len() as u64,
            _ => 0,
        };
        if assembled.saturating_add(len) > self.max as u64 {
            return Err(FrameError::TooLarge { limit: self.max });
        }
        Ok(())
    }

    /// The next whole message in the buffer, if one is complete.
    fn decode(&mut self) -> Result<Option<AggregatedMessage>, FrameError> {
        loop {
            self.check_declared()?;
            let Some(frame) = self
                .codec
                .decode(&mut self.buf)
                .map_err(|e| self.refusal(e))?
            else {
                return Ok(None);
            };
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
    }

    fn refusal(&self, e: ProtocolError) -> FrameError {
        match e {
            ProtocolError::Overflow => FrameError::TooLarge { limit: self.max },
            other => other.into(),
        }
    }

    fn continue_with(&mut self, item: Item) -> Result<Option<AggregatedMessage>, FrameError> {
        let (first, is_text, bytes, last) = match item {
            Item::FirstText(b) => (true, true, b, false),
            Item::FirstBinary(b) => (true, false, b, false),
            Item::Continue(b) => (false, false, b, false),
            Item::Last(b) => (false, false, b, true),
        };
        if first {
            if self.partial.is_some() {
                return Err(ProtocolError::ContinuationStarted.into());
            }
            self.partial = Some((is_text, BytesMut::new()));
        }
        let Some((is_text, acc)) = self.partial.as_mut() else {
            return Err(ProtocolError::ContinuationNotStarted.into());
        };
        if acc.len() + bytes.len() > self.max {
            self.partial = None;
            return Err(FrameError::TooLarge { limit: self.max });
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

fn text(b: Bytes) -> Result<AggregatedMessage, FrameError> {
    ByteString::try_from(b)
        .map(AggregatedMessage::Text)
        .map_err(|_| FrameError::InvalidUtf8)
}

impl<R: AsyncRead + Unpin> Stream for FrameReader<R> {
    type Item = Result<AggregatedMessage, FrameError>;

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
                    return Poll::Ready(Some(Err(FrameError::Io(e))));
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

    async fn read_all(bytes: Vec<u8>, max: usize) -> Vec<Result<AggregatedMessage, FrameError>> {
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
            matches!(got.as_slice(), [Err(FrameError::TooLarge { limit: 10 })]),
            "{got:?}"
        );
        let mut parts = frame(false, 0x1, &[b'a'; 8]);
        parts.extend(frame(true, 0x0, &[b'a'; 8]));
        let got = read_all(parts, 10).await;
        assert!(
            matches!(got.as_slice(), [Err(FrameError::TooLarge { limit: 10 })]),
            "{got:?}"
        );
        let got = read_all(frame(true, 0x1, &[0xff, 0xfe]), 10).await;
        assert!(
            matches!(got.as_slice(), [Err(FrameError::InvalidUtf8)]),
            "{got:?}"
        );
        let got = read_all(frame(true, 0x0, b"x"), 10).await;
        assert!(
            matches!(
                got.as_slice(),
                [Err(FrameError::Protocol(
                    ProtocolError::ContinuationNotStarted
                ))]
            ),
            "a continuation with no start: {got:?}"
        );
    }

    /// A header declaring `len` bytes (64-bit length form), masked, with no payload yet.
    fn huge_header(opcode: u8, fin: bool, len: u64) -> Vec<u8> {
        let mut h = vec![(u8::from(fin) << 7) | opcode, 0x80 | 127];
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 0]);
        h
    }

    /// The reader must refuse on the header alone: the client keeps its end open and never
    /// sends the payload, so a reader that waited for it would hang here.
    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_before_its_payload() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut reader = FrameReader::new(server, BytesMut::new(), 64 * 1024);
        client
            .write_all(&huge_header(0x1, true, 1 << 40))
            .await
            .unwrap();
        client.write_all(&[b'a'; 4096]).await.unwrap();
        let got = reader.next().await;
        assert!(
            matches!(got, Some(Err(FrameError::TooLarge { limit: 65536 }))),
            "{got:?}"
        );
        assert!(reader.buf.len() <= 10 + 4 + 4096, "{}", reader.buf.len());
        assert!(
            reader.next().await.is_none(),
            "the reader stops after a refusal"
        );
    }

    #[tokio::test]
    async fn a_continuation_that_would_overflow_the_message_is_refused_on_its_header() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut reader = FrameReader::new(server, BytesMut::new(), 100);
        client
            .write_all(&frame(false, 0x1, &[b'a'; 60]))
            .await
            .unwrap();
        client.write_all(&huge_header(0x0, true, 50)).await.unwrap();
        let got = reader.next().await;
        assert!(
            matches!(got, Some(Err(FrameError::TooLarge { limit: 100 }))),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn the_buffer_stays_bounded_while_a_frame_at_the_limit_streams_in() {
        let max = 4096;
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut bytes = huge_header(0x1, true, max as u64);
        bytes.extend(std::iter::repeat_n(b'a', max));
        bytes.extend(frame(true, 0x1, b"next"));
        client.write_all(&bytes).await.unwrap();
        drop(client);
        let mut reader = FrameReader::new(server, BytesMut::new(), max);
        let first = reader.next().await;
        assert!(matches!(&first, Some(Ok(AggregatedMessage::Text(t))) if t.len() == max));
        assert!(
            reader.buf.capacity() <= 2 * max + 2048,
            "{}",
            reader.buf.capacity()
        );
        let second = reader.next().await;
        assert!(matches!(&second, Some(Ok(AggregatedMessage::Text(t))) if t == "next"));
    }
}
