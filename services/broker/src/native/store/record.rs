//! The store's records: what one operation looks like on disk, and the in-memory state replaying them gives.
//!
//! A frame is `[u32 body length][u32 CRC-32 of the body][body]`, little-endian. The body starts with a tag byte;
//! strings and byte strings are a `u32` length and the bytes; an `Option` is a `0`/`1` byte and the value.
//! Lengths are `u32` throughout, so no MQTT value (a topic, a client id, a packet) needs a second size class.

use std::collections::{BTreeMap, HashMap};

use bytes::{Buf, Bytes};

use super::{Recovered, SessionRecord, StoredMessage, StoredSubscription};

/// The largest frame body the store writes or reads back: above any packet the engine accepts (MQTT's own
/// maximum is 256 MiB, but the engine's maximum packet size is far below it), and a sanity bound for recovery:
/// a length field above it can only be a torn or foreign write.
pub(super) const MAX_RECORD_BYTES: usize = 64 << 20;

/// Length and checksum in front of every body.
pub(super) const FRAME_HEADER: usize = 8;

const TAG_SET_RETAINED: u8 = 1;
const TAG_CLEAR_RETAINED: u8 = 2;
const TAG_PUT_SESSION: u8 = 3;
const TAG_DELETE_SESSION: u8 = 4;
const TAG_PUSH: u8 = 5;
const TAG_REMOVE: u8 = 6;
/// The last record of a base file: a base without it was never completed.
const TAG_END: u8 = 7;

/// One change to the store, as the engine asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Op {
    SetRetained { topic: String, message: Option<StoredMessage> },
    PutSession { client_id: String, record: SessionRecord },
    DeleteSession { client_id: String },
    Push { client_id: String, seq: u64, message: StoredMessage },
    Remove { client_id: String, seq: u64 },
}

/// A decoded frame body.
#[derive(Debug)]
pub(super) enum Entry {
    Op(Op),
    End,
}

impl Op {
    /// The size of this operation's frame on disk.
    pub(super) fn frame_len(&self) -> usize {
        match self {
            Op::SetRetained { topic, message } => retained_len(topic, message.as_ref()),
            Op::PutSession { client_id, record } => session_len(client_id, record),
            Op::DeleteSession { client_id } => FRAME_HEADER + 1 + str_len(client_id),
            Op::Push { client_id, message, .. } => push_len(client_id, message),
            Op::Remove { client_id, .. } => FRAME_HEADER + 1 + str_len(client_id) + 8,
        }
    }

    /// Appends this operation's frame to `out`.
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Op::SetRetained { topic, message } => encode_retained(out, topic, message.as_ref()),
            Op::PutSession { client_id, record } => encode_session(out, client_id, record),
            Op::DeleteSession { client_id } => frame(out, |out| {
                out.push(TAG_DELETE_SESSION);
                put_str(out, client_id);
            }),
            Op::Push { client_id, seq, message } => encode_push(out, client_id, *seq, message),
            Op::Remove { client_id, seq } => frame(out, |out| {
                out.push(TAG_REMOVE);
                put_str(out, client_id);
                out.extend_from_slice(&seq.to_le_bytes());
            }),
        }
    }
}

pub(super) fn encode_end(out: &mut Vec<u8>) {
    frame(out, |out| out.push(TAG_END));
}

fn encode_retained(out: &mut Vec<u8>, topic: &str, message: Option<&StoredMessage>) {
    frame(out, |out| match message {
        Some(message) => {
            out.push(TAG_SET_RETAINED);
            put_str(out, topic);
            put_message(out, message);
        }
        None => {
            out.push(TAG_CLEAR_RETAINED);
            put_str(out, topic);
        }
    });
}

fn encode_session(out: &mut Vec<u8>, client_id: &str, record: &SessionRecord) {
    frame(out, |out| {
        out.push(TAG_PUT_SESSION);
        put_str(out, client_id);
        out.extend_from_slice(&record.expiry_secs.to_le_bytes());
        put_opt_u64(out, record.disconnected_at_unix_ms);
        out.extend_from_slice(&(record.subscriptions.len() as u32).to_le_bytes());
        for sub in &record.subscriptions {
            put_str(out, &sub.filter);
            out.push(sub.qos);
            out.push(u8::from(sub.no_local) | (u8::from(sub.retain_as_published) << 1));
            out.push(sub.retain_handling);
            match sub.subscription_id {
                Some(id) => {
                    out.push(1);
                    out.extend_from_slice(&id.to_le_bytes());
                }
                None => out.push(0),
            }
        }
    });
}

fn encode_push(out: &mut Vec<u8>, client_id: &str, seq: u64, message: &StoredMessage) {
    frame(out, |out| {
        out.push(TAG_PUSH);
        put_str(out, client_id);
        out.extend_from_slice(&seq.to_le_bytes());
        put_message(out, message);
    });
}

fn retained_len(topic: &str, message: Option<&StoredMessage>) -> usize {
    FRAME_HEADER + 1 + str_len(topic) + message.map_or(0, message_len)
}

fn session_len(client_id: &str, record: &SessionRecord) -> usize {
    let subs: usize = record
        .subscriptions
        .iter()
        .map(|sub| str_len(&sub.filter) + 3 + 1 + if sub.subscription_id.is_some() { 4 } else { 0 })
        .sum();
    FRAME_HEADER + 1 + str_len(client_id) + 4 + opt_u64_len(record.disconnected_at_unix_ms) + 4 + subs
}

fn push_len(client_id: &str, message: &StoredMessage) -> usize {
    FRAME_HEADER + 1 + str_len(client_id) + 8 + message_len(message)
}

fn message_len(message: &StoredMessage) -> usize {
    opt_u64_len(message.expires_at_unix_ms) + 4 + message.publish.len()
}

fn str_len(s: &str) -> usize {
    4 + s.len()
}

fn opt_u64_len(value: Option<u64>) -> usize {
    if value.is_some() { 9 } else { 1 }
}

/// Writes a frame whose body `body` appends, then fills in its length and checksum.
fn frame(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    body(out);
    let len = (out.len() - start - FRAME_HEADER) as u32;
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_u64(out: &mut Vec<u8>, value: Option<u64>) {
    match value {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v.to_le_bytes());
        }
        None => out.push(0),
    }
}

fn put_message(out: &mut Vec<u8>, message: &StoredMessage) {
    put_opt_u64(out, message.expires_at_unix_ms);
    out.extend_from_slice(&(message.publish.len() as u32).to_le_bytes());
    out.extend_from_slice(&message.publish);
}

/// Reads a frame header: the body length and its checksum.
pub(super) fn frame_header(header: [u8; FRAME_HEADER]) -> (usize, u32) {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    (len, crc)
}

/// Decodes a body whose checksum matched. An error here is not a torn write but a record this version cannot
/// read: the caller reports it as corruption.
pub(super) fn decode(body: Bytes) -> Result<Entry, String> {
    let mut r = Reader(body);
    let entry = match r.u8()? {
        TAG_SET_RETAINED => {
            let topic = r.string()?;
            Entry::Op(Op::SetRetained { topic, message: Some(r.message()?) })
        }
        TAG_CLEAR_RETAINED => Entry::Op(Op::SetRetained { topic: r.string()?, message: None }),
        TAG_PUT_SESSION => {
            let client_id = r.string()?;
            let expiry_secs = r.u32()?;
            let disconnected_at_unix_ms = r.opt_u64()?;
            let count = r.u32()? as usize;
            // Each subscription takes at least 8 bytes: a count beyond that cannot be honest.
            if count > r.0.remaining() / 8 {
                return Err(format!("{count} subscriptions in {} bytes", r.0.remaining()));
            }
            let mut subscriptions = Vec::with_capacity(count);
            for _ in 0..count {
                let filter = r.string()?;
                let qos = r.u8()?;
                let flags = r.u8()?;
                let retain_handling = r.u8()?;
                let subscription_id = if r.flag()? { Some(r.u32()?) } else { None };
                subscriptions.push(StoredSubscription {
                    filter,
                    qos,
                    no_local: flags & 1 != 0,
                    retain_as_published: flags & 2 != 0,
                    retain_handling,
                    subscription_id,
                });
            }
            let record = SessionRecord { expiry_secs, disconnected_at_unix_ms, subscriptions };
            Entry::Op(Op::PutSession { client_id, record })
        }
        TAG_DELETE_SESSION => Entry::Op(Op::DeleteSession { client_id: r.string()? }),
        TAG_PUSH => {
            let client_id = r.string()?;
            let seq = r.u64()?;
            Entry::Op(Op::Push { client_id, seq, message: r.message()? })
        }
        TAG_REMOVE => {
            let client_id = r.string()?;
            Entry::Op(Op::Remove { client_id, seq: r.u64()? })
        }
        TAG_END => Entry::End,
        tag => return Err(format!("unknown record tag {tag}")),
    };
    if r.0.has_remaining() {
        return Err(format!("{} bytes after the record", r.0.remaining()));
    }
    Ok(entry)
}

/// Reads a body without ever panicking on a short one.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), String> {
        if self.0.remaining() < n { Err(format!("record ends early: {n} bytes needed")) } else { Ok(()) }
    }
    fn u8(&mut self) -> Result<u8, String> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn flag(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("flag byte {other}")),
        }
    }
    fn u32(&mut self) -> Result<u32, String> {
        self.need(4)?;
        Ok(self.0.get_u32_le())
    }
    fn u64(&mut self) -> Result<u64, String> {
        self.need(8)?;
        Ok(self.0.get_u64_le())
    }
    fn opt_u64(&mut self) -> Result<Option<u64>, String> {
        Ok(if self.flag()? { Some(self.u64()?) } else { None })
    }
    fn bytes(&mut self) -> Result<Bytes, String> {
        let len = self.u32()? as usize;
        self.need(len)?;
        Ok(self.0.split_to(len))
    }
    fn string(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }
    fn message(&mut self) -> Result<StoredMessage, String> {
        let expires_at_unix_ms = self.opt_u64()?;
        Ok(StoredMessage { publish: self.bytes()?, expires_at_unix_ms })
    }
}

/// One client's session as the store holds it. A queue may exist without a record (a push that came before
/// any `put_session`); recovery reports only sessions that have a record.
#[derive(Debug, Clone, Default)]
pub(super) struct SessionState {
    record: Option<SessionRecord>,
    queue: BTreeMap<u64, StoredMessage>,
}

/// What replaying the log gives: the live content of the store, and the bytes its records would take in a base.
#[derive(Debug, Clone, Default)]
pub(super) struct State {
    retained: HashMap<String, StoredMessage>,
    sessions: HashMap<String, SessionState>,
    /// The frame bytes of the records above: what a compaction would write.
    live_bytes: u64,
}

impl State {
    pub(super) fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Whether `op` would change nothing (clearing an absent retained value, removing an absent message,
    /// deleting an absent session): such an op need not be written.
    pub(super) fn is_noop(&self, op: &Op) -> bool {
        match op {
            Op::SetRetained { topic, message: None } => !self.retained.contains_key(topic),
            Op::DeleteSession { client_id } => !self.sessions.contains_key(client_id),
            Op::Remove { client_id, seq } => {
                self.sessions.get(client_id).is_none_or(|session| !session.queue.contains_key(seq))
            }
            Op::SetRetained { .. } | Op::PutSession { .. } | Op::Push { .. } => false,
        }
    }

    pub(super) fn apply(&mut self, op: Op) {
        let mut freed = 0;
        let mut added = 0;
        match op {
            Op::SetRetained { topic, message } => {
                if let Some(old) = self.retained.remove(&topic) {
                    freed += retained_len(&topic, Some(&old));
                }
                if let Some(message) = message {
                    added += retained_len(&topic, Some(&message));
                    self.retained.insert(topic, message);
                }
            }
            Op::PutSession { client_id, record } => {
                added += session_len(&client_id, &record);
                let session = match self.sessions.get_mut(&client_id) {
                    Some(session) => session,
                    None => self.sessions.entry(client_id.clone()).or_default(),
                };
                if let Some(old) = session.record.replace(record) {
                    freed += session_len(&client_id, &old);
                }
            }
            Op::DeleteSession { client_id } => {
                if let Some(session) = self.sessions.remove(&client_id) {
                    freed += session_bytes(&client_id, &session);
                }
            }
            Op::Push { client_id, seq, message } => {
                added += push_len(&client_id, &message);
                let session = match self.sessions.get_mut(&client_id) {
                    Some(session) => session,
                    None => self.sessions.entry(client_id.clone()).or_default(),
                };
                if let Some(old) = session.queue.insert(seq, message) {
                    freed += push_len(&client_id, &old);
                }
            }
            Op::Remove { client_id, seq } => {
                if let Some(session) = self.sessions.get_mut(&client_id) {
                    if let Some(old) = session.queue.remove(&seq) {
                        freed += push_len(&client_id, &old);
                    }
                    if session.record.is_none() && session.queue.is_empty() {
                        self.sessions.remove(&client_id);
                    }
                }
            }
        }
        self.live_bytes = (self.live_bytes + added as u64).saturating_sub(freed as u64);
    }

    /// Encodes every live record, for a base file, handing out about `chunk` bytes at a time.
    pub(super) fn encode_all(
        &self,
        chunk: usize,
        mut write: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(chunk + (1 << 16));
        for (topic, message) in &self.retained {
            encode_retained(&mut out, topic, Some(message));
            if out.len() >= chunk {
                write(&out)?;
                out.clear();
            }
        }
        for (client_id, session) in &self.sessions {
            if let Some(record) = &session.record {
                encode_session(&mut out, client_id, record);
            }
            for (seq, message) in &session.queue {
                encode_push(&mut out, client_id, *seq, message);
                if out.len() >= chunk {
                    write(&out)?;
                    out.clear();
                }
            }
        }
        encode_end(&mut out);
        write(&out)
    }

    /// What the engine gets back at open: retained values by topic, sessions by client id with their queues in
    /// sequence order. Payloads are shared, not copied.
    pub(super) fn recovered(&self) -> Recovered {
        let mut retained: Vec<_> = self.retained.iter().map(|(t, m)| (t.clone(), m.clone())).collect();
        retained.sort_by(|a, b| a.0.cmp(&b.0));
        let mut sessions: Vec<_> = self
            .sessions
            .iter()
            .filter_map(|(client_id, session)| {
                let record = session.record.clone()?;
                let queue = session.queue.iter().map(|(seq, m)| (*seq, m.clone())).collect();
                Some((client_id.clone(), record, queue))
            })
            .collect();
        sessions.sort_by(|a, b| a.0.cmp(&b.0));
        Recovered { retained, sessions }
    }

    /// Queues of clients without a session record: kept in the log, not reported at recovery.
    pub(super) fn orphan_queues(&self) -> usize {
        self.sessions.values().filter(|s| s.record.is_none()).count()
    }
}

fn session_bytes(client_id: &str, session: &SessionState) -> usize {
    let record = session.record.as_ref().map_or(0, |r| session_len(client_id, r));
    record + session.queue.values().map(|m| push_len(client_id, m)).sum::<usize>()
}
