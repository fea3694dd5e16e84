//! [`Retention`]: drops expired daily partitions of `readings` on a schedule.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::QueryError;

/// How often retention runs by default: partitions are whole days, so an hourly check drops each within the hour
/// after it expires, at the cost of one catalog query per hour.
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// The shortest retention accepted: the ingester keeps yesterday's partition ready, and dropping it every hour
/// only for the ingester to create it again helps nobody.
pub const MIN_RETENTION: Duration = Duration::from_secs(2 * 24 * 3600);

/// Drops the readings older than `retention` (whole UTC days, partition by partition) every `interval`.
#[derive(Debug, Clone)]
pub struct Retention {
    pool: PgPool,
    retention: Duration,
    interval: Duration,
}

impl Retention {
    /// Checks the configuration before anything runs: a retention under [`MIN_RETENTION`] or a zero interval is refused.
    pub fn new(pool: PgPool, retention: Duration, interval: Duration) -> Result<Retention, QueryError> {
        if retention < MIN_RETENTION {
            return Err(QueryError::invalid(format!(
                "retention {} is too short: at least {}",
                humantime::format_duration(retention),
                humantime::format_duration(MIN_RETENTION)
            )));
        }
        if interval.is_zero() {
            return Err(QueryError::invalid("the retention interval must not be zero"));
        }
        Ok(Retention { pool, retention, interval })
    }

    /// One round: drops what has expired and returns the partitions dropped.
    pub async fn run_once(&self) -> Result<Vec<String>, QueryError> {
        ferrite_db::drop_expired_partitions(&self.pool, self.retention).await.map_err(|err| match err {
            ferrite_db::DbError::Database(err) => QueryError::Database(err),
            other => QueryError::Internal(other.to_string()),
        })
    }

    /// Runs a round at once and then every interval until `shutdown`; a failed round is logged and retried next time.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(retention = %humantime::format_duration(self.retention), "readings retention started");
        loop {
            match self.run_once().await {
                Ok(dropped) if dropped.is_empty() => tracing::debug!("no readings partition has expired"),
                Ok(dropped) => {
                    metrics::counter!("ferrite_retention_partitions_dropped_total").increment(dropped.len() as u64);
                    tracing::info!(partitions = ?dropped, "dropped expired readings partitions");
                }
                Err(err) => tracing::warn!(cause = %err, "readings retention failed; trying again next round"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}
