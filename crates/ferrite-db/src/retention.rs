//! Retention: dropping whole daily `readings` partitions once their day has expired.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::types::chrono::{DateTime, NaiveDate, Utc};

use crate::DbError;

/// How long a drop waits for its lock on `readings` before giving up until the next round,
/// so that a long query never makes writers queue behind the drop.
pub const DROP_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Retentions longer than this keep everything.
const MAX_RETENTION: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

/// Drops every daily partition `readings_YYYYMMDD` whose whole UTC day ended before `now() - retention`
/// (the database server's clock), and deletes the rows of such days from `readings_default`.
/// Returns the names of the dropped partitions, oldest first.
///
/// Afterwards `readings_rollup_state.raw_from` holds the start of that UTC day: raw readings are complete from there on.
///
/// Only partitions attached to `readings` are considered, so a partition detached on purpose is kept;
/// the default partition itself is never dropped.
/// A partition whose lock cannot be had within [`DROP_LOCK_TIMEOUT`] is left for the next call, and the error is returned.
pub async fn drop_expired_partitions(pool: &PgPool, retention: Duration) -> Result<Vec<String>, DbError> {
    // Beyond a century nothing is old enough, and the subtraction below stays within PostgreSQL's range.
    if retention > MAX_RETENTION {
        return Ok(Vec::new());
    }
    let cutoff: DateTime<Utc> = sqlx::query_scalar("select now() - make_interval(secs => $1)")
        .bind(retention.as_secs_f64())
        .fetch_one(pool)
        .await?;
    // The first instant that is kept: the start of the UTC day holding the cutoff. Earlier days are wholly expired.
    let keep_from = cutoff.date_naive();
    let partitions: Vec<String> = sqlx::query_scalar(
        "select c.relname::text from pg_inherits i join pg_class c on c.oid = i.inhrelid
         where i.inhparent = 'readings'::regclass and c.relname ~ '^readings_[0-9]{8}$'
         order by c.relname",
    )
    .fetch_all(pool)
    .await?;
    let mut dropped = Vec::new();
    for name in partitions {
        let Some(day) = partition_day(&name) else { continue };
        if day >= keep_from {
            continue;
        }
        let mut tx = pool.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("set local lock_timeout = {}", DROP_LOCK_TIMEOUT.as_millis())))
            .execute(&mut *tx)
            .await?;
        // The name matched `readings_[0-9]{8}` above, so it needs no quoting beyond the double quotes.
        // `if exists`: another process running retention at the same time may have dropped it first.
        sqlx::query(sqlx::AssertSqlSafe(format!(r#"drop table if exists "{name}""#))).execute(&mut *tx).await?;
        tx.commit().await?;
        tracing::info!(partition = %name, "dropped expired readings partition");
        dropped.push(name);
    }
    let keep_from_ts = keep_from.and_hms_opt(0, 0, 0).map(|start| start.and_utc());
    if let Some(keep_from_ts) = keep_from_ts {
        let deleted =
            sqlx::query("delete from readings_default where ts < $1").bind(keep_from_ts).execute(pool).await?;
        if deleted.rows_affected() > 0 {
            tracing::info!(rows = deleted.rows_affected(), "deleted expired readings from the default partition");
        }
        // From here on raw readings are complete; queries read the 1-minute rollup for what lies before.
        sqlx::query("update readings_rollup_state set raw_from = greatest(coalesce(raw_from, '-infinity'), $1)")
            .bind(keep_from_ts)
            .execute(pool)
            .await?;
    }
    Ok(dropped)
}

/// The day of a partition named `readings_YYYYMMDD`; `None` for any other name.
fn partition_day(name: &str) -> Option<NaiveDate> {
    let digits = name.strip_prefix("readings_")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    NaiveDate::parse_from_str(digits, "%Y%m%d").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names() {
        assert_eq!(partition_day("readings_20261125"), NaiveDate::from_ymd_opt(2026, 11, 25));
        assert_eq!(partition_day("readings_default"), None);
        assert_eq!(partition_day("readings_2026112"), None);
        assert_eq!(partition_day("readings_20261399"), None);
        assert_eq!(partition_day("other_20261125"), None);
    }
}
