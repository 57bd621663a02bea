//! A connection's bounded outgoing queue. Channel actors push shared frames into it without
//! waiting; when it is full the connection is marked to close with 4100 (reconnect after a
//! back-off) instead of slowing the channel down. The connection's writer drains it in
//! batches, so frames queued together go out in one write.

use std::collections::VecDeque;
use std::sync::Arc;

use bellhop_protocol::ErrorCode;
use bytestring::ByteString;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// The sending half; cheap to clone, one per subscription.
#[derive(Clone)]
pub struct Outbox(Arc<Shared>);

/// The receiving half, owned by the connection's task.
pub struct OutboxReceiver(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
}

struct State {
    frames: VecDeque<ByteString>,
    close: Option<ErrorCode>,
}

/// The queue was full: the frame was dropped and the connection will be closed.
#[derive(Debug, PartialEq, Eq)]
pub struct Overflow;

/// What the writer should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Frames were moved into the caller's buffer.
    Frames,
    /// Close the connection with this code after flushing what is already in the buffer.
    Close(ErrorCode),
}

pub fn outbox(capacity: usize) -> (Outbox, OutboxReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            frames: VecDeque::new(),
            close: None,
        }),
        notify: Notify::new(),
        capacity,
    });
    (Outbox(shared.clone()), OutboxReceiver(shared))
}

impl Outbox {
    /// Queues a frame. Never waits.
    pub fn push(&self, frame: ByteString) -> Result<(), Overflow> {
        let mut st = self.0.state.lock();
        if st.close.is_some() {
            return Err(Overflow);
        }
        if st.frames.len() >= self.0.capacity {
            st.close = Some(ErrorCode::OverCapacity);
            drop(st);
            self.0.notify.notify_one();
            return Err(Overflow);
        }
        let was_empty = st.frames.is_empty();
        st.frames.push_back(frame);
        drop(st);
        // One wake-up per batch: the writer takes everything queued when it wakes.
        if was_empty {
            self.0.notify.notify_one();
        }
        Ok(())
    }

    /// Asks the connection to close with `code` (the first request wins).
    pub fn close(&self, code: ErrorCode) {
        let mut st = self.0.state.lock();
        if st.close.is_none() {
            st.close = Some(code);
        }
        drop(st);
        self.0.notify.notify_one();
    }

    /// Whether two handles feed the same connection.
    pub fn same_as(&self, other: &Outbox) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl OutboxReceiver {
    /// Moves whatever is queued into `buf` without waiting.
    pub fn take_ready(&self, buf: &mut VecDeque<ByteString>) {
        buf.extend(self.0.state.lock().frames.drain(..));
    }

    /// Waits until there are frames or a close request; moves queued frames into `buf`.
    pub async fn recv(&self, buf: &mut VecDeque<ByteString>) -> Next {
        loop {
            {
                let mut st = self.0.state.lock();
                if !st.frames.is_empty() {
                    if buf.is_empty() {
                        std::mem::swap(buf, &mut st.frames);
                    } else {
                        buf.extend(st.frames.drain(..));
                    }
                    return Next::Frames;
                }
                if let Some(code) = st.close {
                    return Next::Close(code);
                }
            }
            self.0.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_arrive_in_order_in_one_batch() {
        let (tx, rx) = outbox(4);
        tx.push("a".into()).unwrap();
        tx.push("b".into()).unwrap();
        let mut buf = VecDeque::new();
        assert_eq!(rx.recv(&mut buf).await, Next::Frames);
        assert_eq!(buf, ["a", "b"]);
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
        assert_eq!(
            rx.recv(&mut buf).await,
            Next::Close(ErrorCode::OverCapacity)
        );
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
        assert_eq!(h.await.unwrap(), ["x"]);
    }

    #[tokio::test]
    async fn first_close_wins() {
        let (tx, rx) = outbox(2);
        tx.close(ErrorCode::ReconnectImmediately);
        tx.close(ErrorCode::AppDisabled);
        let mut buf = VecDeque::new();
        assert_eq!(
            rx.recv(&mut buf).await,
            Next::Close(ErrorCode::ReconnectImmediately)
        );
    }
}
