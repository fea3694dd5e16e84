//! One browser's queue of updates: bounded, never waited on by the hub, emptied in one go by the browser's writer.
//!
//! It is the shared fan-out's queue ([`ferrite_mqtt::Queue`]) holding rendered frames: a push is one uncontended
//! lock and a `VecDeque` push, the writer is woken only when the queue turns from empty to not empty, and a full
//! queue drops the frame for this browser only (counted). (Measured: about the same CPU per frame as a tokio
//! channel; most of a push is the shared frame's reference count, which every browser's writer touches too.)

use crate::protocol::Frame;

/// A bounded queue of frames for one browser.
pub type UpdateQueue = ferrite_mqtt::Queue<Frame>;
