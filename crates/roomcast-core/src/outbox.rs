//! The bounded outgoing queue of one connection.
//!
//! Producers (any task that delivers to the connection) push encoded, shared
//! frames; the connection's own task takes them in batches and writes them to
//! its socket with one flush. The bound is in bytes: a push that would pass it
//! closes the outbox with [`Disconnect::SLOW`], drops what was queued and wakes
//! the connection task, which tells the client and closes. Nothing waits on a
//! slow client, and nothing is dropped silently.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::{Disconnect, Frame};

/// Why a frame was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The connection is closing or closed.
    #[error("connection closed")]
    Closed,
    /// The frame would pass the byte limit; the connection is now closed as a slow consumer.
    #[error("outgoing queue full: slow consumer disconnected")]
    Overflow,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Frame>,
    bytes: usize,
    closed: Option<Disconnect>,
}

/// A byte-bounded queue of frames for one connection; see the module docs.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    limit: usize,
}

impl Outbox {
    /// An empty outbox that holds at most `limit` bytes of frames.
    pub fn new(limit: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            limit,
        }
    }

    /// The most bytes it holds.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Queues a frame, or closes the outbox as a slow consumer if it would pass the limit.
    pub fn push(&self, frame: Frame) -> Result<(), PushError> {
        self.enqueue(frame.len(), |q| q.push_back(frame))
    }

    /// Queues several frames back to back (nothing else comes between them), or
    /// none if together they would pass the limit (then the outbox closes as slow).
    pub fn push_all(&self, frames: Vec<Frame>) -> Result<(), PushError> {
        let len = frames.iter().map(Frame::len).sum();
        self.enqueue(len, |q| q.extend(frames))
    }

    fn enqueue(&self, len: usize, add: impl FnOnce(&mut VecDeque<Frame>)) -> Result<(), PushError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.closed.is_some() {
            return Err(PushError::Closed);
        }
        if st.bytes + len > self.limit {
            st.frames = VecDeque::new();
            st.bytes = 0;
            st.closed = Some(Disconnect::SLOW);
            drop(st);
            self.notify.notify_one();
            return Err(PushError::Overflow);
        }
        let was_empty = st.frames.is_empty();
        st.bytes += len;
        add(&mut st.frames);
        drop(st);
        if was_empty {
            self.notify.notify_one();
        }
        Ok(())
    }

    /// Closes the outbox: frames already queued are still handed out, then `reason`.
    /// Returns false if it was closed already (the first reason wins).
    pub fn close(&self, reason: Disconnect) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.closed.is_some() {
            return false;
        }
        st.closed = Some(reason);
        drop(st);
        self.notify.notify_one();
        true
    }

    /// Whether the outbox has been closed.
    pub fn is_closed(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed
            .is_some()
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }

    /// Waits until there is something to do, then moves every queued frame into
    /// `batch`. Returns the close reason once the outbox is closed and drained.
    pub async fn next_batch(&self, batch: &mut Vec<Frame>) -> Option<Disconnect> {
        loop {
            {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if !st.frames.is_empty() {
                    batch.extend(st.frames.drain(..));
                    st.bytes = 0;
                    if st.frames.capacity() > 64 {
                        st.frames.shrink_to(16);
                    }
                    return None;
                }
                if let Some(reason) = &st.closed {
                    return Some(reason.clone());
                }
            }
            self.notify.notified().await;
        }
    }

    /// Waits until the outbox is closed; used to abandon a write to a stuck socket.
    pub async fn closed(&self) -> Disconnect {
        loop {
            if let Some(reason) = self
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .closed
                .clone()
            {
                return reason;
            }
            self.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Frame {
        Frame::text(s.to_owned())
    }

    #[tokio::test]
    async fn frames_come_out_in_order_then_the_close_reason() {
        let o = Outbox::new(100);
        o.push(text("a")).unwrap();
        o.push(text("bb")).unwrap();
        assert_eq!(o.queued_bytes(), 3);
        o.close(Disconnect::SHUTDOWN);
        assert_eq!(o.push(text("c")), Err(PushError::Closed));
        let mut batch = Vec::new();
        assert_eq!(o.next_batch(&mut batch).await, None);
        assert_eq!(batch.len(), 2);
        assert_eq!(o.next_batch(&mut batch).await, Some(Disconnect::SHUTDOWN));
    }

    #[tokio::test]
    async fn passing_the_limit_closes_as_slow_and_drops_the_queue() {
        let o = Outbox::new(10);
        o.push(text("12345")).unwrap();
        o.push(text("12345")).unwrap();
        assert_eq!(o.push(text("1")), Err(PushError::Overflow));
        let mut batch = Vec::new();
        assert_eq!(o.next_batch(&mut batch).await, Some(Disconnect::SLOW));
        assert!(batch.is_empty());
        assert!(!o.close(Disconnect::SHUTDOWN));
    }

    #[tokio::test]
    async fn a_waiting_consumer_is_woken_by_a_push() {
        let o = std::sync::Arc::new(Outbox::new(100));
        let o2 = o.clone();
        let waiter = tokio::spawn(async move {
            let mut batch = Vec::new();
            o2.next_batch(&mut batch).await;
            batch.len()
        });
        tokio::task::yield_now().await;
        o.push(text("x")).unwrap();
        assert_eq!(waiter.await.unwrap(), 1);
    }
}
