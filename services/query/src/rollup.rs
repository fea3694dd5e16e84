//! [`Rollup`]: keeps the 1-minute rollup (`readings_1m`) up to date on a schedule, and prunes it by age.
//!
//! Each round recomputes, from the raw readings, every minute from a little before where the last round stopped
//! ([`LATE_WINDOW`], so readings that arrive late still count) up to the last complete minute, an hour per statement.
//! A reading that arrives more than [`LATE_WINDOW`] after its minute is stored raw but missing from the rollup.
//! Queries read the rollup only for time before `readings_rollup_state.raw_from`, which retention sets when it drops
//! raw readings; until then the rollup is a copy kept for later.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::QueryError;

/// How often the rollup runs by default: a minute, the rollup's own resolution.
pub const DEFAULT_ROLLUP_INTERVAL: Duration = Duration::from_secs(60);

/// How long after its minute a reading still makes it into the rollup: every round recomputes this much again.
pub const LATE_WINDOW: TimeDelta = TimeDelta::minutes(10);

/// The span one statement recomputes: bounded work per transaction while catching up after a long pause.
const CHUNK: TimeDelta = TimeDelta::hours(1);

/// Recomputes new minutes every `interval` and deletes rollup rows older than `keep`.
#[derive(Debug, Clone)]
pub struct Rollup {
    pool: PgPool,
    interval: Duration,
    keep: Duration,
}

impl Rollup {
    /// A zero interval or a `keep` under a day is refused.
    pub fn new(pool: PgPool, interval: Duration, keep: Duration) -> Result<Rollup, QueryError> {
        if interval.is_zero() {
            return Err(QueryError::invalid("the rollup interval must not be zero"));
        }
        if keep < Duration::from_secs(24 * 3600) {
            return Err(QueryError::invalid("the rollup must be kept at least a day"));
        }
        Ok(Rollup { pool, interval, keep })
    }

    /// One round: rolls up every complete minute not yet rolled up (and the late window again), prunes old rows,
    /// and returns how many (device, metric, minute) rows it wrote.
    ///
    /// The first round starts at the oldest daily partition of `readings`; readings that sit before it in the
    /// default partition are not rolled up.
    pub async fn run_once(&self) -> Result<u64, QueryError> {
        let (rolled_up_to, now_minute): (Option<DateTime<Utc>>, DateTime<Utc>) = sqlx::query_as(
            "select rolled_up_to, date_bin('1 minute', now(), timestamptz '1970-01-01 00:00:00+00')
             from readings_rollup_state",
        )
        .fetch_one(&self.pool)
        .await?;
        let mut start = match rolled_up_to {
            Some(rolled_up_to) => rolled_up_to - LATE_WINDOW,
            None => self.oldest_partition().await?.unwrap_or(now_minute - LATE_WINDOW),
        };
        let mut written = 0u64;
        while start < now_minute {
            let end = (start + CHUNK).min(now_minute);
            let mut tx = self.pool.begin().await?;
            // Several processes may run the rollup (every ingester does); one at a time does the work.
            let ours: bool =
                sqlx::query_scalar("select pg_try_advisory_xact_lock(hashtext('ferrite_rollup_readings'))")
                    .fetch_one(&mut *tx)
                    .await?;
            if !ours {
                tracing::debug!("another process is rolling up readings");
                break;
            }
            let rows: i64 = sqlx::query_scalar("select ferrite_rollup_readings($1, $2)")
                .bind(start)
                .bind(end)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query("update readings_rollup_state set rolled_up_to = greatest(coalesce(rolled_up_to, $1), $1)")
                .bind(end)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            written += u64::try_from(rows).unwrap_or(0);
            start = end;
        }
        let keep = TimeDelta::from_std(self.keep).unwrap_or(TimeDelta::MAX);
        if let Some(cutoff) = now_minute.checked_sub_signed(keep) {
            let pruned =
                sqlx::query("delete from readings_1m where bucket < $1").bind(cutoff).execute(&self.pool).await?;
            if pruned.rows_affected() > 0 {
                tracing::info!(rows = pruned.rows_affected(), "pruned the 1-minute rollup");
            }
        }
        Ok(written)
    }

    /// The start of the oldest daily partition of `readings`, if there is one.
    async fn oldest_partition(&self) -> Result<Option<DateTime<Utc>>, QueryError> {
        // Partition names are ours (`readings_YYYYMMDD`, checked by the pattern), so the date parse cannot fail.
        Ok(sqlx::query_scalar(
            "select min(to_date(substr(c.relname, 10), 'YYYYMMDD'))::timestamp at time zone 'UTC'
             from pg_inherits i join pg_class c on c.oid = i.inhrelid
             where i.inhparent = 'readings'::regclass and c.relname ~ '^readings_[0-9]{8}$'",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Runs a round at once and then every interval until `shutdown`; a failed round is logged and retried next time.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(keep = %humantime::format_duration(self.keep), "1-minute rollup started");
        loop {
            let round = tokio::select! {
                round = self.run_once() => round,
                () = shutdown.cancelled() => return,
            };
            match round {
                Ok(rows) => {
                    metrics::counter!("ferrite_rollup_rows_total").increment(rows);
                    tracing::debug!(rows, "rolled up readings");
                }
                Err(err) => tracing::warn!(cause = %err, "rollup failed; trying again next round"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}
