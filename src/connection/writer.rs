//! The socket's writing side: it drains the outbox and encodes every queued frame into one
//! buffer, so a burst of frames costs one write, and [`drive`] writes that straight to the
//! socket. Closing is the writer's job too: it sends the explanation and the close frame,
//! then shuts the socket's sending side.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_codec::Encoder;
use actix_http::ws::{CloseCode, CloseReason, Codec, Message};
use actix_web::web::{Bytes, BytesMut};
use bellhop_protocol::server;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::outbox::{CloseRequest, Frame, Next, Outbox, OutboxReceiver};

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

impl Stream for Writer {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let next = match this.rx.poll_recv(cx, &mut this.batch) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(next) => next,
        };
        let encoded = this.encode_batch().and_then(|()| match next {
            Next::Frames => Ok(()),
            Next::Close(req) => {
                this.done = true;
                this.encode_close(req)
            }
        });
        if let Err(e) = encoded {
            this.done = true;
            return Poll::Ready(Some(Err(e.into())));
        }
        Poll::Ready(Some(Ok(this.buf.split().freeze())))
    }
}

/// Writes everything the writer produces to `io`, then shuts it. A failed write (the peer
/// is gone or stopped reading past the TCP user timeout) closes the outbox, so the
/// connection stops acting for a client that can no longer hear it.
pub async fn drive<W: AsyncWrite + Unpin>(mut writer: Writer, mut io: W, outbox: Outbox) {
    while let Some(chunk) = writer.next().await {
        let written = match chunk {
            Ok(bytes) => io.write_all(&bytes).await,
            Err(_) => break,
        };
        if written.is_err() {
            outbox.close(CloseRequest::WebSocket(1006, String::new()));
            return;
        }
    }
    let _ = io.shutdown().await;
}
