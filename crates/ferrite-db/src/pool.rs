//! Connecting, migrating, and keeping the daily `readings` partitions ahead of time.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::DbError;

/// Enough for a service's concurrent batches and queries; PostgreSQL on a small machine
/// does not get faster with more active connections than a few per core, and several services share it.
pub const MAX_CONNECTIONS: u32 = 10;

/// How long a query waits for a free connection before failing, instead of hanging when the pool is exhausted
/// or the server is gone.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a readiness answer about the database (`/readyz`) is reused, so that frequent probes cost the server
/// one `SELECT 1` per period.
pub const READY_CACHE: Duration = Duration::from_secs(1);

/// The schema, embedded at compile time so that the binary migrates from any working directory.
static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Pool options with our defaults, for callers that need to change one (say, a bigger pool for the ingester).
pub fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new().max_connections(MAX_CONNECTIONS).acquire_timeout(ACQUIRE_TIMEOUT)
}

/// Opens a pool and checks that the server answers, so bad configuration fails at startup rather than on the first reading.
pub async fn connect(options: PgConnectOptions) -> Result<PgPool, DbError> {
    Ok(pool_options().connect_with(options).await?)
}

/// `SELECT 1`: `Ok` when the server answers, the reason otherwise; for readiness checks, which bound its time.
pub async fn ping(pool: &PgPool) -> Result<(), String> {
    match sqlx::query("select 1").execute(pool).await {
        Ok(_) => Ok(()),
        Err(error) => Err(format!("the database does not answer: {error}")),
    }
}

/// Applies the embedded migrations that the database does not have yet.
///
/// Safe to call from several processes at once: sqlx serialises them with an advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Makes sure that daily `readings` partitions exist from `days_back` days before today to `days_ahead` days after it (UTC days),
/// and returns how many it created.
///
/// Rows that landed in the default partition for one of those days are moved into the new partition.
/// "Today" is the database server's clock, which is the one that its `now()` defaults use too.
/// Safe to call concurrently from several ingesters.
pub async fn ensure_partitions(pool: &PgPool, days_back: u32, days_ahead: u32) -> Result<u32, DbError> {
    // Beyond i32 the SQL function rejects the range anyway (more than ten years).
    let days_back = i32::try_from(days_back).unwrap_or(i32::MAX);
    let days_ahead = i32::try_from(days_ahead).unwrap_or(i32::MAX);
    let created: i32 = sqlx::query_scalar(
        "select ferrite_ensure_readings_partitions(
             (now() at time zone 'UTC')::date - $1::integer,
             (now() at time zone 'UTC')::date + $2::integer)",
    )
    .bind(days_back)
    .bind(days_ahead)
    .fetch_one(pool)
    .await?;
    if created > 0 {
        tracing::info!(created, "created daily readings partitions");
    }
    // The function counts up from zero, so it is never negative.
    Ok(u32::try_from(created).unwrap_or(0))
}
