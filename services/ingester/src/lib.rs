//! The ingester: sensor readings and device presence from MQTT into PostgreSQL.
//!
//! It holds persistent MQTT sessions, subscribed through a shared subscription so that several
//! ingesters (and the several sessions of one ingester) split the load, and receives with manual
//! acknowledgements: a QoS 1/2 message is acknowledged only after the transaction holding its rows
//! has committed, and each session acknowledges in arrival order.
//! If the process dies before that, the broker redelivers, and the readings' primary key
//! `(device_id, metric, ts)` makes the second insert a no-op, so each reading is stored once.
//!
//! Receiving and committing overlap: each session ([`lane`]) parses messages into its next batch while the
//! writers ([`writer`]) commit the previous ones, several sessions' batches in one transaction.
//! [`Config::sessions`] spreads the receiving over several broker connections.
//!
//! # Layout
//! - [`Config`], [`Ingester`] (`bind` / `run`), [`Stats`].
//! - [`lane`]: one session: receiving into batches, and why acknowledgements stay in arrival order.
//! - [`writer`]: committing the sessions' batches together, then acknowledging them.
//! - [`batch`]: turning messages into rows, dead letters and presence changes.
//! - [`store`]: writing one batch in one transaction; what a write did (`outcome`, a leaf, so `trace` does not need `store`).
//! - [`trace`]: the spans that continue a reading's trace (`ingest.message`, `ingest.commit`, `ingest.stored`).

pub mod batch;
pub mod lane;
mod outcome;
pub mod store;
pub mod trace;
pub mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use ferrite_core::TimeWindow;
use ferrite_mqtt::{BrokerUrl, QoS, SessionConfig};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::lane::Lane;

/// Rows per transaction: big enough to amortise the commit, small enough to keep latency low.
pub const DEFAULT_BATCH_SIZE: usize = 2000;
/// The longest a reading waits for its batch to fill before it is written anyway.
pub const DEFAULT_BATCH_INTERVAL: Duration = Duration::from_millis(50);
/// MQTT sessions per ingester. Measured with `ferrite bench pipeline` (100 devices flat out, 2 cores; BENCHMARKS.md):
/// one session committed ~10,000 rows/s and its queue at the broker overflowed, 2 sessions ~13,600 rows/s and still
/// overflowed, 4 kept up with zero loss (the broker keeps a queue per session), 8 cost the broker more than they gained.
/// Sessions only receive; the writers ([`writer::WRITERS`]) hold the database connections.
pub const DEFAULT_SESSIONS: usize = 4;
/// The most sessions one ingester may run: each is a broker connection and a persistent session at the broker.
pub const MAX_SESSIONS: usize = 64;
/// How long the broker keeps our session (and queues for us) while no ingester is connected.
pub const SESSION_EXPIRY_SECS: u32 = 7 * 24 * 3600;
/// Sensor readings, single (`sensors/{device}/{metric}`) and batched (`sensors/{device}`).
const READINGS_FILTER: &str = "sensors/#";
/// Device presence (`devices/{device}/status`).
const STATUS_FILTER: &str = "devices/+/status";
/// How often the upcoming daily partitions are checked (they are kept a week ahead) and old dead letters pruned.
const HOUSEKEEPING: Duration = Duration::from_secs(3600);

/// The largest reading payload stored by default; a larger one becomes a dead letter (with a sample of it).
/// Readings are numbers: 64 KiB holds a JSON batch of well over a thousand metrics.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;
/// Readings one transaction writes at most: a JSON batch message carries many readings, so a batch bounded by
/// messages alone ([`DEFAULT_BATCH_SIZE`]) is not bounded in rows.
pub const MAX_COMMIT_READINGS: usize = 20_000;
/// Payload bytes one session's batch holds at most (they stay in memory until acknowledged), and one
/// transaction gathers from several sessions at most: 2,000 messages of 1 MiB must not make one 2 GB batch.
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// How long dead letters are kept by default.
pub const DEFAULT_DEAD_LETTER_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Bounds on what the ingester accepts, how much one commit holds and how long dead letters are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Larger payloads become dead letters ([`DEFAULT_MAX_PAYLOAD`]).
    pub max_payload: usize,
    /// Readings whose own time lies outside become dead letters.
    pub window: TimeWindow,
    /// See [`MAX_COMMIT_READINGS`].
    pub max_commit_readings: usize,
    /// See [`MAX_BATCH_BYTES`].
    pub max_batch_bytes: usize,
    /// Dead letters older than this are deleted by the hourly housekeeping.
    pub dead_letter_retention: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload: DEFAULT_MAX_PAYLOAD,
            window: TimeWindow::default(),
            max_commit_readings: MAX_COMMIT_READINGS,
            max_batch_bytes: MAX_BATCH_BYTES,
            dead_letter_retention: DEFAULT_DEAD_LETTER_RETENTION,
        }
    }
}

/// How the ingester connects and batches.
#[derive(Clone, Debug)]
pub struct Config {
    pub broker: BrokerUrl,
    /// Stable per ingester instance: the broker keeps the persistent session under this id.
    pub client_id: String,
    /// Never printed: `Debug` shows the username only.
    pub credentials: Option<ferrite_core::Credentials>,
    /// The `$share/{group}/...` group; `None` subscribes directly (one ingester only).
    pub shared_group: Option<String>,
    pub qos: QoS,
    pub batch_size: usize,
    pub batch_interval: Duration,
    /// MQTT sessions on the same shared group, each receiving into its own batches (1 to [`MAX_SESSIONS`]);
    /// their client ids come from [`Config::session_client_id`].
    pub sessions: usize,
    pub limits: Limits,
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
            sessions: DEFAULT_SESSIONS,
            limits: Limits::default(),
        }
    }

    /// The client id of session `index` (from 0): the configured id itself for the first session, so that
    /// an ingester keeps the persistent session (and whatever the broker queued in it) that it had before it ran
    /// several, and `{client_id}-{index}` for the others. The ids are stable, so a restarted ingester with the
    /// same `sessions` takes over every one of its sessions and their queues.
    pub fn session_client_id(&self, index: usize) -> String {
        match index {
            0 => self.client_id.clone(),
            _ => format!("{}-{index}", self.client_id),
        }
    }

    /// The session configuration of session `index`: persistent, manual acks, our subscriptions.
    pub fn session_config(&self, index: usize) -> SessionConfig {
        let mut session = SessionConfig::new(self.broker.clone(), self.session_client_id(index));
        session.credentials = self.credentials.clone().map(ferrite_core::Credentials::into_pair);
        session.clean_start = false;
        session.session_expiry = Some(SESSION_EXPIRY_SECS);
        session.manual_acks = true;
        // Acks wait for the batch's commit, and a session holds up to two batches at once (one committing,
        // one filling), so the broker must be allowed two whole batches in flight.
        let in_flight = self.batch_size.saturating_mul(lane::BATCHES_IN_FLIGHT);
        session.receive_maximum = Some(u16::try_from(in_flight).unwrap_or(u16::MAX).max(1));
        session.subscriptions = self.session_filters(index).into_iter().map(|filter| (filter, self.qos)).collect();
        session
    }

    /// The subscription filters, shared when a group is set.
    pub fn filters(&self) -> Vec<String> {
        [READINGS_FILTER, STATUS_FILTER].iter().map(|filter| self.shared(filter)).collect()
    }

    /// How many sessions run: [`Config::sessions`], or one without a shared group, since every session of a
    /// plain subscription would receive every message.
    pub fn session_count(&self) -> usize {
        if self.shared_group.is_some() { self.sessions } else { 1 }
    }

    /// The filters of session `index`: every session takes readings, only the first takes device status.
    ///
    /// A device's `online` and `offline` must be applied in the order it sent them (the last one wins), and only
    /// one session keeps that order: the broker spreads a shared subscription's messages over its sessions, which
    /// receive and commit independently. Readings need no such order: each carries its time, and the latest value
    /// is chosen by that time.
    pub fn session_filters(&self, index: usize) -> Vec<String> {
        match index {
            0 => self.filters(),
            _ => vec![self.shared(READINGS_FILTER)],
        }
    }

    fn shared(&self, filter: &str) -> String {
        match &self.shared_group {
            Some(group) => format!("$share/{group}/{filter}"),
            None => filter.to_owned(),
        }
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
    /// True once the broker has granted the subscriptions of every session.
    pub subscribed: AtomicBool,
    /// Each running session's connection state, for readiness.
    pub(crate) sessions: std::sync::Mutex<Vec<ferrite_mqtt::SessionStatus>>,
}

impl Stats {
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// `Ok` when every session is connected and its subscriptions answered now (not only once, as
    /// [`Stats::subscribed`]); otherwise which session waits for what. For `/readyz`.
    pub fn sessions_ready(&self) -> Result<(), String> {
        let sessions = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if sessions.is_empty() {
            return Err("the ingester's MQTT sessions have not started".to_owned());
        }
        for (index, session) in sessions.iter().enumerate() {
            session.check().map_err(|reason| format!("session {index}: {reason}"))?;
        }
        Ok(())
    }
}

/// A configured ingester, ready to run.
pub struct Ingester {
    config: Config,
    pool: PgPool,
    stats: Arc<Stats>,
}

impl Ingester {
    /// Checks the configuration, that the database is reachable and has today's partitions; the MQTT sessions start in `run`.
    pub async fn bind(config: Config, pool: PgPool) -> anyhow::Result<Ingester> {
        anyhow::ensure!(
            (1..=MAX_SESSIONS).contains(&config.sessions),
            "the ingester needs 1 to {MAX_SESSIONS} sessions, not {}",
            config.sessions
        );
        anyhow::ensure!(config.batch_size > 0, "the ingester's batch size must be at least 1");
        anyhow::ensure!(config.limits.max_payload > 0, "the ingester's largest payload must be at least 1 byte");
        store::ensure_partitions(&pool).await?;
        Ok(Ingester { config, pool, stats: Arc::default() })
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Runs until `shutdown`; then every session writes and acknowledges what it holds and disconnects cleanly.
    ///
    /// Dropping (or aborting) the future stops the ingester as a crash would: every session stops receiving at once,
    /// a transaction already in progress may still commit, and nothing more is acknowledged; the broker redelivers
    /// the rest, and the primary key skips what was committed.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Ingester { config, pool, stats } = self;
        tracing::info!(
            broker = %config.broker,
            client_id = %config.client_id,
            sessions = config.session_count(),
            filters = ?config.filters(),
            "ingester starting"
        );
        // One session stopping on its own (it cannot, short of a bug) stops the others gracefully.
        let stop = shutdown.child_token();
        let sessions = config.session_count();
        let subscribed = Arc::new(AtomicUsize::new(0));
        let (handover, queue) = writer::queue(sessions);
        // The writers are not aborted when this future is dropped: see `KillSwitch`.
        let _kill_switch = queue.kill_switch(stop.clone());
        let writers: Vec<_> = (0..writer::WRITERS.min(sessions))
            .map(|_| tokio::spawn(writer::run(pool.clone(), queue.clone(), stats.clone(), stop.clone(), config.limits)))
            .collect();
        // A JoinSet aborts its tasks when dropped, so a killed ingester leaves no session behind.
        let mut lanes = JoinSet::new();
        for index in 0..sessions {
            let lane = Lane {
                index,
                session: config.session_config(index),
                batch_size: config.batch_size,
                batch_interval: config.batch_interval,
                limits: config.limits,
                stats: stats.clone(),
                subscribed: lane::Subscribed { sessions: subscribed.clone(), of: sessions },
            };
            lanes.spawn(lane.run(stop.clone(), handover.clone()));
        }
        // The writers stop once every session has dropped its sender.
        drop(handover);
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        let mut result = Ok(());
        loop {
            tokio::select! {
                joined = lanes.join_next() => {
                    let failure = match joined {
                        None => break,
                        Some(Ok(Ok(()))) => continue,
                        Some(Ok(Err(error))) => error,
                        Some(Err(error)) => anyhow::Error::new(error).context("an ingester session panicked"),
                    };
                    if !stop.is_cancelled() {
                        tracing::error!(error = %failure, "an ingester session stopped; stopping the others");
                        stop.cancel();
                    }
                    if result.is_ok() {
                        result = Err(failure);
                    }
                }
                _ = housekeeping.tick() => housekeep(&pool, &config.limits).await,
            }
        }
        for writer in writers {
            if let Err(error) = writer.await {
                tracing::error!(%error, "an ingester writer panicked");
            }
        }
        tracing::info!(stored = stats.stored(), "ingester stopped");
        result
    }
}

/// The hourly chores (the first right at start): the readings partitions of the coming days, and pruning
/// dead letters past their retention. A failure is logged and tried again next time.
async fn housekeep(pool: &PgPool, limits: &Limits) {
    if let Err(error) = store::ensure_partitions(pool).await {
        tracing::warn!(%error, "could not create upcoming readings partitions");
    }
    match store::prune_dead_letters(pool, limits.dead_letter_retention).await {
        Ok(0) => {}
        Ok(pruned) => tracing::info!(pruned, "pruned dead letters past their retention"),
        Err(error) => tracing::warn!(%error, "could not prune old dead letters"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_client_ids_are_stable_and_distinct() {
        let mut config = Config::new("mqtt://127.0.0.1:1883".parse().expect("a valid url"));
        config.client_id = "ingest-a".into();
        let ids: Vec<String> = (0..3).map(|index| config.session_client_id(index)).collect();
        assert_eq!(ids, ["ingest-a", "ingest-a-1", "ingest-a-2"]);
        assert_eq!(config.session_config(2).client_id, "ingest-a-2");
    }

    #[test]
    fn only_the_first_session_takes_device_status() {
        let config = Config::new("mqtt://127.0.0.1:1883".parse().expect("a valid url"));
        assert_eq!(config.session_filters(0), ["$share/ingest/sensors/#", "$share/ingest/devices/+/status"]);
        assert_eq!(config.session_filters(1), ["$share/ingest/sensors/#"]);
        let direct = Config { shared_group: None, ..config };
        assert_eq!(direct.session_filters(0), ["sensors/#", "devices/+/status"]);
        assert_eq!(direct.session_count(), 1);
    }

    #[test]
    fn receive_maximum_allows_two_batches() {
        let mut config = Config::new("mqtt://127.0.0.1:1883".parse().expect("a valid url"));
        let check = |batch_size: usize, expected: u16, config: &mut Config| {
            config.batch_size = batch_size;
            assert_eq!(config.session_config(0).receive_maximum, Some(expected), "batch size {batch_size}");
        };
        check(1, 2, &mut config);
        check(2000, 4000, &mut config);
        check(40_000, u16::MAX, &mut config);
    }
}
