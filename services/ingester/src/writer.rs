//! The writers: they commit what the sessions hand over, the batches of several sessions in one transaction,
//! and then acknowledge each session's messages.
//!
//! Every batch touches the same few rows (`latest_readings` and `presence` of the devices that are publishing),
//! so transactions of their own per session would mostly wait for each other's row locks, each paying the
//! fixed cost of a transaction for a fraction of the rows. Instead a writer takes every batch waiting in the
//! queue (at most one per session) and commits them together; [`WRITERS`] writers let the next transaction
//! insert its readings while the previous one finishes.
//!
//! Order: a session hands a batch over only with its one permit (see [`crate::lane`]), which comes back after
//! that batch's acknowledgements are sent, so a session's batches commit and are acknowledged one after another,
//! in arrival order, whichever writer takes them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferrite_mqtt::Session;
use sqlx::PgPool;
use tokio::sync::{Mutex, OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::batch::Batch;
use crate::{Limits, Stats};
use crate::{store, trace};

/// Transactions in progress at once per ingester: one finishing while the next inserts its readings.
/// More only wait for the same rows (and PostgreSQL shares the machine's cores with the broker).
pub const WRITERS: usize = 2;
/// Longest pause between retries of a transaction the database refused for a transient reason.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// A session's batch on its way to a writer, with the session that acknowledges it and the permit that lets
/// the session hand over its next batch once this one is acknowledged.
pub(crate) struct Handover {
    pub batch: Batch,
    pub session: Session,
    pub permit: OwnedSemaphorePermit,
}

/// The sessions' side of the queue; at most one batch per session waits in it.
pub(crate) type Sender = mpsc::Sender<Handover>;

/// The writers' side of the queue: one writer at a time takes everything waiting, up to one commit's bounds.
#[derive(Clone)]
pub(crate) struct Queue {
    /// With the batch taken from the channel that did not fit in the previous commit; it goes first in the next.
    receiver: Arc<Mutex<(mpsc::Receiver<Handover>, Option<Handover>)>>,
    /// Set when a writer gave up on a transaction while stopping, or when the ingester was killed
    /// (see [`KillSwitch`]): from then on nothing more is written or acknowledged, since a later batch of a
    /// session must not be acknowledged before an earlier one.
    abandoned: Arc<AtomicBool>,
}

impl Queue {
    /// The switch that [`crate::Ingester::run`] holds; `stop` is the writers' stop token.
    pub(crate) fn kill_switch(&self, stop: CancellationToken) -> KillSwitch {
        KillSwitch { abandoned: self.abandoned.clone(), stop }
    }
}

/// Dropped when the ingester's `run` future is dropped (the ingester is killed, e.g. its task aborted; after a
/// normal stop the writers have finished already). The writers are tasks of their own and are not aborted with it:
/// a transaction in progress finishes and is counted, like a process that dies after a commit, and then nothing
/// more is acknowledged or written. (Aborting them would leave a commit's outcome unknown, counted by no one.)
pub(crate) struct KillSwitch {
    abandoned: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl Drop for KillSwitch {
    fn drop(&mut self) {
        self.abandoned.store(true, Ordering::SeqCst);
        // Stops retrying a transaction the database refuses.
        self.stop.cancel();
    }
}

/// A queue for `sessions` sessions.
pub(crate) fn queue(sessions: usize) -> (Sender, Queue) {
    let (sender, receiver) = mpsc::channel(sessions.max(1));
    (sender, Queue { receiver: Arc::new(Mutex::new((receiver, None))), abandoned: Arc::default() })
}

/// Commits batches until every session has dropped its sender.
pub(crate) async fn run(pool: PgPool, queue: Queue, stats: Arc<Stats>, stop: CancellationToken, limits: Limits) {
    loop {
        let handovers = {
            let mut guard = queue.receiver.lock().await;
            let (receiver, left_over) = &mut *guard;
            let first = match left_over.take() {
                Some(first) => first,
                None => match receiver.recv().await {
                    Some(first) => first,
                    None => return,
                },
            };
            let mut readings = first.batch.readings.len();
            let mut bytes = first.batch.bytes();
            let mut handovers = vec![first];
            while let Ok(more) = receiver.try_recv() {
                readings += more.batch.readings.len();
                bytes += more.batch.bytes();
                if readings > limits.max_commit_readings || bytes > limits.max_batch_bytes {
                    // Another session's batch: the order of each session's own batches is kept by its permit.
                    *left_over = Some(more);
                    break;
                }
                handovers.push(more);
            }
            handovers
        };
        // Dropping them returns their permits without acknowledging anything.
        if !queue.abandoned.load(Ordering::SeqCst) {
            commit(&pool, handovers, &stats, &stop, &queue.abandoned, limits).await;
        }
    }
}

/// Writes the batches in one transaction and then acknowledges each batch's messages in arrival order.
///
/// A transient database failure is retried with backoff and nothing is acknowledged meanwhile,
/// so the broker keeps the messages. Once `stop` is cancelled retries stop (each transaction still gets
/// one attempt), the messages stay unacknowledged for the next run, and the queue is abandoned.
async fn commit(
    pool: &PgPool,
    mut handovers: Vec<Handover>,
    stats: &Stats,
    stop: &CancellationToken,
    abandoned: &AtomicBool,
    limits: Limits,
) {
    let mut rows = Batch::new(limits);
    let mut traces = Vec::new();
    let mut messages = 0;
    for handover in &mut handovers {
        messages += handover.batch.len();
        traces.append(&mut handover.batch.take_traces());
        rows.take_rows_from(&mut handover.batch);
    }
    let commit = trace::commit_span(messages, &traces);
    let mut pause = Duration::from_millis(100);
    let outcome = loop {
        let started = std::time::Instant::now();
        match store::write(pool, &rows).instrument(commit.clone()).await {
            Ok(outcome) => {
                metrics::histogram!("ferrite_ingester_commit_seconds").record(started.elapsed().as_secs_f64());
                break outcome;
            }
            Err(error) => {
                tracing::warn!(%error, messages, "writing a batch failed; retrying");
                metrics::counter!("ferrite_ingester_write_errors_total").increment(1);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.cancelled() => {
                        // Before the permits return (when `handovers` drops), so no later batch slips through.
                        abandoned.store(true, Ordering::SeqCst);
                        return;
                    }
                }
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
        }
    };
    // Killed meanwhile: the rows are committed and counted, but not acknowledged, as after a crash.
    let acknowledge = !abandoned.load(Ordering::SeqCst);
    for mut handover in handovers {
        let messages = handover.batch.take_messages();
        for message in messages.iter().filter(|_| acknowledge) {
            if let Err(error) = handover.session.ack(message) {
                tracing::warn!(%error, "could not acknowledge a message");
            }
        }
        // Only now may the session hand over its next batch.
        drop(handover.permit);
    }
    trace::committed(&commit, &outcome, traces);
    tracing::debug!(messages, ?outcome, "batch committed");
    stats.stored.fetch_add(outcome.stored, Ordering::Relaxed);
    stats.duplicates.fetch_add(outcome.duplicates, Ordering::Relaxed);
    stats.dead_lettered.fetch_add(outcome.dead_lettered, Ordering::Relaxed);
    stats.presence_updates.fetch_add(outcome.presence_updates, Ordering::Relaxed);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("ferrite_ingester_stored_total").increment(outcome.stored);
    metrics::counter!("ferrite_ingester_duplicates_total").increment(outcome.duplicates);
    count_dead_letters(&rows, &outcome);
    metrics::histogram!("ferrite_ingester_batch_messages").record(messages as f64);
}

/// `ferrite_ingester_dead_letters_total{reason}`: the batch's own dead letters by kind, and the rows the database
/// refused (`reason="database"`). `rows` still holds the dead letters parsed before the write.
fn count_dead_letters(rows: &Batch, outcome: &crate::outcome::Outcome) {
    let mut kinds: Vec<(&'static str, u64)> = Vec::new();
    for letter in &rows.dead_letters {
        match kinds.iter_mut().find(|(kind, _)| *kind == letter.kind) {
            Some((_, count)) => *count += 1,
            None => kinds.push((letter.kind, 1)),
        }
    }
    if outcome.refused > 0 {
        kinds.push(("database", outcome.refused));
    }
    for (kind, count) in kinds {
        metrics::counter!("ferrite_ingester_dead_letters_total", "reason" => kind).increment(count);
    }
}
