//! [`TelemetryService`]: the one implementation of range queries and latest values, in PostgreSQL.
//!
//! Raw queries walk the primary key `(device_id, metric, ts)` of `readings` over the range; bucketed ones
//! aggregate with `date_bin` in the database, so only the points travel. Pages continue by keyset
//! (`(metric, ts)` after the previous page's last point), never by OFFSET, so a page costs the same wherever it starts
//! and rows arriving meanwhile neither repeat nor skip points.
//!
//! Once retention has dropped raw readings (`readings_rollup_state.raw_from`), a bucketed query with whole-minute
//! buckets starting on a whole minute reads the 1-minute rollup (`readings_1m`) for the time before that point and
//! the raw readings after it, and aggregates both in one statement; other queries see only the raw readings there are.

use chrono::{DateTime, TimeDelta, Utc};
use ferrite_core::DeviceId;
use sqlx::Arguments;
use sqlx::PgPool;
use sqlx::postgres::PgArguments;
use sqlx::postgres::types::PgInterval;

use crate::QueryError;
use crate::model::{LatestValue, Point, PointPage, Position, RangeQuery};

/// Buckets are aligned to the Unix epoch, so `1m` buckets start on whole minutes and `1d` ones at midnight UTC.
const BUCKET_ORIGIN: &str = "timestamptz '1970-01-01 00:00:00+00'";

/// Range queries and latest values over the readings the ingester stores.
#[derive(Clone)]
pub struct TelemetryService {
    pool: PgPool,
}

impl TelemetryService {
    pub fn new(pool: PgPool) -> Self {
        TelemetryService { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// One page of `query`. An empty first page for a device that is neither registered nor has ever sent a reading
    /// is [`QueryError::DeviceNotFound`]; a known device without data in the range gets an empty page.
    #[tracing::instrument(skip(self), fields(device_id = %query.device))]
    pub async fn query(&self, query: &RangeQuery) -> Result<PointPage, QueryError> {
        let raw_from = self.raw_from(query).await?;
        let mut rows: Vec<(String, DateTime<Utc>, f64)> = match Statement::of(query, raw_from) {
            None => Vec::new(),
            // The statement is assembled from fixed fragments only; every value travels as a parameter.
            Some(statement) => {
                let arguments = statement.arguments(query)?;
                sqlx::query_as_with(sqlx::AssertSqlSafe(statement.sql), arguments).fetch_all(&self.pool).await?
            }
        };
        let next_cursor = if rows.len() > query.limit as usize {
            rows.truncate(query.limit as usize);
            rows.last().map(|(metric, ts, _)| query.cursor_after(&Position { metric: metric.clone(), ts: *ts }))
        } else {
            None
        };
        if rows.is_empty() && query.after.is_none() && !self.device_known(&query.device).await? {
            return Err(QueryError::DeviceNotFound(query.device.to_string()));
        }
        let points = rows.into_iter().map(|(metric, ts, value)| Point { metric, ts, value }).collect();
        Ok(PointPage { points, next_cursor })
    }

    /// `EXPLAIN (ANALYZE, BUFFERS)` of the very statement [`TelemetryService::query`] runs for `query`, line by line;
    /// for measurements and diagnostics (it executes the query).
    pub async fn explain(&self, query: &RangeQuery) -> Result<Vec<String>, QueryError> {
        let raw_from = self.raw_from(query).await?;
        let Some(statement) = Statement::of(query, raw_from) else { return Ok(Vec::new()) };
        let arguments = statement.arguments(query)?;
        let sql = format!("explain (analyze, buffers) {}", statement.sql);
        Ok(sqlx::query_scalar_with(sqlx::AssertSqlSafe(sql), arguments).fetch_all(&self.pool).await?)
    }

    /// Where raw readings begin, when retention has dropped some after the start of a bucketed `query` that the
    /// 1-minute rollup can answer: the part before it is read from the rollup.
    async fn raw_from(&self, query: &RangeQuery) -> Result<Option<DateTime<Utc>>, QueryError> {
        if !query.bucket.is_some_and(|bucket| bucket.fits_rollup(query.from)) {
            return Ok(None);
        }
        let raw_from: Option<DateTime<Utc>> = sqlx::query_scalar("select raw_from from readings_rollup_state")
            .fetch_optional(&self.pool)
            .await?
            .flatten();
        Ok(raw_from.filter(|raw_from| *raw_from > query.from))
    }

    /// The newest reading of every metric of `device`, sorted by metric (from `latest_readings`, never the big table).
    #[tracing::instrument(skip(self), fields(device_id = %device))]
    pub async fn latest(&self, device: &DeviceId) -> Result<Vec<LatestValue>, QueryError> {
        let rows: Vec<(String, DateTime<Utc>, f64, Option<String>)> =
            sqlx::query_as("select metric, ts, value, unit from latest_readings where device_id = $1 order by metric")
                .bind(device.as_str())
                .fetch_all(&self.pool)
                .await?;
        if rows.is_empty() && !self.device_known(device).await? {
            return Err(QueryError::DeviceNotFound(device.to_string()));
        }
        Ok(rows.into_iter().map(|(metric, ts, value, unit)| LatestValue { metric, ts, value, unit }).collect())
    }

    /// True when the device is registered or has ever sent a reading (the ingester registers senders, and keeps
    /// their latest values, so a device with readings is always known).
    async fn device_known(&self, device: &DeviceId) -> Result<bool, QueryError> {
        Ok(sqlx::query_scalar(
            "select exists (select 1 from devices where id = $1)
                 or exists (select 1 from latest_readings where device_id = $1)",
        )
        .bind(device.as_str())
        .fetch_one(&self.pool)
        .await?)
    }
}

/// The SQL of one page of a range query and the values it needs besides the query's own.
struct Statement {
    sql: String,
    from: DateTime<Utc>,
    after_metric: String,
    after_ts: DateTime<Utc>,
    /// Where the rollup ends and raw readings take over, for queries that read the rollup.
    split: DateTime<Utc>,
}

impl Statement {
    /// `None` when the page is empty without asking (the cursor is past the range).
    /// With `raw_from`, the minutes before it come from the 1-minute rollup, the rest from the raw readings.
    fn of(query: &RangeQuery, raw_from: Option<DateTime<Utc>>) -> Option<Statement> {
        let mut from = query.from;
        // For one metric the keyset condition folds into the range's start, which keeps the plan a plain range scan.
        // Across metrics it is a row comparison on (metric, ts), which the primary key serves too.
        // Validation keeps cursors and buckets small enough for this sum; should one overflow anyway, nothing follows.
        let (after_metric, after_ts) = match (&query.after, &query.bucket) {
            (None, _) => (String::new(), query.from),
            (Some(after), None) => (after.metric.clone(), after.ts.checked_add_signed(TimeDelta::microseconds(1))?),
            (Some(after), Some(bucket)) => (after.metric.clone(), after.ts.checked_add_signed(bucket.width)?),
        };
        if query.metric.is_some() && query.after.is_some() {
            from = from.max(after_ts);
        }
        if from >= query.to {
            return None;
        }
        let metric_filter = if query.metric.is_some() { "metric = $5" } else { "(metric, ts) >= ($5, $6)" };
        let split = raw_from.unwrap_or(from).clamp(from, query.to);
        let sql = match &query.bucket {
            Some(bucket) if raw_from.is_some() => {
                let rollup_filter = if query.metric.is_some() { "metric = $5" } else { "(metric, bucket) >= ($5, $6)" };
                format!(
                    "with minutes as (
                         select metric, bucket as ts, count, sum, min, max, first, last from readings_1m
                         where device_id = $1 and bucket >= $2 and bucket < $8 and {rollup_filter}
                         union all
                         select metric, date_bin('1 minute', ts, {BUCKET_ORIGIN}), count(*), sum(value), min(value),
                                max(value), (array_agg(value order by ts))[1], (array_agg(value order by ts desc))[1]
                         from readings
                         where device_id = $1 and ts >= $8 and ts < $3 and {metric_filter}
                         group by 1, 2
                     )
                     select metric, date_bin($7, ts, {BUCKET_ORIGIN}) as bucket, {agg} as value from minutes
                     group by metric, bucket order by metric, bucket limit $4",
                    agg = bucket.agg.rollup_sql()
                )
            }
            None => format!(
                "select metric, ts, value from readings
                 where device_id = $1 and ts >= $2 and ts < $3 and {metric_filter}
                 order by metric, ts limit $4"
            ),
            Some(bucket) => format!(
                "select metric, date_bin($7, ts, {BUCKET_ORIGIN}) as bucket, {agg} as value from readings
                 where device_id = $1 and ts >= $2 and ts < $3 and {metric_filter}
                 group by metric, bucket order by metric, bucket limit $4",
                agg = bucket.agg.sql()
            ),
        };
        Some(Statement { sql, from, after_metric, after_ts, split })
    }

    /// The parameters $1 to $8, in order (unused ones are still typed, so the server accepts them).
    fn arguments(&self, query: &RangeQuery) -> Result<PgArguments, QueryError> {
        // One row more than the page tells whether another page follows.
        let fetch = i64::from(query.limit) + 1;
        let width = query.bucket.map(|bucket| bucket.width).unwrap_or_default();
        let mut arguments = PgArguments::default();
        let bound = (|| {
            arguments.add(query.device.as_str())?;
            arguments.add(self.from)?;
            arguments.add(query.to)?;
            arguments.add(fetch)?;
            arguments.add(query.metric.clone().unwrap_or_else(|| self.after_metric.clone()))?;
            arguments.add(self.after_ts)?;
            arguments.add(interval(width)?)?;
            arguments.add(self.split)
        })();
        bound.map_err(|err| QueryError::Internal(format!("cannot encode query parameters: {err}")))?;
        Ok(arguments)
    }
}

/// A bucket width as a PostgreSQL interval (microseconds only: `date_bin` refuses months).
fn interval(width: TimeDelta) -> Result<PgInterval, QueryError> {
    let microseconds = width.num_microseconds().ok_or_else(|| QueryError::invalid("bucket is too large"))?;
    Ok(PgInterval { months: 0, days: 0, microseconds })
}
