//! The ingester: sensor readings and device presence from MQTT into PostgreSQL.
//!
//! It holds a persistent MQTT session, subscribed through a shared subscription so that several
//! ingesters split the load, and receives with manual acknowledgements: a QoS 1/2 message is
//! acknowledged only after the transaction holding its rows has committed, in arrival order.
//! If the process dies before that, the broker redelivers, and the readings' primary key
//! `(device_id, metric, ts)` makes the second insert a no-op, so each reading is stored once.
//!
//! # Layout
//! - [`Config`], [`Ingester`] (`bind` / `run`), [`Stats`].
//! - [`batch`]: turning messages into rows, dead letters and presence changes.
//! - [`store`]: writing one batch in one transaction.
//! - [`trace`]: the spans that continue a reading's trace (`ingest.message`, `ingest.commit`, `ingest.stored`).

pub mod batch;
pub mod store;
pub mod trace;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ferrite_mqtt::{BrokerUrl, Event, QoS, Session, SessionConfig};
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::batch::Batch;

/// Rows per transaction: big enough to amortise the commit, small enough to keep latency low.
pub const DEFAULT_BATCH_SIZE: usize = 2000;
/// The longest a reading waits for its batch to fill before it is written anyway.
pub const DEFAULT_BATCH_INTERVAL: Duration = Duration::from_millis(50);
/// How long the broker keeps our session (and queues for us) while no ingester is connected.
pub const SESSION_EXPIRY_SECS: u32 = 7 * 24 * 3600;
/// Longest pause between retries of a batch the database refused for a transient reason.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// How the ingester connects and batches.
#[derive(Clone, Debug)]
pub struct Config {
    pub broker: BrokerUrl,
    /// Stable per ingester instance: the broker keeps the persistent session under this id.
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    /// The `$share/{group}/...` group; `None` subscribes directly (one ingester only).
    pub shared_group: Option<String>,
    pub qos: QoS,
    pub batch_size: usize,
    pub batch_interval: Duration,
}

impl Config {
    pub fn new(broker: BrokerUrl) -> Self {
        Self {
            broker,
            client_id: "ferrite-ingester".into(),
            credentials: None,
            shared_group: Some("ingest".into()),
            qos: QoS::AtLeastOnce,
            batch_size: DEFAULT_BATCH_SIZE,
            batch_interval: DEFAULT_BATCH_INTERVAL,
        }
    }

    /// The subscription filters, shared when a group is set.
    pub fn filters(&self) -> Vec<String> {
        ["sensors/#", "devices/+/status"]
            .iter()
            .map(|filter| match &self.shared_group {
                Some(group) => format!("$share/{group}/{filter}"),
                None => (*filter).to_owned(),
            })
            .collect()
    }
}

/// Counters since start, for tests, progress output and `/metrics` (which has the same names).
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub presence_updates: AtomicU64,
    pub batches: AtomicU64,
    /// True once the broker has granted our subscriptions.
    pub subscribed: AtomicBool,
}

impl Stats {
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }
}

/// A configured ingester, ready to run.
pub struct Ingester {
    config: Config,
    pool: PgPool,
    stats: Arc<Stats>,
}

impl Ingester {
    /// Checks the database is reachable and has today's partitions; the MQTT session starts in `run`.
    pub async fn bind(config: Config, pool: PgPool) -> anyhow::Result<Ingester> {
        store::ensure_partitions(&pool).await?;
        Ok(Ingester { config, pool, stats: Arc::default() })
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Runs until `shutdown`; then writes and acknowledges what it holds and disconnects cleanly.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Ingester { config, pool, stats } = self;
        let mut session_config = SessionConfig::new(config.broker.clone(), config.client_id.clone());
        session_config.credentials = config.credentials.clone();
        session_config.clean_start = false;
        session_config.session_expiry = Some(SESSION_EXPIRY_SECS);
        session_config.manual_acks = true;
        // Acks wait for the batch's commit, so the broker must be allowed a whole batch in flight.
        session_config.receive_maximum = Some(u16::try_from(config.batch_size).unwrap_or(u16::MAX).max(1));
        session_config.subscriptions = config.filters().into_iter().map(|filter| (filter, config.qos)).collect();
        let (session, mut events) = Session::start(session_config);
        tracing::info!(broker = %config.broker, client_id = %config.client_id, filters = ?config.filters(), "ingester starting");

        let mut batch = Batch::default();
        let mut deadline: Option<Instant> = None;
        let mut partitions_checked = Instant::now();
        loop {
            let flush_at = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                event = events.recv() => match event {
                    Some(Event::Message(message)) => {
                        stats.received.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("ferrite_ingester_received_total").increment(1);
                        batch.push(message);
                        deadline.get_or_insert_with(|| Instant::now() + config.batch_interval);
                        if batch.len() >= config.batch_size {
                            flush(&pool, &session, &mut batch, &stats, &shutdown).await;
                            deadline = None;
                        }
                    }
                    Some(Event::Connected { session_present }) => {
                        tracing::info!(session_present, "ingester connected to the broker");
                        // A kept session keeps its subscriptions: no SUBSCRIBE, so no SubAck, will follow.
                        if session_present {
                            stats.subscribed.store(true, Ordering::Relaxed);
                        }
                    }
                    Some(Event::Subscribed { refused }) => {
                        if refused == 0 {
                            stats.subscribed.store(true, Ordering::Relaxed);
                        } else {
                            tracing::error!(refused, "the broker refused the ingester's subscriptions");
                        }
                    }
                    Some(Event::Disconnected { error }) => {
                        tracing::warn!(%error, "ingester lost the broker; reconnecting");
                        // What we hold is valid data: store it now. Its acks would be stale, and the
                        // broker redelivers those messages, which the primary key then ignores.
                        flush(&pool, &session, &mut batch, &stats, &shutdown).await;
                        deadline = None;
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(flush_at), if deadline.is_some() => {
                    flush(&pool, &session, &mut batch, &stats, &shutdown).await;
                    deadline = None;
                }
            }
            if partitions_checked.elapsed() > Duration::from_secs(3600) {
                partitions_checked = Instant::now();
                if let Err(error) = store::ensure_partitions(&pool).await {
                    tracing::warn!(%error, "could not create upcoming readings partitions");
                }
            }
        }
        flush(&pool, &session, &mut batch, &stats, &CancellationToken::new()).await;
        let left = session.close(Duration::from_secs(2)).await;
        tracing::info!(stored = stats.stored(), left, "ingester stopped");
        Ok(())
    }
}

/// Writes the batch and then acknowledges its messages in arrival order.
///
/// A transient database failure is retried with backoff and nothing is acknowledged meanwhile,
/// so the broker keeps the messages. During shutdown retries stop and the messages stay unacknowledged
/// for the next run.
async fn flush(pool: &PgPool, session: &Session, batch: &mut Batch, stats: &Stats, shutdown: &CancellationToken) {
    if batch.is_empty() {
        return;
    }
    let commit = trace::commit_span(batch.len(), batch.traces());
    let mut pause = Duration::from_millis(100);
    let outcome = loop {
        let started = std::time::Instant::now();
        match store::write(pool, batch).instrument(commit.clone()).await {
            Ok(outcome) => {
                metrics::histogram!("ferrite_ingester_commit_seconds").record(started.elapsed().as_secs_f64());
                break Some(outcome);
            }
            Err(error) => {
                tracing::warn!(%error, rows = batch.len(), "writing a batch failed; retrying");
                metrics::counter!("ferrite_ingester_write_errors_total").increment(1);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => break None,
                }
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
        }
    };
    let traces = batch.take_traces();
    let messages = batch.take_messages();
    let Some(outcome) = outcome else {
        return;
    };
    for message in &messages {
        if let Err(error) = session.ack(message) {
            tracing::warn!(%error, "could not acknowledge a message");
        }
    }
    trace::committed(&commit, &outcome, traces);
    tracing::debug!(messages = messages.len(), ?outcome, "batch committed");
    stats.stored.fetch_add(outcome.stored, Ordering::Relaxed);
    stats.duplicates.fetch_add(outcome.duplicates, Ordering::Relaxed);
    stats.dead_lettered.fetch_add(outcome.dead_lettered, Ordering::Relaxed);
    stats.presence_updates.fetch_add(outcome.presence_updates, Ordering::Relaxed);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("ferrite_ingester_stored_total").increment(outcome.stored);
    metrics::counter!("ferrite_ingester_duplicates_total").increment(outcome.duplicates);
    metrics::counter!("ferrite_ingester_dead_letters_total").increment(outcome.dead_lettered);
    metrics::histogram!("ferrite_ingester_batch_messages").record(messages.len() as f64);
}
