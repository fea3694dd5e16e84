//! A client's session: what outlives its connection (subscriptions, queued and unacknowledged messages), behind one
//! short-held lock that publishers and the connection share.
//!
//! Publishers deliver by pushing onto the queue under the lock and waking the connection; the connection moves
//! messages from the queue into flight (bounded by the client's Receive Maximum) as it writes them, and removes them
//! when they are acknowledged. Nothing of a session lives in its connection's task, so a takeover is only a new
//! connection attaching (a new `generation`): the old one sees it at its next look and ends without touching the state.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ferrite_mqtt_codec::{ProtocolVersion, QoS, ReasonCode, SubscriptionOptions};
use smallvec::SmallVec;
use tokio::sync::Notify;

use super::message::Message;
use super::store::{Commit, Store};

/// One delivery of a message to one session.
#[derive(Clone)]
pub(crate) struct Outgoing {
    pub(crate) message: Arc<Message>,
    pub(crate) qos: QoS,
    /// The RETAIN flag as delivered (set for retained messages sent on subscribe, or with Retain As Published).
    pub(crate) retain: bool,
    pub(crate) subscription_ids: SmallVec<[u32; 1]>,
    /// Its key in the store when it was written there for a persistent session (QoS 1/2 only).
    pub(crate) seq: Option<u64>,
}

/// Where an unacknowledged outgoing QoS 1/2 message is in its flow.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlightState {
    /// PUBLISH sent, PUBACK (QoS 1) or PUBREC (QoS 2) awaited.
    Published,
    /// PUBREC received and PUBREL sent, PUBCOMP awaited.
    Released,
}

pub(crate) struct InFlight {
    pub(crate) packet_id: NonZeroU16,
    pub(crate) outgoing: Outgoing,
    pub(crate) state: FlightState,
}

/// A subscription as the session remembers it (its filter as sent, `$share/{group}/` included, is the key).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub(crate) options: SubscriptionOptions,
    pub(crate) id: Option<u32>,
}

/// Why a delivery was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// The client is offline and the message is QoS 0 (not kept for offline sessions, as in Mosquitto).
    Offline,
    /// The session's queue is at its bound.
    QueueFull,
    /// The session ended meanwhile.
    Gone,
}

impl Dropped {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Dropped::Offline => "offline_qos0",
            Dropped::QueueFull => "queue_full",
            Dropped::Gone => "session_gone",
        }
    }
}

/// Bounds of one session's queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueBounds {
    pub(crate) messages: usize,
    pub(crate) bytes: usize,
}

pub(crate) struct SessionState {
    /// Which connection owns the session now; bumped by every attach. 0: never attached in this process.
    pub(crate) generation: u64,
    pub(crate) connected: bool,
    /// Whether the session outlives its connection (session expiry above zero).
    pub(crate) expiry_secs: u32,
    pub(crate) disconnected_at: Option<Instant>,
    /// The version of the attached (or last) connection, which decides how messages are encoded.
    pub(crate) version: ProtocolVersion,
    /// The client's Receive Maximum (or our window for 3.1.1 clients).
    pub(crate) window: u16,
    pub(crate) queue: VecDeque<Outgoing>,
    pub(crate) queued_bytes: usize,
    pub(crate) in_flight: VecDeque<InFlight>,
    /// The next packet identifier to try.
    next_packet_id: u16,
    /// The next store key.
    pub(crate) next_seq: u64,
    /// QoS 2 messages received from the client whose PUBREL has not arrived (delivered already: method A).
    pub(crate) awaiting_release: HashSet<u16>,
    pub(crate) subscriptions: HashMap<String, Subscription>,
    /// Set to ask the connection to close with this reason (delete, rotate, takeover, shutdown).
    pub(crate) kick: Option<ReasonCode>,
    /// Whether the session was written to the store (so its deletion must be too).
    pub(crate) stored: bool,
    /// The session was discarded (expired, replaced by a clean start, ended with its connection).
    pub(crate) ended: bool,
    /// Wakes the attached connection (each connection has its own, so a takeover wakes the right one).
    pub(crate) waker: Option<Arc<Notify>>,
}

/// A session: its state and the wake-up of its connection.
pub(crate) struct Session {
    pub(crate) client_id: Arc<str>,
    state: Mutex<SessionState>,
    /// A mirror of `connected`, readable without the lock.
    online: AtomicBool,
}

impl Session {
    pub(crate) fn new(client_id: Arc<str>, version: ProtocolVersion, expiry_secs: u32) -> Session {
        Session {
            client_id,
            state: Mutex::new(SessionState {
                generation: 0,
                connected: false,
                expiry_secs,
                disconnected_at: None,
                version,
                window: u16::MAX,
                queue: VecDeque::new(),
                queued_bytes: 0,
                in_flight: VecDeque::new(),
                next_packet_id: 1,
                next_seq: 1,
                awaiting_release: HashSet::new(),
                subscriptions: HashMap::new(),
                kick: None,
                stored: false,
                ended: false,
                waker: None,
            }),
            online: AtomicBool::new(false),
        }
    }

    /// Whether a connection is attached, without taking the lock (shared-group picks, presence).
    pub(crate) fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    pub(crate) fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
    }

    /// The state, whatever a panicking holder left (every mutation keeps it consistent step by step).
    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a delivery (and writes it to the store for a persistent session at QoS 1/2). The caller counts drops.
    pub(crate) fn deliver(
        &self,
        mut outgoing: Outgoing,
        bounds: QueueBounds,
        store: &Store,
    ) -> Result<Option<Commit>, Dropped> {
        let mut state = self.lock();
        if state.ended {
            return Err(Dropped::Gone);
        }
        if !state.connected && outgoing.qos == QoS::AtMostOnce {
            return Err(Dropped::Offline);
        }
        let weight = outgoing.message.weight();
        if state.queue.len() >= bounds.messages || state.queued_bytes + weight > bounds.bytes {
            // Room is made by the oldest QoS 0 message if there is one at the front; QoS 1/2 are never pushed out.
            let oldest_is_qos0 = state.queue.front().is_some_and(|o| o.qos == QoS::AtMostOnce);
            if !oldest_is_qos0 {
                return Err(Dropped::QueueFull);
            }
            if let Some(old) = state.queue.pop_front() {
                state.queued_bytes -= old.message.weight();
                metrics::counter!("ferrite_broker_messages_dropped_total", "reason" => "queue_full", "qos" => "0")
                    .increment(1);
            }
        }
        let mut commit = None;
        if state.expiry_secs > 0
            && outgoing.qos != QoS::AtMostOnce
            && let Some(stored) = outgoing.message.to_stored(outgoing.qos, outgoing.retain)
        {
            let seq = state.next_seq;
            state.next_seq += 1;
            outgoing.seq = Some(seq);
            commit = Some(store.push(&self.client_id, seq, stored));
        }
        state.queued_bytes += weight;
        state.queue.push_back(outgoing);
        if let Some(waker) = &state.waker {
            waker.notify_one();
        }
        Ok(commit)
    }
}

impl SessionState {
    /// A free packet identifier for the next message put in flight, if the window allows one.
    ///
    /// Identifiers are handed out in sequence and acknowledgements mostly come in order, so the identifiers in
    /// flight lie between the oldest's and the newest's (in that circular order); the next after the newest is free
    /// unless the flight already spans all 65,535.
    pub(crate) fn take_packet_id(&mut self) -> Option<NonZeroU16> {
        if self.in_flight.len() >= usize::from(self.window) || self.in_flight.len() >= usize::from(u16::MAX) {
            return None;
        }
        let candidate = match self.in_flight.back() {
            Some(newest) => next_id(newest.packet_id.get()),
            None => self.next_packet_id,
        };
        if let Some(oldest) = self.in_flight.front()
            && candidate == oldest.packet_id.get()
        {
            return None;
        }
        self.next_packet_id = next_id(candidate);
        NonZeroU16::new(candidate)
    }

    /// Removes the in-flight message `packet_id` in `state`; the store key it had, if any.
    pub(crate) fn complete(&mut self, packet_id: NonZeroU16, state: FlightState) -> Option<Option<u64>> {
        let index = self.in_flight.iter().position(|f| f.packet_id == packet_id && f.state == state)?;
        let done = self.in_flight.remove(index)?;
        Some(done.outgoing.seq)
    }

    /// Marks a QoS 2 message released (PUBREC received); false if no such message awaits PUBREC.
    pub(crate) fn released(&mut self, packet_id: NonZeroU16) -> bool {
        match self.in_flight.iter_mut().find(|f| f.packet_id == packet_id && f.state == FlightState::Published) {
            Some(flight) if flight.outgoing.qos == QoS::ExactlyOnce => {
                flight.state = FlightState::Released;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn pop_queued(&mut self) -> Option<Outgoing> {
        let outgoing = self.queue.pop_front()?;
        self.queued_bytes -= outgoing.message.weight();
        Some(outgoing)
    }
}

fn next_id(id: u16) -> u16 {
    if id == u16::MAX { 1 } else { id + 1 }
}
