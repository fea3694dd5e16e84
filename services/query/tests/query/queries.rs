//! Range queries and latest values against known readings, with exact expected values, over REST;
//! and cursor walks over long ranges compared with one big query.

use serde_json::{Value, json};

use crate::support::{TestApp, at, insert_readings};

/// Eight temperature readings 15 s apart from 10:00, values k² (0, 1, 4, ... 49), inserted out of order so that
/// first/last must follow the timestamps; a humidity series and another device that must not leak in.
async fn known_data(app: &TestApp) -> anyhow::Result<()> {
    let t0 = at("2026-11-20T10:00:00Z");
    let mut rows = Vec::new();
    for k in [5i64, 2, 7, 0, 3, 6, 1, 4] {
        rows.push(("d1", "temperature", t0 + chrono::TimeDelta::seconds(15 * k), (k * k) as f64));
    }
    rows.push(("d1", "humidity", t0 + chrono::TimeDelta::seconds(30), 40.0));
    rows.push(("d1", "humidity", t0 + chrono::TimeDelta::seconds(90), 42.0));
    rows.push(("d2", "temperature", t0 + chrono::TimeDelta::seconds(30), 1000.0));
    insert_readings(app.pool(), &rows).await
}

/// The (ts, value) pairs of a page's points, for one metric.
fn series(page: &Value, metric: &str) -> Vec<(String, f64)> {
    page["points"]
        .as_array()
        .expect("points")
        .iter()
        .filter(|point| point["metric"] == metric)
        .map(|point| (point["ts"].as_str().expect("ts").to_owned(), point["value"].as_f64().expect("value")))
        .collect()
}

fn pairs(expected: &[(&str, f64)]) -> Vec<(String, f64)> {
    expected.iter().map(|(ts, value)| ((*ts).to_owned(), *value)).collect()
}

const RANGE: &str = "from=2026-11-20T10:00:00Z&to=2026-11-20T10:02:00Z";

#[tokio::test]
async fn raw_readings_in_time_order() -> anyhow::Result<()> {
    let app = TestApp::start(false).await?;
    known_data(&app).await?;
    let page = app.get(&format!("/api/v1/devices/d1/telemetry?metric=temperature&{RANGE}")).await?.ok();
    assert_eq!(page["deviceId"], "d1");
    assert_eq!(page["metric"], "temperature");
    assert_eq!(page["nextCursor"], Value::Null);
    assert!(page.get("bucket").is_none() && page.get("agg").is_none());
    let expected = pairs(&[
        ("2026-11-20T10:00:00Z", 0.0),
        ("2026-11-20T10:00:15Z", 1.0),
        ("2026-11-20T10:00:30Z", 4.0),
        ("2026-11-20T10:00:45Z", 9.0),
        ("2026-11-20T10:01:00Z", 16.0),
        ("2026-11-20T10:01:15Z", 25.0),
        ("2026-11-20T10:01:30Z", 36.0),
        ("2026-11-20T10:01:45Z", 49.0),
    ]);
    assert_eq!(series(&page, "temperature"), expected);
    assert_eq!(page["points"].as_array().map(Vec::len), Some(8), "only temperature: {page}");

    // `to` is exclusive, `from` inclusive; epoch milliseconds work as well as RFC 3339.
    let from = at("2026-11-20T10:00:15Z").timestamp_millis();
    let to = at("2026-11-20T10:01:00Z").timestamp_millis();
    let page = app.get(&format!("/api/v1/devices/d1/telemetry?metric=temperature&from={from}&to={to}")).await?.ok();
    let expected =
        pairs(&[("2026-11-20T10:00:15Z", 1.0), ("2026-11-20T10:00:30Z", 4.0), ("2026-11-20T10:00:45Z", 9.0)]);
    assert_eq!(series(&page, "temperature"), expected);

    // Without a metric: every metric of the device, in (metric, ts) order, and nothing of d2.
    let page = app.get(&format!("/api/v1/devices/d1/telemetry?{RANGE}")).await?.ok();
    let metrics: Vec<&str> =
        page["points"].as_array().expect("points").iter().filter_map(|p| p["metric"].as_str()).collect();
    assert_eq!(metrics, [&["humidity"; 2][..], &["temperature"; 8][..]].concat());
    assert_eq!(series(&page, "humidity"), pairs(&[("2026-11-20T10:00:30Z", 40.0), ("2026-11-20T10:01:30Z", 42.0)]));
    app.stop().await
}

#[tokio::test]
async fn every_aggregate_per_minute_bucket() -> anyhow::Result<()> {
    let app = TestApp::start(false).await?;
    known_data(&app).await?;
    // Minute 10:00 holds 0, 1, 4, 9; minute 10:01 holds 16, 25, 36, 49.
    let expected = [
        ("avg", 3.5, 31.5),
        ("min", 0.0, 16.0),
        ("max", 9.0, 49.0),
        ("sum", 14.0, 126.0),
        ("count", 4.0, 4.0),
        ("first", 0.0, 16.0),
        ("last", 9.0, 49.0),
    ];
    for (agg, first_minute, second_minute) in expected {
        let path = format!("/api/v1/devices/d1/telemetry?metric=temperature&{RANGE}&bucket=1m&agg={agg}");
        let page = app.get(&path).await?.ok();
        assert_eq!(page["agg"], agg);
        assert_eq!(page["bucket"], "1m");
        let want = pairs(&[("2026-11-20T10:00:00Z", first_minute), ("2026-11-20T10:01:00Z", second_minute)]);
        assert_eq!(series(&page, "temperature"), want, "agg={agg}");
    }
    // Without agg a bucket averages.
    let page = app.get(&format!("/api/v1/devices/d1/telemetry?metric=temperature&{RANGE}&bucket=1m")).await?.ok();
    assert_eq!(page["agg"], "avg");
    assert_eq!(series(&page, "temperature"), pairs(&[("2026-11-20T10:00:00Z", 3.5), ("2026-11-20T10:01:00Z", 31.5)]));

    // Buckets stay aligned to the clock when `from` is not: the first bucket holds only readings from `from` on.
    let path = "/api/v1/devices/d1/telemetry?metric=temperature&from=2026-11-20T10:00:20Z&to=2026-11-20T10:01:20Z&bucket=1m&agg=sum";
    let page = app.get(path).await?.ok();
    assert_eq!(series(&page, "temperature"), pairs(&[("2026-11-20T10:00:00Z", 13.0), ("2026-11-20T10:01:00Z", 41.0)]));

    // 30 s buckets over all metrics: per metric, per bucket.
    let page = app.get(&format!("/api/v1/devices/d1/telemetry?{RANGE}&bucket=30s&agg=max")).await?.ok();
    assert_eq!(series(&page, "humidity"), pairs(&[("2026-11-20T10:00:30Z", 40.0), ("2026-11-20T10:01:30Z", 42.0)]));
    let want = pairs(&[
        ("2026-11-20T10:00:00Z", 1.0),
        ("2026-11-20T10:00:30Z", 9.0),
        ("2026-11-20T10:01:00Z", 25.0),
        ("2026-11-20T10:01:30Z", 49.0),
    ]);
    assert_eq!(series(&page, "temperature"), want);
    app.stop().await
}

#[tokio::test]
async fn latest_values_and_unknown_devices() -> anyhow::Result<()> {
    let app = TestApp::start(false).await?;
    known_data(&app).await?;
    let latest = app.get("/api/v1/devices/d1/latest").await?.ok();
    assert_eq!(
        latest,
        json!({"deviceId": "d1", "values": [
            {"metric": "humidity", "ts": "2026-11-20T10:01:30Z", "value": 42.0, "unit": "u"},
            {"metric": "temperature", "ts": "2026-11-20T10:01:45Z", "value": 49.0, "unit": "u"},
        ]})
    );

    // A registered device without data: empty lists. A device nobody knows: 404.
    sqlx::query("insert into devices (id) values ('quiet-1')").execute(app.pool()).await?;
    assert_eq!(app.get("/api/v1/devices/quiet-1/latest").await?.ok()["values"], json!([]));
    assert_eq!(app.get("/api/v1/devices/quiet-1/telemetry").await?.ok()["points"], json!([]));
    let message = app.get("/api/v1/devices/ghost/latest").await?.expect_error(404);
    assert_eq!(message, "device ghost not found");
    app.get("/api/v1/devices/ghost/telemetry?bucket=1m").await?.expect_error(404);
    // A known device with nothing in the range.
    let page = app.get("/api/v1/devices/d1/telemetry?from=2026-11-21T00:00:00Z&to=2026-11-22T00:00:00Z").await?.ok();
    assert_eq!(page["points"], json!([]));
    assert_eq!(page["nextCursor"], Value::Null);
    app.stop().await
}

/// Follows `nextCursor` from `path` to the end; returns every point, the number of pages.
async fn walk(app: &TestApp, path: &str) -> anyhow::Result<(Vec<Value>, usize)> {
    let mut points = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(cursor) => format!("{path}&cursor={cursor}"),
            None => path.to_owned(),
        };
        let page = app.get(&url).await?.ok();
        pages += 1;
        points.extend(page["points"].as_array().expect("points").iter().cloned());
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok((points, pages)),
        }
        assert!(pages < 1000, "the walk does not end");
    }
}

#[tokio::test]
async fn cursor_walks_match_one_big_query() -> anyhow::Result<()> {
    let app = TestApp::start(false).await?;
    // Three days of a reading a minute for two metrics, across day partitions and the default partition,
    // plus a reading every 7 s on the last day for one of them.
    sqlx::query("insert into devices (id) values ('walker')").execute(app.pool()).await?;
    sqlx::query(
        "insert into readings (device_id, metric, ts, value)
         select 'walker', metric, ts, extract(epoch from ts) / 60 + length(metric)
         from unnest(array['pressure', 'voltage']) as metric,
              generate_series(timestamptz '2026-11-01 00:00:00+00', timestamptz '2026-11-03 23:59:00+00', interval '1 minute') as ts
         union all
         select 'walker', 'pressure', ts, 0.5
         from generate_series(timestamptz '2026-11-03 00:00:03.5+00', timestamptz '2026-11-03 23:59:59+00', interval '7 seconds') as ts",
    )
    .execute(app.pool())
    .await?;
    let range = "from=2026-11-01T00:00:00Z&to=2026-11-04T00:00:00Z";
    let cases = [
        (format!("metric=pressure&{range}"), 4320 + 12343),
        (range.to_owned(), 2 * 4320 + 12343),
        (format!("metric=voltage&{range}&bucket=10m&agg=last"), 432),
        (format!("{range}&bucket=1h&agg=count"), 2 * 72),
    ];
    for (query, total) in cases {
        let (all, pages) = walk(&app, &format!("/api/v1/devices/walker/telemetry?{query}&limit=10000")).await?;
        assert_eq!(all.len(), total, "{query}: one big query");
        assert_eq!(pages, total.div_ceil(10000), "{query}");
        for limit in [997, 50] {
            if total / limit > 400 {
                continue;
            }
            let (walked, pages) =
                walk(&app, &format!("/api/v1/devices/walker/telemetry?{query}&limit={limit}")).await?;
            assert_eq!(pages, total.div_ceil(limit), "{query} limit={limit}");
            // Same points in the same order: no duplicates, no gaps.
            assert!(walked == all, "{query} limit={limit}: the walk differs from the big query");
        }
    }
    // The bucket counts are exact: every hour of each metric holds 60 minute readings, and pressure's last day
    // also a reading every 7 s.
    let (counts, _) =
        walk(&app, &format!("/api/v1/devices/walker/telemetry?{range}&bucket=1h&agg=count&limit=1000")).await?;
    let voltage: Vec<f64> =
        counts.iter().filter(|p| p["metric"] == "voltage").filter_map(|p| p["value"].as_f64()).collect();
    assert_eq!(voltage, vec![60.0; 72]);
    let pressure_total: f64 =
        counts.iter().filter(|p| p["metric"] == "pressure").filter_map(|p| p["value"].as_f64()).sum();
    assert_eq!(pressure_total, (4320 + 12343) as f64);
    app.stop().await
}
