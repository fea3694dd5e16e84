//! One MQTT session of the ingester: a receiver that parses messages into a batch and hands full batches to the writers.
//!
//! Receiving and committing overlap: while a writer commits batch N, the session parses batch N+1 (double buffering).
//! A semaphore with one permit is the hand-over: the session takes the permit before it hands a batch over,
//! and the writer returns it only after that batch is committed and its acknowledgements are sent. So a session's
//! batches commit one after another in the order they were received, and its acknowledgements go out in arrival
//! order, as rumqttc's manual acks require (NOTES.md). A message is acknowledged only after the commit holding its rows.
//!
//! The session hands a batch over when it is full, or when its interval has passed and its previous batch is done;
//! while that one commits, a batch that is not full keeps filling, so the batches grow under load.
//! A full batch waits for the permit without reading on: the broker may then have two batches in flight to us
//! ([`BATCHES_IN_FLIGHT`], the session's receive maximum) and holds the rest back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferrite_mqtt::{Event, Session, SessionConfig};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batch::Batch;
use crate::writer::{self, Handover};
use crate::{Limits, Stats};

/// Batches of one session that may be unacknowledged at once: one committing, one filling.
pub const BATCHES_IN_FLIGHT: usize = 2;
/// How long a stopping session waits for its unacknowledged publishes (the ingester publishes none) before it disconnects.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);

/// Counts the sessions whose subscriptions the broker has granted; [`Stats::subscribed`] turns true with the last.
pub(crate) struct Subscribed {
    pub sessions: Arc<AtomicUsize>,
    pub of: usize,
}

impl Subscribed {
    fn add(&self, stats: &Stats) {
        if self.sessions.fetch_add(1, Ordering::AcqRel) + 1 == self.of {
            stats.subscribed.store(true, Ordering::Relaxed);
        }
    }
}

/// One session's configuration and shared parts.
pub(crate) struct Lane {
    pub index: usize,
    pub session: SessionConfig,
    pub batch_size: usize,
    pub batch_interval: Duration,
    pub limits: Limits,
    pub stats: Arc<Stats>,
    pub subscribed: Subscribed,
}

impl Lane {
    /// Receives until `stop`; then hands the last batch over, waits until the writers have committed and
    /// acknowledged it, and disconnects cleanly. Returns an error only if the session stops on its own.
    pub async fn run(self, stop: CancellationToken, writers: writer::Sender) -> anyhow::Result<()> {
        let Lane { index, session: session_config, batch_size, batch_interval, limits, stats, subscribed } = self;
        let client_id = session_config.client_id.clone();
        let (session, mut events) = Session::start(session_config);
        stats.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(session.status());
        // Held by the writers from hand-over until acknowledgement: one batch of ours at a time.
        let previous_done = Arc::new(Semaphore::new(1));
        tracing::debug!(index, %client_id, "ingester session starting");

        let mut batch = Batch::new(limits);
        let mut deadline: Option<Instant> = None;
        let mut due = false;
        let mut counted = false;
        let mut ended = Ok(());
        // Looked up once: the macro would look the counter up in the recorder for every message.
        let received = metrics::counter!("ferrite_ingester_received_total");
        loop {
            let full = batch.is_full(batch_size);
            let hand_over = !batch.is_empty() && (full || due);
            let flush_at = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                permit = previous_done.clone().acquire_owned(), if hand_over => {
                    let permit = permit.expect("the session's semaphore is never closed");
                    let batch = std::mem::replace(&mut batch, Batch::new(limits));
                    let handover = Handover { batch, session: session.clone(), permit };
                    if writers.send(handover).await.is_err() {
                        // The writers stop only after every session.
                        break;
                    }
                    deadline = None;
                    due = false;
                }
                event = events.recv(), if !full => match event {
                    Some(Event::Message(message)) => {
                        stats.received.fetch_add(1, Ordering::Relaxed);
                        received.increment(1);
                        batch.push(message);
                        deadline.get_or_insert_with(|| Instant::now() + batch_interval);
                    }
                    Some(Event::Connected { session_present }) => {
                        tracing::info!(index, %client_id, session_present, "ingester connected to the broker");
                        // A kept session keeps its subscriptions: no SUBSCRIBE, so no SubAck, will follow.
                        if session_present && !counted {
                            counted = true;
                            subscribed.add(&stats);
                        }
                    }
                    Some(Event::Subscribed { refused }) => {
                        if refused > 0 {
                            tracing::error!(index, %client_id, refused, "the broker refused the ingester's subscriptions");
                        } else if !counted {
                            counted = true;
                            subscribed.add(&stats);
                        }
                    }
                    Some(Event::Disconnected { error }) => {
                        tracing::warn!(index, %client_id, %error, "ingester lost the broker; reconnecting");
                        // A loop of these (one message the session cannot take, replayed on every reconnect) is what the
                        // poison policy exists to prevent; the counter makes one visible.
                        metrics::counter!("ferrite_ingester_reconnects_total").increment(1);
                        // What we hold is valid data: store it as soon as our previous batch is done. Its acks would be stale
                        // (the session drops them), and the broker redelivers those messages, which the primary key then ignores.
                        due = !batch.is_empty();
                    }
                    None => {
                        ended = Err(anyhow::anyhow!("the mqtt session {client_id} stopped"));
                        break;
                    }
                },
                _ = tokio::time::sleep_until(flush_at), if deadline.is_some() && !due => due = true,
            }
        }
        if !batch.is_empty()
            && let Ok(permit) = previous_done.clone().acquire_owned().await
        {
            let _ = writers.send(Handover { batch, session: session.clone(), permit }).await;
        }
        drop(writers);
        // The permit comes back once our last batch is acknowledged (or given up on).
        let _ = previous_done.acquire().await;
        let left = session.close(CLOSE_DRAIN).await;
        tracing::debug!(index, %client_id, left, "ingester session stopped");
        ended
    }
}
