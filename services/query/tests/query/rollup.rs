//! The 1-minute rollup: exact per-minute aggregates, and bucketed queries that answer the same before and after
//! retention drops the raw readings they were computed from.

use std::time::Duration;

use chrono::{NaiveDate, TimeDelta};
use ferrite_query::Rollup;
use serde_json::Value;

use crate::support::{TestApp, insert_readings};

const DAY: Duration = Duration::from_secs(24 * 3600);

#[tokio::test]
async fn bucketed_queries_survive_retention_through_the_rollup() -> anyhow::Result<()> {
    let app = TestApp::start(false).await?;
    let pool = app.pool();
    let today: NaiveDate = sqlx::query_scalar("select (now() at time zone 'UTC')::date").fetch_one(pool).await?;
    let old_day = today - chrono::Days::new(40);
    let recent_day = today - chrono::Days::new(1);
    sqlx::query("select ferrite_ensure_readings_partitions($1, $1)").bind(old_day).execute(pool).await?;
    let at = |day: NaiveDate, hh: u32, mm: u32, ss: u32| day.and_hms_opt(hh, mm, ss).expect("valid time").and_utc();

    // 40 days ago: eight temperatures 15 s apart from 10:00 with values k², out of order; two humidities.
    // Yesterday: two temperatures, which stay raw.
    let t0 = at(old_day, 10, 0, 0);
    let mut rows: Vec<_> = [5i64, 2, 7, 0, 3, 6, 1, 4]
        .iter()
        .map(|k| ("r1", "temperature", t0 + TimeDelta::seconds(15 * k), (k * k) as f64))
        .collect();
    rows.push(("r1", "humidity", at(old_day, 10, 0, 30), 40.0));
    rows.push(("r1", "humidity", at(old_day, 23, 59, 59), 42.0));
    rows.push(("r1", "temperature", at(recent_day, 10, 0, 0), 100.0));
    rows.push(("r1", "temperature", at(recent_day, 10, 0, 1), 200.0));
    insert_readings(pool, &rows).await?;

    let rfc = |at: chrono::DateTime<chrono::Utc>| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let old_range = format!("from={}&to={}", rfc(t0), rfc(t0 + TimeDelta::minutes(2)));
    let mut queries: Vec<String> = ["avg", "min", "max", "sum", "count", "first", "last"]
        .iter()
        .map(|agg| format!("metric=temperature&{old_range}&bucket=1m&agg={agg}"))
        .collect();
    queries.push(format!("metric=temperature&{old_range}&bucket=2m&agg=avg"));
    // Across the horizon: all metrics, one point per day, from the old day to today; and paged.
    let across = format!("from={}&to={}&bucket=1d", rfc(at(old_day, 0, 0, 0)), rfc(at(today, 0, 0, 0)));
    queries.push(format!("{across}&agg=sum"));
    queries.push(format!("{across}&agg=count"));
    queries.push(format!("{across}&agg=last&limit=1"));
    let mut before = Vec::new();
    for query in &queries {
        before.push(app.get(&format!("/api/v1/devices/r1/telemetry?{query}")).await?.ok());
    }
    assert_eq!(before[0]["points"].as_array().map(Vec::len), Some(2), "{}", before[0]);
    assert_eq!(
        before[8]["points"].as_array().map(Vec::len),
        Some(3),
        "humidity and two temperature days: {}",
        before[8]
    );

    let rollup = Rollup::new(pool.clone(), Duration::from_secs(60), 365 * DAY)?;
    assert_eq!(rollup.run_once().await?, 2 + 2 + 1, "two temperature and two humidity minutes, one recent minute");
    let minutes: Vec<(String, i64, f64, f64, f64, f64, f64)> = sqlx::query_as(
        "select metric, count, sum, min, max, first, last from readings_1m where bucket < $1 order by metric, bucket",
    )
    .bind(at(old_day + chrono::Days::new(1), 0, 0, 0))
    .fetch_all(pool)
    .await?;
    let expected = [
        ("humidity".to_owned(), 1, 40.0, 40.0, 40.0, 40.0, 40.0),
        ("humidity".to_owned(), 1, 42.0, 42.0, 42.0, 42.0, 42.0),
        ("temperature".to_owned(), 4, 14.0, 0.0, 9.0, 0.0, 9.0),
        ("temperature".to_owned(), 4, 126.0, 16.0, 49.0, 16.0, 49.0),
    ];
    assert_eq!(minutes, expected);

    let dropped = ferrite_db::drop_expired_partitions(pool, 30 * DAY).await?;
    assert!(dropped.contains(&format!("readings_{}", old_day.format("%Y%m%d"))), "{dropped:?}");
    let raw = app.get(&format!("/api/v1/devices/r1/telemetry?metric=temperature&{old_range}")).await?.ok();
    assert_eq!(raw["points"], Value::Array(Vec::new()), "the raw readings are gone");

    // Whole-minute buckets from a whole minute are answered from the rollup: exactly as before.
    for (query, before) in queries.iter().zip(&before) {
        let after = app.get(&format!("/api/v1/devices/r1/telemetry?{query}")).await?.ok();
        assert_eq!(after["points"], before["points"], "{query}");
        assert_eq!(after["nextCursor"].is_null(), before["nextCursor"].is_null(), "{query}");
    }
    // The paged one, walked to the end over the rollup and the raw readings.
    let mut cursor = before[10]["nextCursor"].as_str().map(str::to_owned);
    let mut walked = before[10]["points"].as_array().cloned().unwrap_or_default();
    while let Some(next) = cursor {
        let page = app.get(&format!("/api/v1/devices/r1/telemetry?{}&cursor={next}", queries[10])).await?.ok();
        walked.extend(page["points"].as_array().cloned().unwrap_or_default());
        cursor = page["nextCursor"].as_str().map(str::to_owned);
    }
    let values: Vec<(&str, f64)> =
        walked.iter().map(|p| (p["metric"].as_str().unwrap_or("?"), p["value"].as_f64().unwrap_or(f64::NAN))).collect();
    assert_eq!(values, [("humidity", 42.0), ("temperature", 49.0), ("temperature", 200.0)]);

    // 30 s buckets cannot come from a 1-minute rollup: they read raw readings, which are gone.
    let half = app.get(&format!("/api/v1/devices/r1/telemetry?metric=temperature&{old_range}&bucket=30s")).await?.ok();
    assert_eq!(half["points"], Value::Array(Vec::new()));

    assert!(Rollup::new(pool.clone(), Duration::ZERO, 365 * DAY).is_err());
    assert!(Rollup::new(pool.clone(), Duration::from_secs(60), Duration::from_secs(3600)).is_err());
    app.stop().await
}
