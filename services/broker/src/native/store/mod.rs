//! The engine's persistence: retained messages, persistent sessions and their queued QoS 1/2 messages, kept in a
//! log of our own (file layout in `files`, record format in `record`).
//!
//! # Why a log of our own
//! The engine keeps all of this in memory anyway and needs the disk only to get it back after a restart; what it
//! writes is a queue (a message pushed, then removed when acknowledged, usually within milliseconds). An
//! append-only log with a checksum per record fits that exactly: one sequential write and one `fdatasync` per group
//! of operations, recovery by replaying, compaction by writing out the live set when most of the log is dead. An
//! embedded B-tree (redb) would add copy-on-write page writes to every commit and answer lookups nobody makes.
//!
//! # Writes
//! Every call hands an [`Op`] to one writer thread through a queue behind a mutex (held only to push or to take
//! the whole queue, never during I/O), and returns a [`Commit`]. The writer takes every op waiting, drops pairs that
//! cancel out (a message pushed and removed in the same group), appends the rest in one write, and then:
//! - [`Durability::Sync`]: `fdatasync`s once and completes every Commit of the group (group commit); ops arriving
//!   meanwhile form the next group.
//! - [`Durability::Periodic`]: completes the group's Commits once written to the OS (so they survive a killed
//!   process, not a power cut) and `fdatasync`s at most one interval later.
//!
//! A write error fails that group's Commits and is logged; the log is cut back to before the group so later
//! groups still follow whole records. A failed `fdatasync` (after which the kernel may have dropped the dirty
//! pages) stops the store: every later Commit fails with [`StoreError::Failed`] until a restart recovers.
//!
//! # Memory
//! Ops wait in the queue only while a group is written. In `Sync` mode a caller holds each op until its Commit
//! completes, so the queue holds at most what the callers have in flight (bounded by the engine's receive maximum
//! per client). In `Periodic` mode a Commit completes at once while the queue holds under [`MAX_PENDING_BYTES`];
//! above it, a Commit waits until its group is written, which slows the callers down to the disk's pace. The
//! writer's own copy of the live set shares every payload (`Bytes`) with the engine's.

mod files;
mod record;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::mem;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Durability;
use files::{ActiveLog, AppendError};
use record::{MAX_RECORD_BYTES, Op, State};

/// In `Periodic` mode, how many bytes of ops may wait for the writer before a Commit waits for its write:
/// enough for bursts of a few seconds at full speed, small beside the broker's memory budget.
pub(crate) const MAX_PENDING_BYTES: usize = 64 << 20;

/// The log is compacted only once it is at least this big (and mostly dead): below it a rewrite saves little.
pub(crate) const COMPACT_MIN_BYTES: u64 = 64 << 20;

/// How often the writer checks a running compaction when nothing else wakes it.
const COMPACTION_POLL: Duration = Duration::from_millis(100);

/// A message as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredMessage {
    /// One whole encoded MQTT 5 PUBLISH packet, as `ferrite_mqtt_codec` encodes it.
    pub publish: Bytes,
    pub expires_at_unix_ms: Option<u64>,
}

/// A subscription of a persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredSubscription {
    /// As the client sent it, `$share/<group>/` included.
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub subscription_id: Option<u32>,
}

/// A persistent session, without its queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionRecord {
    pub expiry_secs: u32,
    pub disconnected_at_unix_ms: Option<u64>,
    pub subscriptions: Vec<StoredSubscription>,
}

/// What [`Store::open`] found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// Retained messages by topic, sorted by topic.
    pub retained: Vec<(String, StoredMessage)>,
    /// Sessions by client id (sorted), each with its queue in sequence order.
    pub sessions: Vec<(String, SessionRecord, Queue)>,
}

/// A session's queued messages by sequence number, in order.
pub(crate) type Queue = Vec<(u64, StoredMessage)>;

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum StoreError {
    /// Another process, or a store of this one not yet closed, holds the directory's lock.
    #[error("the store directory {} is in use (held by process {holder:?})", dir.display())]
    InUse { dir: PathBuf, holder: String },
    #[error("store I/O error {context}: {source}")]
    Io { context: String, source: Arc<io::Error> },
    #[error("the store file {} is corrupt at byte {offset}: {reason}", file.display())]
    Corrupt { file: PathBuf, offset: u64, reason: String },
    #[error("a store record of {size} bytes is over the limit of {MAX_RECORD_BYTES}")]
    TooLarge { size: usize },
    #[error("the store is closed")]
    Closed,
    /// An earlier flush to disk failed; nothing is written any more.
    #[error("the store stopped after an earlier error: {0}")]
    Failed(String),
}

impl StoreError {
    fn io(context: impl Into<String>, source: io::Error) -> StoreError {
        StoreError::Io { context: context.into(), source: Arc::new(source) }
    }
}

/// Tuning that tests lower to reach compaction quickly.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub compact_min_bytes: u64,
    pub max_pending_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { compact_min_bytes: COMPACT_MIN_BYTES, max_pending_bytes: MAX_PENDING_BYTES }
    }
}

/// The outcome of one group of ops, shared by their Commits.
#[derive(Default)]
struct Batch {
    outcome: OnceLock<Result<(), StoreError>>,
    done: tokio::sync::Notify,
}

impl Batch {
    fn complete(&self, outcome: Result<(), StoreError>) {
        let _ = self.outcome.set(outcome);
        self.done.notify_waiters();
    }

    async fn wait(self: Arc<Self>) -> Result<(), StoreError> {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(outcome) = self.outcome.get() {
                return outcome.clone();
            }
            notified.await;
        }
    }
}

/// Resolves when a write is durable per the store's [`Durability`]. Dropping it does not cancel the write.
#[must_use = "a Commit says when (and whether) the write is durable"]
pub(crate) struct Commit(CommitState);

enum CommitState {
    Ready(Option<Result<(), StoreError>>),
    Waiting(Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>),
}

impl Commit {
    fn ready(outcome: Result<(), StoreError>) -> Commit {
        Commit(CommitState::Ready(Some(outcome)))
    }

    fn wait(batch: Arc<Batch>) -> Commit {
        Commit(CommitState::Waiting(Box::pin(batch.wait())))
    }
}

impl Future for Commit {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            CommitState::Ready(outcome) => Poll::Ready(outcome.take().unwrap_or(Err(StoreError::Closed))),
            CommitState::Waiting(future) => future.as_mut().poll(cx),
        }
    }
}

/// The queue between the callers and the writer.
struct Pending {
    ops: Vec<Op>,
    bytes: usize,
    /// The group the ops in `ops` will be written in.
    batch: Arc<Batch>,
    closing: bool,
    failed: Option<StoreError>,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer when the queue stops being empty, or at close.
    wake: Condvar,
    /// Set by the writer once it has released everything.
    closed: tokio::sync::watch::Sender<Option<Result<(), StoreError>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // The lock guards plain pushes and swaps; a panic cannot leave it half done.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn begin_close(&self) {
        self.lock().closing = true;
        self.wake.notify_one();
    }
}

/// Owns the shared queue for the handles: when the last handle goes, the writer finishes and releases the lock.
struct Handle {
    shared: Arc<Shared>,
    durability: Durability,
    max_pending_bytes: usize,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.begin_close();
    }
}

/// A handle on the store's writer thread, which owns the files. Cheap to clone; every call returns at once.
#[derive(Clone)]
pub(crate) struct Store {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("durability", &self.handle.durability).finish_non_exhaustive()
    }
}

impl Store {
    /// Locks `dir` (creating it), recovers what it holds and starts the writer. Blocking: call it at startup.
    pub(crate) fn open(dir: &Path, durability: Durability) -> Result<(Store, Recovered), StoreError> {
        Store::open_with(dir, durability, Options::default())
    }

    pub(crate) fn open_with(
        dir: &Path,
        durability: Durability,
        options: Options,
    ) -> Result<(Store, Recovered), StoreError> {
        let opened = files::open(dir)?;
        let recovered = opened.state.recovered();
        let (closed, _) = tokio::sync::watch::channel(None);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                ops: Vec::new(),
                bytes: 0,
                batch: Arc::default(),
                closing: false,
                failed: None,
            }),
            wake: Condvar::new(),
            closed,
        });
        let writer = Writer {
            dir: dir.to_owned(),
            durability,
            options,
            shared: shared.clone(),
            state: opened.state,
            log: opened.log,
            lock: opened.lock,
            disk_bytes: opened.disk_bytes,
            compaction: None,
            compact_after: options.compact_min_bytes,
            buf: Vec::new(),
            sync_due: None,
            failed: None,
        };
        std::thread::Builder::new()
            .name("ferrite-store".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::io("starting the store's writer thread", e))?;
        tracing::info!(
            dir = %dir.display(),
            retained = recovered.retained.len(),
            sessions = recovered.sessions.len(),
            queued = recovered.sessions.iter().map(|s| s.2.len()).sum::<usize>(),
            "store opened"
        );
        let handle = Handle { shared, durability, max_pending_bytes: options.max_pending_bytes };
        Ok((Store { handle: Arc::new(handle) }, recovered))
    }

    /// Sets the retained message of `topic`; `None` clears it.
    pub(crate) fn set_retained(&self, topic: &str, message: Option<StoredMessage>) -> Commit {
        self.submit(Op::SetRetained { topic: topic.to_owned(), message })
    }

    /// Replaces the session's record; its queue stays.
    pub(crate) fn put_session(&self, client_id: &str, record: SessionRecord) -> Commit {
        self.submit(Op::PutSession { client_id: client_id.to_owned(), record })
    }

    /// Deletes the session's record and its queue.
    pub(crate) fn delete_session(&self, client_id: &str) -> Commit {
        self.submit(Op::DeleteSession { client_id: client_id.to_owned() })
    }

    /// Stores a QoS 1/2 message queued or in flight for a persistent session (replacing one with the same `seq`).
    pub(crate) fn push(&self, client_id: &str, seq: u64, message: StoredMessage) -> Commit {
        self.submit(Op::Push { client_id: client_id.to_owned(), seq, message })
    }

    /// Forgets a message: acknowledged (PUBACK / PUBCOMP) or expired.
    pub(crate) fn remove(&self, client_id: &str, seq: u64) -> Commit {
        self.submit(Op::Remove { client_id: client_id.to_owned(), seq })
    }

    /// Writes everything submitted, fsyncs, stops the writer and releases the lock. Other handles' later calls
    /// fail with [`StoreError::Closed`]. Returns the first error that stopped the store, if any.
    pub(crate) async fn close(self) -> Result<(), StoreError> {
        let shared = self.handle.shared.clone();
        let mut closed = shared.closed.subscribe();
        shared.begin_close();
        drop(self);
        let outcome = closed.wait_for(Option::is_some).await.map(|outcome| outcome.clone());
        match outcome {
            Ok(Some(outcome)) => outcome,
            // The writer ended without a word: only a panic does that.
            Ok(None) | Err(_) => Err(StoreError::Closed),
        }
    }

    fn submit(&self, op: Op) -> Commit {
        let size = op.frame_len();
        if size > MAX_RECORD_BYTES {
            return Commit::ready(Err(StoreError::TooLarge { size }));
        }
        let handle = &self.handle;
        let mut pending = handle.shared.lock();
        if let Some(error) = &pending.failed {
            return Commit::ready(Err(error.clone()));
        }
        if pending.closing {
            return Commit::ready(Err(StoreError::Closed));
        }
        let was_empty = pending.ops.is_empty();
        pending.ops.push(op);
        pending.bytes += size;
        let batch = pending.batch.clone();
        let over = pending.bytes > handle.max_pending_bytes;
        drop(pending);
        if was_empty {
            handle.shared.wake.notify_one();
        }
        match handle.durability {
            Durability::Sync => Commit::wait(batch),
            Durability::Periodic(_) if over => Commit::wait(batch),
            Durability::Periodic(_) => Commit::ready(Ok(())),
        }
    }
}

/// What wakes the writer.
enum Work {
    Group {
        ops: Vec<Op>,
        batch: Arc<Batch>,
        closing: bool,
    },
    /// `Periodic` mode: the interval since the first unsynced write has passed.
    SyncDue,
}

/// A compaction writing its base on another thread.
struct Compaction {
    generation: u64,
    thread: JoinHandle<io::Result<u64>>,
}

/// The writer thread's state: the files and the live set they hold.
struct Writer {
    dir: PathBuf,
    durability: Durability,
    options: Options,
    shared: Arc<Shared>,
    state: State,
    log: ActiveLog,
    lock: std::fs::File,
    /// Bytes recovery would read: the base and the logs from its generation on.
    disk_bytes: u64,
    compaction: Option<Compaction>,
    /// No compaction before the log holds this many bytes (raised after a failed one).
    compact_after: u64,
    buf: Vec<u8>,
    /// `Periodic` mode: when the written, unsynced data must be synced.
    sync_due: Option<Instant>,
    failed: Option<StoreError>,
}

/// Tells [`Store::close`] the writer is gone even if it panicked.
struct ClosedGuard(Arc<Shared>);

impl Drop for ClosedGuard {
    fn drop(&mut self) {
        self.0.closed.send_if_modified(|closed| {
            if closed.is_none() {
                *closed = Some(Err(StoreError::Closed));
                true
            } else {
                false
            }
        });
    }
}

impl Writer {
    fn run(mut self) {
        let guard = ClosedGuard(self.shared.clone());
        loop {
            match self.next_work() {
                Work::Group { ops, batch, closing } => {
                    let outcome = self.write_group(ops);
                    batch.complete(outcome);
                    if closing {
                        break;
                    }
                }
                Work::SyncDue => {
                    let _ = self.sync();
                }
            }
            self.poll_compaction(false);
            self.maybe_compact();
        }
        let outcome = self.finish();
        let Writer { log, lock, .. } = self;
        drop(log);
        drop(lock);
        guard.0.closed.send_replace(Some(outcome));
    }

    /// Waits for ops (or close, or a due sync) and takes every op waiting.
    fn next_work(&mut self) -> Work {
        let shared = self.shared.clone();
        let mut pending = shared.lock();
        while pending.ops.is_empty() && !pending.closing {
            let now = Instant::now();
            let wait = match self.sync_due {
                Some(due) if due <= now => return Work::SyncDue,
                Some(due) => Some(due - now),
                None if self.compaction.is_some() => Some(COMPACTION_POLL),
                None => None,
            };
            pending = match wait {
                Some(wait) => shared.wake.wait_timeout(pending, wait).unwrap_or_else(PoisonError::into_inner).0,
                None => shared.wake.wait(pending).unwrap_or_else(PoisonError::into_inner),
            };
            if self.compaction.is_some() && pending.ops.is_empty() {
                drop(pending);
                self.poll_compaction(false);
                self.maybe_compact();
                pending = shared.lock();
            }
        }
        let ops = mem::take(&mut pending.ops);
        pending.bytes = 0;
        let batch = mem::take(&mut pending.batch);
        Work::Group { ops, batch, closing: pending.closing }
    }

    /// Writes a group and makes it as durable as the mode asks.
    fn write_group(&mut self, ops: Vec<Op>) -> Result<(), StoreError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let keep = self.cancel_out(&ops);
        self.buf.clear();
        for (op, keep) in ops.iter().zip(&keep) {
            if *keep {
                op.encode(&mut self.buf);
            }
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        match self.log.append(&self.buf) {
            Ok(()) => {}
            Err(AppendError::Undone(e)) => {
                metrics::counter!("ferrite_broker_store_write_errors_total").increment(1);
                tracing::error!(error = %e, "the store could not write; these writes failed, the store goes on");
                return Err(StoreError::io("writing the store's log", e));
            }
            Err(AppendError::Fatal(e)) => {
                return Err(self.fail(format!("writing the store's log, then cutting it back: {e}")));
            }
        }
        self.disk_bytes += self.buf.len() as u64;
        // Shrink a buffer a big message left behind.
        if self.buf.capacity() > 4 << 20 {
            self.buf = Vec::new();
        }
        for (op, keep) in ops.into_iter().zip(keep) {
            if keep {
                self.state.apply(op);
            }
        }
        match self.durability {
            Durability::Sync => self.sync(),
            Durability::Periodic(interval) => {
                self.sync_due.get_or_insert_with(|| Instant::now() + interval);
                Ok(())
            }
        }
    }

    /// Which ops of a group to write: a message pushed and removed within the group is written by neither
    /// (unless an older copy is on disk, which the removal must then cover), a push replaced within the group is
    /// not written, nor the removal of a message the store does not hold.
    fn cancel_out(&self, ops: &[Op]) -> Vec<bool> {
        let mut keep = vec![true; ops.len()];
        let mut pushed: std::collections::HashMap<(&str, u64), usize> = std::collections::HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Push { client_id, seq, .. } => {
                    if let Some(earlier) = pushed.insert((client_id, *seq), i) {
                        keep[earlier] = false;
                    }
                }
                Op::Remove { client_id, seq } => {
                    if let Some(earlier) = pushed.remove(&(client_id.as_str(), *seq)) {
                        keep[earlier] = false;
                    }
                    if self.state.is_noop(op) {
                        keep[i] = false;
                    }
                }
                Op::SetRetained { .. } | Op::PutSession { .. } | Op::DeleteSession { .. } => {}
            }
        }
        keep
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        self.sync_due = None;
        match self.log.sync() {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(format!("syncing the store's log to disk: {e}"))),
        }
    }

    /// Stops the store for good: after a failed fsync the kernel may have dropped the unsynced pages, so
    /// nothing written since the last good sync can be trusted to be on disk, and no later write either.
    fn fail(&mut self, reason: String) -> StoreError {
        metrics::counter!("ferrite_broker_store_write_errors_total").increment(1);
        tracing::error!(%reason, "the store failed: later writes are refused until the broker restarts");
        let error = StoreError::Failed(reason);
        self.failed = Some(error.clone());
        self.shared.lock().failed = Some(error.clone());
        error
    }

    /// Starts a compaction when the files hold at least half dead bytes and are big enough to bother.
    fn maybe_compact(&mut self) {
        if self.compaction.is_some() || self.failed.is_some() || self.disk_bytes < self.compact_after {
            return;
        }
        let live = self.state.live_bytes();
        if live.saturating_mul(2) > self.disk_bytes {
            return;
        }
        // The base describes the state at the start of the new log; the old log must be whole on disk first,
        // since recovery replays it if the base never completes.
        if self.sync_due.is_some() && self.sync().is_err() {
            return;
        }
        let generation = self.log.generation + 1;
        let log = match ActiveLog::create(&self.dir, generation) {
            Ok(log) => log,
            Err(e) => {
                tracing::warn!(error = %e, "the store could not start a new log for a compaction; it goes on in the old one");
                self.compact_after = self.disk_bytes + self.options.compact_min_bytes;
                return;
            }
        };
        self.disk_bytes += log.len;
        self.log = log;
        let snapshot = self.state.clone();
        let dir = self.dir.clone();
        let spawned = std::thread::Builder::new()
            .name("ferrite-store-compact".into())
            .spawn(move || files::write_base(&dir, generation, &snapshot));
        match spawned {
            Ok(thread) => self.compaction = Some(Compaction { generation, thread }),
            Err(e) => tracing::warn!(error = %e, "the store could not start its compaction thread"),
        }
    }

    /// Takes the result of a finished compaction (waits for it if `wait`).
    fn poll_compaction(&mut self, wait: bool) {
        let Some(compaction) = self.compaction.take_if(|c| wait || c.thread.is_finished()) else {
            return;
        };
        match compaction.thread.join() {
            Ok(Ok(base_bytes)) if self.log.generation == compaction.generation => {
                metrics::counter!("ferrite_broker_store_compactions_total").increment(1);
                let before = self.disk_bytes;
                self.disk_bytes = base_bytes + self.log.len;
                self.compact_after = self.options.compact_min_bytes;
                tracing::debug!(before, after = self.disk_bytes, "store compacted");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the store's compaction failed; it keeps its logs and tries again later");
                self.compact_after = self.disk_bytes + self.options.compact_min_bytes;
            }
            Err(_) => tracing::error!("the store's compaction thread panicked"),
        }
    }

    /// At close: syncs what is unsynced and lets a running compaction finish.
    fn finish(&mut self) -> Result<(), StoreError> {
        let synced = if self.failed.is_some() || self.sync_due.is_some() { self.sync() } else { Ok(()) };
        self.poll_compaction(true);
        match &self.failed {
            Some(error) => Err(error.clone()),
            None => synced,
        }
    }
}
