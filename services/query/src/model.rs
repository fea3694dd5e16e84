//! The domain types of telemetry queries and the rules for their fields: ranges, buckets, aggregates, limits, cursors.
//!
//! Both faces build a [`QueryParams`] from what the client sent and get a validated [`RangeQuery`] from
//! [`RangeQuery::new`], so REST and gRPC accept and refuse exactly the same requests.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeDelta, Timelike, Utc};
use ferrite_core::DeviceId;
use ferrite_core::device::is_valid_name;
use serde::Serialize;
use utoipa::ToSchema;

use crate::QueryError;

/// The range when the client names none: the last hour, which is what a dashboard opens with.
pub const DEFAULT_RANGE: TimeDelta = TimeDelta::hours(1);

/// Points per page when the client asks for no particular number.
pub const DEFAULT_LIMIT: u32 = 1_000;

/// Points per page at most: bounds the memory and time of one request; longer results are paged with the cursor.
pub const MAX_LIMIT: u32 = 10_000;

/// Buckets in one query's range at most: more than any chart can show, and a guard against `bucket=1ms` over a year.
pub const MAX_BUCKETS: i64 = 10_000;

/// The smallest bucket: timestamps are stored to the microsecond, and finer buckets than this mean nothing for telemetry.
pub const MIN_BUCKET: TimeDelta = TimeDelta::milliseconds(1);

/// The largest bucket: a century, far beyond any chart, and small enough that a bucket's end stays within
/// chrono's and PostgreSQL's ranges wherever in the years 1900 to 9999 it starts.
pub const MAX_BUCKET: TimeDelta = TimeDelta::days(36_525);

/// How readings are combined per bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    Avg,
    Min,
    Max,
    Sum,
    Count,
    /// The value with the earliest timestamp in the bucket.
    First,
    /// The value with the latest timestamp in the bucket.
    Last,
}

impl Aggregate {
    pub const ALL: [Aggregate; 7] = [
        Aggregate::Avg,
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::Sum,
        Aggregate::Count,
        Aggregate::First,
        Aggregate::Last,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Aggregate::Avg => "avg",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Sum => "sum",
            Aggregate::Count => "count",
            Aggregate::First => "first",
            Aggregate::Last => "last",
        }
    }

    /// The SQL expression over one bucket's rows: a fixed string per variant, never built from input.
    pub(crate) fn sql(self) -> &'static str {
        match self {
            Aggregate::Avg => "avg(value)",
            Aggregate::Min => "min(value)",
            Aggregate::Max => "max(value)",
            Aggregate::Sum => "sum(value)",
            Aggregate::Count => "count(*)::double precision",
            Aggregate::First => "(array_agg(value order by ts))[1]",
            Aggregate::Last => "(array_agg(value order by ts desc))[1]",
        }
    }
}

impl Aggregate {
    /// The SQL expression over the 1-minute rollup rows (`count`, `sum`, `min`, `max`, `first`, `last`, minute `ts`)
    /// of one bucket: the same result as [`Aggregate::sql`] over the raw readings of those minutes.
    pub(crate) fn rollup_sql(self) -> &'static str {
        match self {
            Aggregate::Avg => "sum(sum) / sum(count)",
            Aggregate::Min => "min(min)",
            Aggregate::Max => "max(max)",
            Aggregate::Sum => "sum(sum)",
            Aggregate::Count => "sum(count)::double precision",
            Aggregate::First => "(array_agg(first order by ts))[1]",
            Aggregate::Last => "(array_agg(last order by ts desc))[1]",
        }
    }
}

impl Bucketing {
    /// True when the rollup can answer this bucketing exactly for a range starting at `from`:
    /// whole-minute buckets, and a start on a whole minute (so no bucket needs part of a minute).
    pub(crate) fn fits_rollup(&self, from: DateTime<Utc>) -> bool {
        let minute = TimeDelta::minutes(1);
        let whole = |delta: TimeDelta| delta.num_microseconds().is_some_and(|us| us % 60_000_000 == 0);
        self.width >= minute && whole(self.width) && from.timestamp_subsec_nanos() == 0 && from.timestamp() % 60 == 0
    }
}

impl fmt::Display for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Aggregate {
    type Err = QueryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Aggregate::ALL.into_iter().find(|agg| agg.as_str().eq_ignore_ascii_case(s.trim())).ok_or_else(|| {
            QueryError::invalid(format!(
                "unknown agg {:?}: expected one of avg, min, max, sum, count, first, last",
                truncate(s, 40)
            ))
        })
    }
}

/// A query as the client sent it, before validation; `None` means "not given".
#[derive(Debug, Clone, Default)]
pub struct QueryParams {
    pub device: String,
    pub metric: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub bucket: Option<TimeDelta>,
    pub agg: Option<Aggregate>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// A validated range query: readings of `device` (one metric or all) with `from <= ts < to`,
/// raw or one point per `bucket`, in (metric, ts) order, at most `limit` per page.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeQuery {
    pub device: DeviceId,
    pub metric: Option<String>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub bucket: Option<Bucketing>,
    pub limit: u32,
    /// Where the previous page ended.
    pub after: Option<Position>,
}

/// One point per bucket of `width`, aligned to the Unix epoch (so `1m` buckets start on whole minutes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucketing {
    pub width: TimeDelta,
    pub agg: Aggregate,
}

/// The last point of a page: its metric and its timestamp (a raw reading's, or its bucket's start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub metric: String,
    pub ts: DateTime<Utc>,
}

impl RangeQuery {
    /// Validates `params`; `now` is the default end of the range.
    pub fn new(params: QueryParams, now: DateTime<Utc>) -> Result<RangeQuery, QueryError> {
        let device = DeviceId::new(params.device)?;
        let metric = params.metric.filter(|metric| !metric.is_empty());
        if let Some(metric) = &metric
            && !is_valid_name(metric)
        {
            return Err(QueryError::invalid(format!(
                "invalid metric name {:?}: expected 1 to 64 of A-Z a-z 0-9 _ . -",
                truncate(metric, 80)
            )));
        }
        // PostgreSQL keeps microseconds; so does the range, so that what is echoed is what was compared.
        let to = to_micros(params.to.unwrap_or(now));
        let from = match params.from {
            Some(from) => to_micros(from),
            None => to.checked_sub_signed(DEFAULT_RANGE).ok_or_else(|| QueryError::invalid("to is out of range"))?,
        };
        for (name, at) in [("from", from), ("to", to)] {
            if !(earliest()..=latest()).contains(&at) {
                return Err(QueryError::invalid(format!(
                    "{name} is out of range: expected a time in the years 1900 to 9999"
                )));
            }
        }
        if from >= to {
            return Err(QueryError::invalid(format!(
                "inverted range: from ({}) must be before to ({})",
                rfc3339(from),
                rfc3339(to)
            )));
        }
        let bucket = match (params.bucket, params.agg) {
            (None, Some(agg)) => {
                return Err(QueryError::invalid(format!("agg={agg} needs a bucket (raw readings are not aggregated)")));
            }
            (None, None) => None,
            (Some(width), agg) => {
                if width < MIN_BUCKET {
                    return Err(QueryError::invalid("bucket must be at least 1ms"));
                }
                if width > MAX_BUCKET {
                    return Err(QueryError::invalid("bucket must be at most 36525d (a century)"));
                }
                let span = to - from;
                // Both are whole microseconds (MIN_BUCKET is 1000 of them); ceiling division.
                let (span_us, width_us) = (micros(span)?, micros(width)?);
                let buckets = span_us / width_us + i64::from(span_us % width_us != 0);
                if buckets > MAX_BUCKETS {
                    return Err(QueryError::invalid(format!(
                        "too many buckets: a bucket of {} over {} is {buckets} buckets; at most {MAX_BUCKETS} \
                         (use a larger bucket or a shorter range)",
                        format_delta(width),
                        format_delta(span)
                    )));
                }
                Some(Bucketing { width, agg: agg.unwrap_or(Aggregate::Avg) })
            }
        };
        let limit = match params.limit {
            None | Some(0) => DEFAULT_LIMIT,
            Some(limit) if limit > MAX_LIMIT => {
                return Err(QueryError::invalid(format!("limit {limit} is too large: at most {MAX_LIMIT}")));
            }
            Some(limit) => limit,
        };
        let width = bucket.map(|bucket| bucket.width);
        let after = match params.cursor.filter(|cursor| !cursor.is_empty()) {
            None => None,
            Some(cursor) => {
                let decoded = decode_cursor(&cursor)?;
                if decoded.device != device.as_str() {
                    return Err(QueryError::invalid("invalid cursor: it belongs to a query for another device"));
                }
                if decoded.width != width {
                    return Err(QueryError::invalid("invalid cursor: it belongs to a query with a different bucket"));
                }
                if metric.as_ref().is_some_and(|metric| *metric != decoded.position.metric) {
                    return Err(QueryError::invalid("invalid cursor: it belongs to a query for another metric"));
                }
                Some(decoded.position)
            }
        };
        Ok(RangeQuery { device, metric, from, to, bucket, limit, after })
    }

    /// The cursor that continues after `last`, the final point of a full page.
    pub(crate) fn cursor_after(&self, last: &Position) -> String {
        encode_cursor(&Cursor {
            device: self.device.as_str().to_owned(),
            width: self.bucket.map(|bucket| bucket.width),
            position: last.clone(),
        })
    }
}

/// Cursors carry their format's version, so a later format can refuse old cursors clearly.
/// Version 2 names the device and the bucket width, so a cursor cannot continue another query.
const CURSOR_VERSION: u8 = 2;

/// What a cursor says: the query it belongs to (device, bucket width or raw) and where its page ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub device: String,
    /// The bucket width; `None` for raw readings.
    pub width: Option<TimeDelta>,
    pub position: Position,
}

/// `{r|b}{version}|{ts micros}|{width micros}|{device}|{metric}` in unpadded URL-safe base64: opaque to clients,
/// and neither device ids nor metric names can contain `|`.
pub fn encode_cursor(cursor: &Cursor) -> String {
    let kind = if cursor.width.is_some() { 'b' } else { 'r' };
    let width = cursor.width.and_then(|width| width.num_microseconds()).unwrap_or(0);
    let micros = cursor.position.ts.timestamp_micros();
    URL_SAFE_NO_PAD
        .encode(format!("{kind}{CURSOR_VERSION}|{micros}|{width}|{}|{}", cursor.device, cursor.position.metric))
}

/// Decodes a cursor; anything but what [`encode_cursor`] makes of a valid query's point is an invalid argument,
/// including positions outside the times a query may name (they would overflow the next page's arithmetic).
pub fn decode_cursor(cursor: &str) -> Result<Cursor, QueryError> {
    let invalid = || QueryError::invalid("invalid cursor: pass nextCursor of the previous page unchanged");
    // A cursor this long was not made by us; refuse it before decoding anything.
    if cursor.len() > MAX_CURSOR_LEN {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor.trim()).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = text.splitn(5, '|');
    let (Some(head), Some(micros), Some(width), Some(device), Some(metric)) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let raw = match head.strip_suffix(&CURSOR_VERSION.to_string()) {
        Some("r") => true,
        Some("b") => false,
        _ => return Err(invalid()),
    };
    let micros: i64 = micros.parse().map_err(|_| invalid())?;
    let ts = DateTime::from_timestamp_micros(micros)
        .filter(|ts| (earliest()..=latest()).contains(ts))
        .ok_or_else(invalid)?;
    let width: i64 = width.parse().map_err(|_| invalid())?;
    let width = match raw {
        true if width == 0 => None,
        false => Some(TimeDelta::microseconds(width)).filter(|width| (MIN_BUCKET..=MAX_BUCKET).contains(width)),
        true => return Err(invalid()),
    };
    if !raw && width.is_none() {
        return Err(invalid());
    }
    if DeviceId::new(device).is_err() || !is_valid_name(metric) {
        return Err(invalid());
    }
    Ok(Cursor { device: device.to_owned(), width, position: Position { metric: metric.to_owned(), ts } })
}

/// The longest cursor [`encode_cursor`] can make, with room to spare (base64 of ~200 bytes).
const MAX_CURSOR_LEN: usize = 512;

/// The earliest time a query may name: well before any telemetry, well within PostgreSQL's and chrono's ranges.
fn earliest() -> DateTime<Utc> {
    DateTime::from_timestamp(-2_208_988_800, 0).unwrap_or(DateTime::<Utc>::MIN_UTC) // 1900-01-01
}

/// The latest time a query may name.
fn latest() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC) // 9999-12-31T23:59:59Z
}

fn micros(delta: TimeDelta) -> Result<i64, QueryError> {
    delta.num_microseconds().ok_or_else(|| QueryError::invalid("range or bucket is too large"))
}

/// Parses a time given as RFC 3339 (`2026-11-25T10:00:00Z`) or as milliseconds since the Unix epoch.
pub fn parse_instant(name: &str, text: &str) -> Result<DateTime<Utc>, QueryError> {
    let text = text.trim();
    let invalid = || {
        QueryError::invalid(format!(
            "invalid {name} {:?}: expected RFC 3339 (2026-11-25T10:00:00Z) or epoch milliseconds",
            truncate(text, 40)
        ))
    };
    if !text.is_empty() && text.bytes().enumerate().all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'-')) {
        let millis: i64 = text.parse().map_err(|_| invalid())?;
        return DateTime::from_timestamp_millis(millis).ok_or_else(invalid);
    }
    DateTime::parse_from_rfc3339(text).map(|at| at.with_timezone(&Utc)).map_err(|_| invalid())
}

/// Parses a bucket width such as `10s`, `1m`, `1h` or `1d` (humantime syntax).
pub fn parse_bucket(text: &str) -> Result<TimeDelta, QueryError> {
    let invalid = || {
        QueryError::invalid(format!("invalid bucket {:?}: expected a duration such as 10s, 1m, 1h", truncate(text, 40)))
    };
    let duration = humantime::parse_duration(text.trim()).map_err(|_| invalid())?;
    TimeDelta::from_std(duration).map_err(|_| invalid())
}

/// RFC 3339 with microseconds when there are any, in UTC.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// `at` without its nanoseconds beyond the microsecond.
fn to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    at.with_nanosecond(at.nanosecond() / 1000 * 1000).unwrap_or(at)
}

/// A span for a message: whole seconds when it is longer than a second (nobody reads `26s 406ms 821us`).
fn format_delta(delta: TimeDelta) -> String {
    let delta = if delta > TimeDelta::seconds(1) { TimeDelta::seconds(delta.num_seconds()) } else { delta };
    match delta.to_std() {
        Ok(duration) => humantime::format_duration(duration).to_string(),
        Err(_) => format!("{delta}"),
    }
}

/// At most `max` bytes of `s`, cut at a character boundary, for echoing bad input in errors.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One raw reading, or one bucket's aggregate (`ts` = the bucket's start).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Point {
    #[schema(example = "temperature")]
    pub metric: String,
    pub ts: DateTime<Utc>,
    pub value: f64,
}

/// One page of a range query.
#[derive(Debug, Clone, PartialEq)]
pub struct PointPage {
    pub points: Vec<Point>,
    /// Present when more points follow: pass it as `cursor` with the same query.
    pub next_cursor: Option<String>,
}

/// The newest reading of one metric of a device.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LatestValue {
    #[schema(example = "temperature")]
    pub metric: String,
    pub ts: DateTime<Utc>,
    pub value: f64,
    #[schema(example = "C")]
    pub unit: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("test times are valid").with_timezone(&Utc)
    }

    fn params(device: &str) -> QueryParams {
        QueryParams { device: device.to_owned(), ..QueryParams::default() }
    }

    /// Validates `params` at a fixed now and returns the error message, or "ok".
    fn check(params: QueryParams, expected: &str) {
        let now = at("2026-11-25T12:00:00Z");
        let outcome = match RangeQuery::new(params.clone(), now) {
            Ok(_) => "ok".to_owned(),
            Err(err) => err.to_string(),
        };
        assert!(outcome.contains(expected), "{params:?}: {outcome:?} does not contain {expected:?}");
    }

    #[test]
    fn defaults() {
        let now = at("2026-11-25T12:00:00Z");
        let query = RangeQuery::new(params("d1"), now).expect("valid");
        assert_eq!((query.from, query.to), (at("2026-11-25T11:00:00Z"), now));
        let nanos = QueryParams { to: Some(at("2026-11-25T12:00:00.123456789Z")), ..params("d1") };
        let query = RangeQuery::new(nanos, now).expect("valid");
        assert_eq!(query.to, at("2026-11-25T12:00:00.123456Z"), "kept to the microsecond, as PostgreSQL does");
        assert_eq!((query.limit, query.bucket, query.metric), (DEFAULT_LIMIT, None, None));
        let bucketed = QueryParams { bucket: Some(TimeDelta::minutes(1)), ..params("d1") };
        let query = RangeQuery::new(bucketed, now).expect("valid");
        assert_eq!(query.bucket, Some(Bucketing { width: TimeDelta::minutes(1), agg: Aggregate::Avg }));
    }

    #[test]
    fn validation() {
        let day = |b: &str| QueryParams {
            from: Some(at("2026-11-24T00:00:00Z")),
            to: Some(at("2026-11-25T00:00:00Z")),
            bucket: Some(parse_bucket(b).expect("valid bucket")),
            ..params("d1")
        };
        check(params("d 1"), "invalid device id");
        check(QueryParams { metric: Some("a/b".into()), ..params("d1") }, "invalid metric name");
        check(QueryParams { from: Some(at("2026-11-25T13:00:00Z")), ..params("d1") }, "inverted range");
        check(QueryParams { from: Some(at("2026-11-25T12:00:00Z")), ..params("d1") }, "inverted range");
        check(QueryParams { agg: Some(Aggregate::Max), ..params("d1") }, "needs a bucket");
        check(QueryParams { limit: Some(MAX_LIMIT + 1), ..params("d1") }, "too large");
        check(QueryParams { limit: Some(MAX_LIMIT), ..params("d1") }, "ok");
        check(day("10s"), "ok"); // 8,640 buckets
        check(day("5s"), "a bucket of 5s over 1day is 17280 buckets");
        check(day("1m"), "ok");
        check(QueryParams { bucket: Some(TimeDelta::microseconds(10)), ..params("d1") }, "at least 1ms");
        check(QueryParams { cursor: Some("garbage!".into()), ..params("d1") }, "invalid cursor");
        check(QueryParams { from: Some(at("1899-12-31T23:59:59Z")), ..params("d1") }, "from is out of range");
        check(QueryParams { from: Some(at("1900-01-01T00:00:00Z")), ..params("d1") }, "ok");
        let far = DateTime::from_timestamp(253_402_300_800, 0).expect("in chrono's range");
        check(QueryParams { to: Some(far), ..params("d1") }, "to is out of range");
    }

    #[test]
    fn cursors_round_trip_and_belong_to_their_query() {
        let now = at("2026-11-25T12:00:00Z");
        let raw = RangeQuery::new(params("d1"), now).expect("valid");
        let position = Position { metric: "temperature".into(), ts: at("2026-11-25T11:30:00.123456Z") };
        let cursor = raw.cursor_after(&position);
        let next = RangeQuery::new(QueryParams { cursor: Some(cursor.clone()), ..params("d1") }, now).expect("valid");
        assert_eq!(next.after, Some(position));
        let bucketed =
            QueryParams { cursor: Some(cursor.clone()), bucket: Some(TimeDelta::minutes(1)), ..params("d1") };
        check(bucketed, "different bucket");
        check(QueryParams { cursor: Some(cursor), metric: Some("humidity".into()), ..params("d1") }, "another metric");
    }

    /// The cursor of issue 12: `b1|8210266876799998999|temperature`, a position ~260,000 years ahead, which used
    /// to overflow the next page's start and kill the request.
    #[test]
    fn tampered_cursors_are_refused() {
        let tampered = "YjF8ODIxMDI2Njg3Njc5OTk5ODk5OXx0ZW1wZXJhdHVyZQ";
        let bucketed = |cursor: &str| QueryParams {
            metric: Some("temperature".into()),
            bucket: Some(TimeDelta::minutes(1)),
            cursor: Some(cursor.into()),
            ..params("x")
        };
        check(bucketed(tampered), "invalid cursor");
        // The same position in today's format is refused for its time, not for its version.
        let far = |micros: i64| URL_SAFE_NO_PAD.encode(format!("b{CURSOR_VERSION}|{micros}|60000000|x|temperature"));
        check(bucketed(&far(8_210_266_876_799_998_999)), "invalid cursor");
        check(bucketed(&far(i64::MAX)), "invalid cursor");
        check(bucketed(&far(i64::MIN)), "invalid cursor");
        check(bucketed(&far(1_764_064_800_000_000)), "ok");
        let other_device = URL_SAFE_NO_PAD.encode(format!("b{CURSOR_VERSION}|1764064800000000|60000000|y|temperature"));
        check(bucketed(&other_device), "another device");
        let other_width = URL_SAFE_NO_PAD.encode(format!("b{CURSOR_VERSION}|1764064800000000|10000000|x|temperature"));
        check(bucketed(&other_width), "different bucket");
        check(QueryParams { bucket: Some(TimeDelta::days(36_526)), ..params("x") }, "at most 36525d");
        check(bucketed(&"A".repeat(MAX_CURSOR_LEN + 1)), "invalid cursor");
    }

    #[test]
    fn instants_and_buckets() {
        assert_eq!(parse_instant("from", "2026-11-25T10:00:00+01:00").ok(), Some(at("2026-11-25T09:00:00Z")));
        assert_eq!(parse_instant("from", "1764064800000").ok(), Some(at("2025-11-25T10:00:00Z")));
        assert_eq!(parse_instant("from", "-1000").ok(), Some(at("1969-12-31T23:59:59Z")));
        assert!(parse_instant("from", "yesterday").is_err());
        assert!(parse_instant("from", "").is_err());
        assert_eq!(parse_bucket("1m").ok(), Some(TimeDelta::minutes(1)));
        assert_eq!(parse_bucket("10s").ok(), Some(TimeDelta::seconds(10)));
        assert_eq!(parse_bucket("1h").ok(), Some(TimeDelta::hours(1)));
        assert_eq!(parse_bucket("1d").ok(), Some(TimeDelta::days(1)));
        assert!(parse_bucket("fortnightly").is_err());
        assert_eq!("AVG".parse::<Aggregate>().ok(), Some(Aggregate::Avg));
        assert!("median".parse::<Aggregate>().is_err());
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        fn config() -> ProptestConfig {
            ProptestConfig { cases: 4_000, failure_persistence: None, ..ProptestConfig::default() }
        }

        fn name() -> impl Strategy<Value = String> {
            "[A-Za-z0-9_.-]{1,64}"
        }

        /// Any instant in the years a query may name, to the microsecond.
        fn instant() -> impl Strategy<Value = DateTime<Utc>> {
            (earliest().timestamp_micros()..=latest().timestamp_micros())
                .prop_map(|micros| DateTime::from_timestamp_micros(micros).expect("within chrono's range"))
        }

        fn width() -> impl Strategy<Value = Option<TimeDelta>> {
            prop::option::of(
                (MIN_BUCKET.num_microseconds().unwrap_or(1)..=MAX_BUCKET.num_microseconds().unwrap_or(1))
                    .prop_map(TimeDelta::microseconds),
            )
        }

        /// Any instant chrono can hold, and the edges.
        fn any_instant() -> impl Strategy<Value = DateTime<Utc>> {
            prop_oneof![
                Just(DateTime::<Utc>::MIN_UTC),
                Just(DateTime::<Utc>::MAX_UTC),
                (DateTime::<Utc>::MIN_UTC.timestamp()..=DateTime::<Utc>::MAX_UTC.timestamp(), 0u32..1_000_000_000)
                    .prop_filter_map("in range", |(secs, nanos)| DateTime::from_timestamp(secs, nanos)),
                instant(),
            ]
        }

        fn any_delta() -> impl Strategy<Value = TimeDelta> {
            prop_oneof![
                Just(TimeDelta::MAX),
                Just(TimeDelta::MIN),
                any::<i64>().prop_map(|ms| TimeDelta::try_milliseconds(ms / 2).unwrap_or(TimeDelta::MAX)),
                any::<i64>().prop_map(TimeDelta::microseconds),
                (0i64..100_000_000_000).prop_map(TimeDelta::microseconds),
            ]
        }

        /// Text in the cursor's own shape with hostile fields: numbers at the edges, other kinds and versions,
        /// NUL and separators in the names.
        fn cursor_text() -> impl Strategy<Value = String> {
            let number = prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                Just(i64::MAX.to_string()),
                Just(i64::MIN.to_string()),
                Just("99999999999999999999999".to_owned()),
                Just(String::new()),
                "[-+0-9a-z]{0,24}",
            ];
            let head = prop_oneof![Just("r2"), Just("b2"), Just("r1"), Just("b1"), Just("x2"), Just(""), Just("b")];
            let field = prop_oneof![name(), "[\\x00-\\x7f]{0,70}", Just("\0".to_owned()), Just("a|b".to_owned())];
            (head, number.clone(), number, field.clone(), field)
                .prop_map(|(head, ts, width, device, metric)| format!("{head}|{ts}|{width}|{device}|{metric}"))
        }

        proptest! {
            #![proptest_config(config())]

            /// Every cursor a page can end with decodes to the query and point it was made from.
            #[test]
            fn cursors_round_trip(device in name(), metric in name(), ts in instant(), width in width()) {
                let cursor = Cursor { device, width, position: Position { metric, ts } };
                let decoded = decode_cursor(&encode_cursor(&cursor));
                prop_assert_eq!(decoded.ok(), Some(cursor));
            }

            /// Arbitrary text is refused as an invalid argument, or decodes to a cursor within the bounds.
            #[test]
            fn arbitrary_cursors_never_panic(text in ".{0,600}") {
                check_cursor(&text)?;
            }

            /// Well-formed base64 of hostile contents likewise.
            #[test]
            fn hostile_cursor_contents_never_panic(text in cursor_text()) {
                check_cursor(&URL_SAFE_NO_PAD.encode(&text))?;
            }

            /// Any combination of parameters is a valid query or an invalid argument, never a panic,
            /// and what is accepted is within the documented bounds.
            #[test]
            fn any_params_validate_or_refuse(
                device in prop_oneof![name(), ".{0,70}"],
                metric in prop::option::of(prop_oneof![name(), ".{0,70}"]),
                from in prop::option::of(any_instant()),
                to in prop::option::of(any_instant()),
                bucket in prop::option::of(any_delta()),
                agg in prop::option::of(prop::sample::select(Aggregate::ALL.to_vec())),
                limit in prop::option::of(any::<u32>()),
                cursor in prop::option::of(prop_oneof![cursor_text().prop_map(|text| URL_SAFE_NO_PAD.encode(text)), ".{0,80}"]),
                now in any_instant(),
            ) {
                let params = QueryParams { device, metric, from, to, bucket, agg, limit, cursor };
                match RangeQuery::new(params, now) {
                    Ok(query) => {
                        prop_assert!(earliest() <= query.from && query.from < query.to && query.to <= latest());
                        prop_assert!(query.limit >= 1 && query.limit <= MAX_LIMIT);
                        if let Some(bucket) = query.bucket {
                            prop_assert!(MIN_BUCKET <= bucket.width && bucket.width <= MAX_BUCKET);
                        }
                        if let Some(after) = &query.after {
                            prop_assert!(earliest() <= after.ts && after.ts <= latest());
                            // The next page's start, as the service computes it, cannot overflow.
                            let width = query.bucket.map(|bucket| bucket.width).unwrap_or(TimeDelta::microseconds(1));
                            prop_assert!(after.ts.checked_add_signed(width).is_some());
                        }
                    }
                    Err(err) => prop_assert!(matches!(err, QueryError::InvalidArgument(_)), "{:?}", err),
                }
            }

            /// Instants and buckets as text: a value or an invalid argument.
            #[test]
            fn instants_and_buckets_parse_or_refuse(text in prop_oneof![".{0,40}", "-?[0-9]{1,30}", "[0-9]{1,25}[a-z]{0,6}"]) {
                for outcome in [parse_instant("from", &text).map(|_| ()), parse_bucket(&text).map(|_| ()), text.parse::<Aggregate>().map(|_| ())] {
                    if let Err(err) = outcome {
                        prop_assert!(matches!(err, QueryError::InvalidArgument(_)), "{:?}", err);
                    }
                }
            }
        }

        fn check_cursor(text: &str) -> Result<(), TestCaseError> {
            match decode_cursor(text) {
                Ok(cursor) => {
                    prop_assert!(earliest() <= cursor.position.ts && cursor.position.ts <= latest());
                    prop_assert!(cursor.width.is_none_or(|width| MIN_BUCKET <= width && width <= MAX_BUCKET));
                    prop_assert!(is_valid_name(&cursor.device) && is_valid_name(&cursor.position.metric));
                }
                Err(err) => prop_assert!(matches!(err, QueryError::InvalidArgument(_)), "{:?}", err),
            }
            Ok(())
        }
    }
}
