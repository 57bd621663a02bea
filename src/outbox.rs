//! A connection's bounded outgoing queue. Channel actors and the connection's own reader push
//! frames into it without waiting; the socket's writer (`connection::Writer`) drains it in
//! batches, so frames queued together leave in one write. When the queue is full the
//! connection is marked to close with 4100 (reconnect after a back-off) instead of slowing
//! the channel down.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use actix_web::web::Bytes;
use bellhop_protocol::ErrorCode;
use bytestring::ByteString;
use parking_lot::Mutex;

/// One outgoing WebSocket frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(ByteString),
    /// The answer to a WebSocket-level ping.
    Pong(Bytes),
}

/// How the connection is to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseRequest {
    /// `pusher:error` with this code and message, then a close frame with the same code.
    Pusher(ErrorCode, String),
    /// A close frame with a WebSocket code (e.g. 1009), no Pusher error frame.
    WebSocket(u16, String),
}

/// The sending half; cheap to clone, one per subscription.
#[derive(Clone)]
pub struct Outbox(Arc<Shared>);

/// The receiving half, owned by the socket's writer.
pub struct OutboxReceiver(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    capacity: usize,
    /// Wakes the connection's reader when a close is requested, so it stops acting at once.
    closing: tokio::sync::Notify,
}

struct State {
    frames: VecDeque<Frame>,
    close: Option<CloseRequest>,
    waker: Option<Waker>,
}

/// The queue was full or closing: the frame was dropped.
#[derive(Debug, PartialEq, Eq)]
pub struct Overflow;

/// What the writer should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Frames were moved into the caller's buffer.
    Frames,
    /// Send the frames in the buffer (if any), then close like this.
    Close(CloseRequest),
}

pub fn outbox(capacity: usize) -> (Outbox, OutboxReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            frames: VecDeque::new(),
            close: None,
            waker: None,
        }),
        capacity,
        closing: tokio::sync::Notify::new(),
    });
    (Outbox(shared.clone()), OutboxReceiver(shared))
}

impl Outbox {
    /// Queues a text frame. Never waits.
    pub fn push(&self, frame: ByteString) -> Result<(), Overflow> {
        self.push_frame(Frame::Text(frame))
    }

    pub fn push_frame(&self, frame: Frame) -> Result<(), Overflow> {
        let mut st = self.0.state.lock();
        if st.close.is_some() {
            return Err(Overflow);
        }
        if st.frames.len() >= self.0.capacity {
            st.close = Some(CloseRequest::Pusher(
                ErrorCode::OverCapacity,
                "too slow to keep up: reconnect after a back-off".into(),
            ));
            let waker = st.waker.take();
            drop(st);
            if let Some(w) = waker {
                w.wake();
            }
            self.0.closing.notify_waiters();
            return Err(Overflow);
        }
        st.frames.push_back(frame);
        // Only the first frame of a batch needs to wake the writer: it takes them all.
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Asks the connection to close (the first request wins). Frames already queued go first.
    pub fn close(&self, request: CloseRequest) {
        let mut st = self.0.state.lock();
        if st.close.is_none() {
            st.close = Some(request);
        }
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        self.0.closing.notify_waiters();
    }

    /// Resolves once the connection has been asked to close (by anyone).
    pub async fn closed(&self) {
        loop {
            let notified = self.0.closing.notified();
            tokio::pin!(notified);
            // Registered before the check, so a close between the two is not missed.
            notified.as_mut().enable();
            if self.is_closing() {
                return;
            }
            notified.await;
        }
    }

    /// Whether the connection has been asked to close.
    pub fn is_closing(&self) -> bool {
        self.0.state.lock().close.is_some()
    }
}

impl OutboxReceiver {
    /// Moves queued frames into `buf`, or registers the task to be woken by the next push.
    pub fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut VecDeque<Frame>) -> Poll<Next> {
        let mut st = self.0.state.lock();
        if !st.frames.is_empty() {
            if buf.is_empty() {
                std::mem::swap(buf, &mut st.frames);
            } else {
                buf.extend(st.frames.drain(..));
            }
            return Poll::Ready(Next::Frames);
        }
        if let Some(req) = st.close.take() {
            // Leave a marker so later pushes are refused.
            st.close = Some(req.clone());
            return Poll::Ready(Next::Close(req));
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Waits for frames or a close request.
    pub async fn recv(&self, buf: &mut VecDeque<Frame>) -> Next {
        std::future::poll_fn(|cx| self.poll_recv(cx, buf)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &'static str) -> Frame {
        Frame::Text(ByteString::from_static(s))
    }

    #[tokio::test]
    async fn frames_arrive_in_order_in_one_batch() {
        let (tx, rx) = outbox(4);
        tx.push("a".into()).unwrap();
        tx.push("b".into()).unwrap();
        let mut buf = VecDeque::new();
        assert_eq!(rx.recv(&mut buf).await, Next::Frames);
        assert_eq!(buf, [text("a"), text("b")]);
    }

    #[tokio::test]
    async fn overflow_closes_with_over_capacity_after_queued_frames() {
        let (tx, rx) = outbox(2);
        tx.push("a".into()).unwrap();
        tx.push("b".into()).unwrap();
        assert_eq!(tx.push("c".into()), Err(Overflow));
        assert_eq!(tx.push("d".into()), Err(Overflow));
        let mut buf = VecDeque::new();
        assert_eq!(rx.recv(&mut buf).await, Next::Frames);
        assert_eq!(buf.len(), 2);
        buf.clear();
        assert!(matches!(
            rx.recv(&mut buf).await,
            Next::Close(CloseRequest::Pusher(ErrorCode::OverCapacity, _))
        ));
        assert!(tx.is_closing());
    }

    #[tokio::test]
    async fn waits_for_a_push_from_another_task() {
        let (tx, rx) = outbox(2);
        let h = tokio::spawn(async move {
            let mut buf = VecDeque::new();
            rx.recv(&mut buf).await;
            buf
        });
        tokio::task::yield_now().await;
        tx.push("x".into()).unwrap();
        assert_eq!(h.await.unwrap(), [text("x")]);
    }

    #[tokio::test]
    async fn closed_resolves_on_close_and_overflow() {
        let (tx, _rx) = outbox(1);
        let waiter = tokio::spawn({
            let tx = tx.clone();
            async move { tx.closed().await }
        });
        tokio::task::yield_now().await;
        tx.push("a".into()).unwrap();
        assert!(!waiter.is_finished());
        assert_eq!(tx.push("b".into()), Err(Overflow));
        waiter.await.unwrap();
        tx.closed().await;
    }

    #[tokio::test]
    async fn first_close_wins_and_later_pushes_are_refused() {
        let (tx, rx) = outbox(2);
        tx.close(CloseRequest::Pusher(
            ErrorCode::ReconnectImmediately,
            "bye".into(),
        ));
        tx.close(CloseRequest::WebSocket(1000, String::new()));
        assert_eq!(tx.push("late".into()), Err(Overflow));
        let mut buf = VecDeque::new();
        assert_eq!(
            rx.recv(&mut buf).await,
            Next::Close(CloseRequest::Pusher(
                ErrorCode::ReconnectImmediately,
                "bye".into()
            ))
        );
    }
}
