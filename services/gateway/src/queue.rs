//! One browser's queue of updates: bounded, never waited on by the hub, emptied in one go by the browser's writer.
//!
//! The hub puts every message into the queue of every browser that wants it, so this is the gateway's innermost
//! loop: 10,000 readings a second to 100 dashboards are a million pushes a second. A tokio `mpsc` channel takes
//! a semaphore permit, a linked-block slot and a waker per frame, and its semaphore's mutex on the way back; here
//! a push is one uncontended lock and a `VecDeque` push, the writer is woken only when the queue turns from empty
//! to not empty, and it takes everything queued under one lock. (Measured: about the same CPU per frame as the
//! channel; most of a push is the shared frame's reference count, which every browser's writer touches too.)

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::protocol::Frame;

/// What became of a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue was full: the frame is dropped for this browser.
    Full,
    /// The browser's writer has ended.
    Closed,
}

/// A bounded queue of frames for one browser.
#[derive(Debug)]
pub struct UpdateQueue {
    state: Mutex<State>,
    /// Signalled when a frame arrives in an empty queue, and on close.
    ready: Notify,
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Frame>,
    closed: bool,
}

impl UpdateQueue {
    /// A queue holding at most `capacity` frames (at least one).
    pub fn new(capacity: usize) -> UpdateQueue {
        UpdateQueue { state: Mutex::new(State::default()), ready: Notify::new(), capacity: capacity.max(1) }
    }

    /// The state, locked. Nothing panics while it is held, and a frame more or less is all a poisoned lock
    /// could mean, so it is taken as it is.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a copy of `frame` (a shared reference, not the bytes) unless the queue is full or closed; never waits.
    pub fn push(&self, frame: &Frame) -> Pushed {
        let mut state = self.state();
        if state.closed {
            return Pushed::Closed;
        }
        if state.frames.len() >= self.capacity {
            return Pushed::Full;
        }
        let was_empty = state.frames.is_empty();
        state.frames.push_back(frame.clone());
        drop(state);
        // A writer with frames already waiting was told before and will take this one with them.
        if was_empty {
            self.ready.notify_one();
        }
        Pushed::Queued
    }

    /// Moves up to `max` frames, oldest first, into `into`; returns how many are left.
    ///
    /// Only a push into an empty queue wakes the writer, so a writer that leaves frames behind must come back
    /// for them without waiting on [`UpdateQueue::ready`].
    pub fn take(&self, max: usize, mut into: impl FnMut(Frame)) -> usize {
        let mut state = self.state();
        let count = max.min(state.frames.len());
        state.frames.drain(..count).for_each(&mut into);
        state.frames.len()
    }

    /// Waits until a frame may have arrived in the empty queue (a wake-up can find it already emptied).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.state().frames.len()
    }

    /// The writer has ended: later pushes are refused, and queued frames are let go.
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.frames.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Frame {
        Frame::from(text.to_owned())
    }

    fn take_all(queue: &UpdateQueue) -> Vec<String> {
        let mut taken = Vec::new();
        queue.take(usize::MAX, |frame| taken.push(frame.as_str().to_owned()));
        taken
    }

    #[tokio::test]
    async fn bounded_in_order_and_closable() {
        let queue = UpdateQueue::new(2);
        assert_eq!(queue.push(&frame("a")), Pushed::Queued);
        assert_eq!(queue.push(&frame("b")), Pushed::Queued);
        assert_eq!(queue.push(&frame("c")), Pushed::Full);
        assert_eq!(queue.len(), 2);
        // The first push into the empty queue left a wake-up for the writer.
        queue.ready().await;
        let mut first = Vec::new();
        assert_eq!(queue.take(1, |frame| first.push(frame)), 1, "one left");
        assert_eq!(first[0].as_str(), "a");
        assert_eq!(queue.push(&frame("d")), Pushed::Queued);
        assert_eq!(take_all(&queue), ["b", "d"]);
        assert!(take_all(&queue).is_empty());
        queue.push(&frame("e"));
        queue.close();
        assert_eq!(queue.len(), 0);
        assert_eq!(queue.push(&frame("f")), Pushed::Closed);
    }

    #[tokio::test]
    async fn a_waiting_writer_is_woken_by_a_push() {
        let queue = std::sync::Arc::new(UpdateQueue::new(4));
        let writer = tokio::spawn({
            let queue = queue.clone();
            async move {
                queue.ready().await;
                take_all(&queue)
            }
        });
        tokio::task::yield_now().await;
        queue.push(&frame("x"));
        assert_eq!(writer.await.expect("the writer ends"), ["x"]);
    }
}
