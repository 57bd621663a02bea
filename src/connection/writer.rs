//! The socket's writing side: it drains the outbox and encodes every queued frame into one
//! buffer, so a burst of frames costs one write, and [`drive`] writes that straight to the
//! socket. Closing is the writer's job too: it sends the explanation and the close frame,
//! then shuts the socket's sending side.

use std::collections::VecDeque;

use actix_codec::Encoder;
use actix_http::ws::{CloseCode, CloseReason, Codec, Message};
use actix_web::web::BytesMut;
use bellhop_protocol::server;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::outbox::{CloseRequest, Frame, Next, Outbox, OutboxReceiver};

pub struct Writer {
    rx: OutboxReceiver,
    codec: Codec,
    batch: VecDeque<Frame>,
    buf: BytesMut,
    done: bool,
}

impl Writer {
    pub fn new(rx: OutboxReceiver) -> Self {
        Self {
            rx,
            codec: Codec::new(),
            batch: VecDeque::new(),
            buf: BytesMut::new(),
            done: false,
        }
    }

    fn encode(&mut self, msg: Message) -> Result<(), actix_http::ws::ProtocolError> {
        self.codec.encode(msg, &mut self.buf)
    }

    fn encode_batch(&mut self) -> Result<(), actix_http::ws::ProtocolError> {
        while let Some(frame) = self.batch.pop_front() {
            let msg = match frame {
                Frame::Text(t) => Message::Text(t),
                Frame::Pong(b) => Message::Pong(b),
            };
            self.codec.encode(msg, &mut self.buf)?;
        }
        Ok(())
    }

    fn encode_close(&mut self, req: CloseRequest) -> Result<(), actix_http::ws::ProtocolError> {
        let (code, description) = match req {
            CloseRequest::Pusher(code, message) => {
                self.encode(Message::Text(
                    server::error_with_message(code, &message).into(),
                ))?;
                (code.number(), message)
            }
            CloseRequest::WebSocket(code, message) => (code, message),
        };
        self.encode(Message::Close(Some(CloseReason {
            code: CloseCode::from(code),
            description: (!description.is_empty()).then_some(description),
        })))
    }
}

impl Writer {
    /// Waits for queued frames (or the close) and encodes all of them into the buffer;
    /// false once the close has been encoded and written.
    async fn fill(&mut self) -> Result<bool, actix_http::ws::ProtocolError> {
        if self.done {
            return Ok(false);
        }
        let next = self.rx.recv(&mut self.batch).await;
        self.encode_batch()?;
        if let Next::Close(req) = next {
            self.done = true;
            self.encode_close(req)?;
        }
        Ok(true)
    }
}

/// Writes everything the writer produces to `io`, then shuts it. A failed write (the peer
/// is gone or stopped reading past the TCP user timeout) closes the outbox, so the
/// connection stops acting for a client that can no longer hear it.
/// One buffer serves every write: frames are encoded into it, written, and it is cleared,
/// so a delivery allocates nothing here.
pub async fn drive<W: AsyncWrite + Unpin>(mut writer: Writer, mut io: W, outbox: Outbox) {
    while let Ok(true) = writer.fill().await {
        if io.write_all(&writer.buf).await.is_err() {
            outbox.close(CloseRequest::WebSocket(1006, String::new()));
            return;
        }
        writer.buf.clear();
        // A burst's buffer is not kept for an idle connection.
        if writer.buf.capacity() > KEEP_BUFFER {
            writer.buf = BytesMut::new();
        }
    }
    let _ = io.shutdown().await;
}

/// The largest write buffer a connection keeps between writes.
const KEEP_BUFFER: usize = 4 * 1024;
