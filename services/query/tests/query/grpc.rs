//! The gRPC face: the same queries as REST through the generated client, bad input as INVALID_ARGUMENT,
//! tokens, and the stream's UNAVAILABLE without a broker.

use chrono::{DateTime, TimeDelta, Utc};
use ferrite_proto::v1 as pb;
use secrecy::ExposeSecret;
use tonic::Code;

use crate::support::{TestApp, at, insert_readings};

fn ts(at: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: at.timestamp(), nanos: 0 })
}

fn minutes(n: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: 60 * n, nanos: 0 })
}

fn request(device: &str) -> pb::QueryRequest {
    pb::QueryRequest {
        device_id: device.to_owned(),
        metric: "temperature".to_owned(),
        from: ts(at("2026-11-20T10:00:00Z")),
        to: ts(at("2026-11-20T10:02:00Z")),
        ..pb::QueryRequest::default()
    }
}

/// (seconds since 10:00, value) of each point.
fn points(response: &pb::QueryResponse) -> Vec<(i64, f64)> {
    let base = at("2026-11-20T10:00:00Z").timestamp();
    response.points.iter().map(|p| (p.ts.as_ref().map_or(-1, |ts| ts.seconds - base), p.value)).collect()
}

async fn known_data(app: &TestApp) -> anyhow::Result<()> {
    let t0 = at("2026-11-20T10:00:00Z");
    let rows: Vec<_> =
        (0..8i64).map(|k| ("d1", "temperature", t0 + TimeDelta::seconds(15 * k), (k * k) as f64)).collect();
    insert_readings(app.pool(), &rows).await
}

#[tokio::test]
async fn queries_latest_and_pages() -> anyhow::Result<()> {
    let app = TestApp::start(false).await?;
    known_data(&app).await?;
    let mut client = app.telemetry().await?;

    let raw = client.query(request("d1")).await?.into_inner();
    assert_eq!(points(&raw), (0..8).map(|k| (15 * k, (k * k) as f64)).collect::<Vec<_>>());
    assert!(raw.points.iter().all(|p| p.metric == "temperature"));
    assert_eq!(raw.next_cursor, "");

    let expected = [
        (pb::Aggregation::Unspecified, 3.5, 31.5),
        (pb::Aggregation::Avg, 3.5, 31.5),
        (pb::Aggregation::Min, 0.0, 16.0),
        (pb::Aggregation::Max, 9.0, 49.0),
        (pb::Aggregation::Sum, 14.0, 126.0),
        (pb::Aggregation::Count, 4.0, 4.0),
        (pb::Aggregation::First, 0.0, 16.0),
        (pb::Aggregation::Last, 9.0, 49.0),
    ];
    for (agg, first, second) in expected {
        let bucketed = pb::QueryRequest { bucket: minutes(1), agg: agg.into(), ..request("d1") };
        let response = client.query(bucketed).await?.into_inner();
        assert_eq!(points(&response), vec![(0, first), (60, second)], "{agg:?}");
    }

    // Pages of three, walked with the cursor.
    let mut walked = Vec::new();
    let mut cursor = String::new();
    loop {
        let page =
            client.query(pb::QueryRequest { limit: 3, cursor: cursor.clone(), ..request("d1") }).await?.into_inner();
        walked.extend(points(&page));
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(walked, points(&raw));

    let latest = client.latest(pb::LatestRequest { device_id: "d1".into() }).await?.into_inner();
    assert_eq!(latest.values.len(), 1);
    assert_eq!(latest.values[0].metric, "temperature");
    let reading = latest.values[0].reading.as_ref().expect("reading");
    assert_eq!((reading.value, reading.unit.as_str()), (49.0, "u"));
    assert_eq!(reading.ts, ts(at("2026-11-20T10:01:45Z")));

    let missing = client.latest(pb::LatestRequest { device_id: "ghost".into() }).await.expect_err("unknown device");
    assert_eq!(missing.code(), Code::NotFound);
    app.stop().await
}

#[tokio::test]
async fn bad_input_is_invalid_argument() -> anyhow::Result<()> {
    let app = TestApp::start(false).await?;
    known_data(&app).await?;
    let mut client = app.telemetry().await?;
    let year = pb::QueryRequest { from: ts(at("2025-11-20T00:00:00Z")), bucket: minutes(1), ..request("d1") };
    let cases = [
        (pb::QueryRequest { from: ts(at("2026-11-20T11:00:00Z")), ..request("d1") }, "inverted range"),
        (pb::QueryRequest { bucket: minutes(1), agg: 42, ..request("d1") }, "unknown agg"),
        (pb::QueryRequest { agg: pb::Aggregation::Max.into(), ..request("d1") }, "needs a bucket"),
        (
            pb::QueryRequest { bucket: Some(prost_types::Duration { seconds: -60, nanos: 0 }), ..request("d1") },
            "invalid bucket",
        ),
        (
            pb::QueryRequest { bucket: Some(prost_types::Duration { seconds: 0, nanos: 0 }), ..request("d1") },
            "at least 1ms",
        ),
        (year, "too many buckets"),
        (pb::QueryRequest { limit: 10_001, ..request("d1") }, "at most 10000"),
        (pb::QueryRequest { cursor: "nope".into(), ..request("d1") }, "invalid cursor"),
        (pb::QueryRequest { metric: "a/b".into(), ..request("d1") }, "invalid metric name"),
        (
            pb::QueryRequest { from: Some(prost_types::Timestamp { seconds: 0, nanos: -1 }), ..request("d1") },
            "invalid from",
        ),
        (request("bad id"), "invalid device id"),
        (request(""), "invalid device id"),
    ];
    for (bad, expected) in cases {
        let status = client.query(bad.clone()).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}: {status:?}");
        assert!(status.message().contains(expected), "{bad:?}: {:?} does not mention {expected:?}", status.message());
    }
    let status = client.latest(pb::LatestRequest { device_id: "bad id".into() }).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);

    // Without a broker the live stream is unavailable, and says why.
    let status = client
        .stream(pb::StreamRequest { device_id: "d1".into(), metric: String::new() })
        .await
        .expect_err("no broker");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("no mqtt broker"), "{status:?}");
    let status = client
        .stream(pb::StreamRequest { device_id: "bad id".into(), metric: String::new() })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    app.stop().await
}

#[tokio::test]
async fn calls_need_a_token_when_the_registry_requires_one() -> anyhow::Result<()> {
    let app = TestApp::start(true).await?;
    known_data(&app).await?;
    let mut client = app.telemetry().await?;
    let status = client.query(request("d1")).await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = client.latest(pb::LatestRequest { device_id: "d1".into() }).await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);

    let token = app.registry.create_token("reader").await?;
    let mut call = tonic::Request::new(request("d1"));
    call.metadata_mut().insert("authorization", format!("Bearer {}", token.secret.expose_secret()).parse()?);
    let response = client.query(call).await?.into_inner();
    assert_eq!(response.points.len(), 8);
    app.stop().await
}
