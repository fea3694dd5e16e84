//! The REST face's edges: every kind of bad input as a 400 with a JSON error, the registry's token check,
//! and the paths in the registry's `/openapi.json`.

use secrecy::ExposeSecret;

use crate::support::{TestApp, at, http, insert_readings};

/// `path` must be refused with 400 and an error message containing `expected`.
async fn check_bad(app: &TestApp, path: &str, expected: &str) -> anyhow::Result<()> {
    let message = app.get(path).await?.expect_error(400);
    assert!(message.contains(expected), "{path}: {message:?} does not mention {expected:?}");
    Ok(())
}

#[tokio::test]
async fn bad_input_is_a_400_with_a_json_error() -> anyhow::Result<()> {
    let app = TestApp::start(false).await?;
    insert_readings(app.pool(), &[("d1", "temperature", at("2026-11-20T10:00:00Z"), 1.0)]).await?;
    let t = "/api/v1/devices/d1/telemetry";
    let cases = [
        (format!("{t}?from=2026-11-20T11:00:00Z&to=2026-11-20T10:00:00Z"), "inverted range"),
        (format!("{t}?from=2026-11-20T10:00:00Z&to=2026-11-20T10:00:00Z"), "inverted range"),
        (format!("{t}?bucket=1m&agg=median"), "unknown agg"),
        (format!("{t}?agg=max"), "needs a bucket"),
        (format!("{t}?bucket=soon"), "invalid bucket"),
        (format!("{t}?bucket=0s"), "at least 1ms"),
        (format!("{t}?from=2026-01-01T00:00:00Z&to=2026-11-20T00:00:00Z&bucket=1m"), "too many buckets"),
        (format!("{t}?from=2026-11-19T00:00:00Z&to=2026-11-20T00:00:00Z&bucket=1s"), "86400 buckets"),
        (format!("{t}?limit=10001"), "at most 10000"),
        (format!("{t}?limit=lots"), "limit"),
        (format!("{t}?from=yesterday"), "invalid from"),
        (format!("{t}?to=2026-13-01T00:00:00Z"), "invalid to"),
        (format!("{t}?from=-9999999999999"), "from is out of range"),
        (format!("{t}?from=99999999999999999"), "invalid from"),
        (format!("{t}?metric=a%2Fb"), "invalid metric name"),
        (format!("{t}?cursor=not-a-cursor"), "invalid cursor"),
        ("/api/v1/devices/bad%20id/telemetry".to_owned(), "invalid device id"),
        ("/api/v1/devices/bad%20id/latest".to_owned(), "invalid device id"),
        (format!("/api/v1/devices/{}/latest", "x".repeat(65)), "invalid device id"),
    ];
    for (path, expected) in &cases {
        check_bad(&app, path, expected).await?;
    }
    // A cursor of a raw query does not continue a bucketed one.
    let page = app.get(&format!("{t}?from=2026-11-20T00:00:00Z&to=2026-11-21T00:00:00Z&limit=1")).await?.ok();
    assert_eq!(page["points"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["nextCursor"], serde_json::Value::Null, "one reading fits one page");
    insert_readings(app.pool(), &[("d1", "temperature", at("2026-11-20T10:00:01Z"), 2.0)]).await?;
    let page = app.get(&format!("{t}?from=2026-11-20T00:00:00Z&to=2026-11-21T00:00:00Z&limit=1")).await?.ok();
    let cursor = page["nextCursor"].as_str().expect("a second page").to_owned();
    check_bad(
        &app,
        &format!("{t}?bucket=1m&from=2026-11-20T00:00:00Z&to=2026-11-21T00:00:00Z&cursor={cursor}"),
        "different bucket",
    )
    .await?;
    // The registry's own routes and the fallback still answer as before.
    app.get("/api/v1/nothing-here").await?.expect_error(404);
    app.stop().await
}

#[tokio::test]
async fn routes_need_a_token_when_the_registry_requires_one() -> anyhow::Result<()> {
    let app = TestApp::start(true).await?;
    insert_readings(app.pool(), &[("d1", "temperature", at("2026-11-20T10:00:00Z"), 1.5)]).await?;
    for path in
        ["/api/v1/devices/d1/latest", "/api/v1/devices/d1/telemetry?from=2026-11-20T00:00:00Z&to=2026-11-21T00:00:00Z"]
    {
        http(&app.url(path), None).await?.expect_error(401);
        http(&app.url(path), Some("fer_wrong")).await?.expect_error(401);
    }
    let token = app.registry.create_token("reader").await?;
    let secret = token.secret.expose_secret();
    let latest = http(&app.url("/api/v1/devices/d1/latest"), Some(secret)).await?.ok();
    assert_eq!(latest["values"][0]["value"], 1.5);
    let page =
        http(&app.url("/api/v1/devices/d1/telemetry?from=2026-11-20T00:00:00Z&to=2026-11-21T00:00:00Z"), Some(secret))
            .await?
            .ok();
    assert_eq!(page["points"][0]["value"], 1.5);
    app.stop().await
}

#[tokio::test]
async fn openapi_lists_the_telemetry_paths() -> anyhow::Result<()> {
    let app = TestApp::start(false).await?;
    let document = app.get("/openapi.json").await?.ok();
    let paths = document["paths"].as_object().expect("paths");
    for path in ["/api/v1/devices/{id}/telemetry", "/api/v1/devices/{id}/latest", "/api/v1/devices"] {
        assert!(paths.contains_key(path), "{path} missing from {:?}", paths.keys().collect::<Vec<_>>());
    }
    let parameters: Vec<&str> = document["paths"]["/api/v1/devices/{id}/telemetry"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|parameter| parameter["name"].as_str())
        .collect();
    assert_eq!(parameters, ["id", "metric", "from", "to", "bucket", "agg", "limit", "cursor"]);
    let schemas = document["components"]["schemas"].as_object().expect("schemas");
    for schema in ["TelemetryPage", "LatestPage", "Point", "LatestValue", "Device"] {
        assert!(schemas.contains_key(schema), "schema {schema} missing");
    }
    app.stop().await
}
