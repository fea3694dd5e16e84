//! The REST face over a real socket: every operation, every kind of bad input as a JSON error, tokens,
//! presence as server-sent events, and the OpenAPI document.

use http_body_util::BodyExt;
use serde_json::json;

use crate::support::{TestRegistry, http, json_body, set_presence};

const JSON: &str = "application/json";

#[tokio::test]
async fn every_operation_round_trips() -> anyhow::Result<()> {
    let registry = TestRegistry::start(false).await?;
    let devices = registry.url("/api/v1/devices");

    let body = json_body(&json!({"id": "shed-1", "name": "Shed", "tags": ["garden"], "metadata": {"floor": 0}}));
    let created = http("POST", &devices, None, Some((JSON, &body))).await?;
    assert_eq!(created.status, 201, "{:?}", String::from_utf8_lossy(&created.body));
    assert_eq!(created.headers.get("location").map(|v| v.to_str()).transpose()?, Some("/api/v1/devices/shed-1"));
    let created = created.json();
    assert_eq!(created["device"]["id"], "shed-1");
    assert_eq!(created["device"]["tags"], json!(["garden"]));
    assert_eq!(created["device"]["metadata"], json!({"floor": 0}));
    assert_eq!(created["device"]["hasCredentials"], true);
    assert_eq!(created["device"]["autoRegistered"], false);
    assert_eq!(created["credentials"]["username"], "shed-1");
    let secret = created["credentials"]["secret"].as_str().expect("secret").to_owned();
    assert!(registry.service.verify_device_secret("shed-1", secret.as_bytes()).await?);

    let fetched = http("GET", &registry.url("/api/v1/devices/shed-1"), None, None).await?;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.json(), created["device"]);

    let patch = json_body(&json!({"name": null, "tags": ["garden", "outside"]}));
    let updated = http("PATCH", &registry.url("/api/v1/devices/shed-1"), None, Some((JSON, &patch))).await?;
    assert_eq!(updated.status, 200);
    let updated = updated.json();
    assert_eq!(updated["name"], serde_json::Value::Null);
    assert_eq!(updated["tags"], json!(["garden", "outside"]));
    assert_eq!(updated["metadata"], json!({"floor": 0}), "fields left out stay");

    let rotated = http("POST", &registry.url("/api/v1/devices/shed-1/credentials"), None, None).await?;
    assert_eq!(rotated.status, 200);
    let new_secret = rotated.json()["secret"].as_str().expect("secret").to_owned();
    assert!(!registry.service.verify_device_secret("shed-1", secret.as_bytes()).await?);
    assert!(registry.service.verify_device_secret("shed-1", new_secret.as_bytes()).await?);

    let deleted = http("DELETE", &registry.url("/api/v1/devices/shed-1"), None, None).await?;
    assert_eq!(deleted.status, 204);
    http("GET", &registry.url("/api/v1/devices/shed-1"), None, None).await?.expect_error(404);
    registry.stop().await
}

#[tokio::test]
async fn paging_and_filters() -> anyhow::Result<()> {
    let registry = TestRegistry::start(false).await?;
    for (id, tag) in [("a-1", "x"), ("a-2", "y"), ("a-3", "x"), ("b-1", "x")] {
        let body = json_body(&json!({"id": id, "tags": [tag, "all"]}));
        assert_eq!(http("POST", &registry.url("/api/v1/devices"), None, Some((JSON, &body))).await?.status, 201);
    }
    set_presence(registry.pool(), "a-3", true).await?;

    let ids = |body: &serde_json::Value| -> Vec<String> {
        body["devices"].as_array().into_iter().flatten().filter_map(|d| d["id"].as_str().map(str::to_owned)).collect()
    };
    let first = http("GET", &registry.url("/api/v1/devices?limit=3"), None, None).await?.json();
    assert_eq!(ids(&first), ["a-1", "a-2", "a-3"]);
    let cursor = first["nextCursor"].as_str().expect("more pages").to_owned();
    let second =
        http("GET", &registry.url(&format!("/api/v1/devices?limit=3&cursor={cursor}")), None, None).await?.json();
    assert_eq!(ids(&second), ["b-1"]);
    assert!(second["nextCursor"].is_null());

    let check = |query: &'static str, expected: &'static [&'static str]| {
        let url = registry.url(&format!("/api/v1/devices?{query}"));
        async move {
            let response = http("GET", &url, None, None).await?;
            assert_eq!(response.status, 200, "{query}");
            assert_eq!(ids(&response.json()), expected, "{query}");
            anyhow::Ok(())
        }
    };
    check("tag=x", &["a-1", "a-3", "b-1"]).await?;
    check("tag=x,all", &["a-1", "a-3", "b-1"]).await?;
    check("tag=x&prefix=a-", &["a-1", "a-3"]).await?;
    check("online=true", &["a-3"]).await?;
    check("online=false&tag=x", &["a-1", "b-1"]).await?;
    registry.stop().await
}

#[tokio::test]
async fn bad_input_gets_a_json_error_with_the_right_status() -> anyhow::Result<()> {
    let registry = TestRegistry::start(false).await?;
    let devices = registry.url("/api/v1/devices");
    let body = json_body(&json!({"id": "known-1"}));
    assert_eq!(http("POST", &devices, None, Some((JSON, &body))).await?.status, 201);

    // Malformed JSON.
    http("POST", &devices, None, Some((JSON, "{\"id\": "))).await?.expect_error(400);
    // Wrong content type, and none at all.
    http("POST", &devices, None, Some(("text/plain", &body))).await?.expect_error(415);
    http("POST", &devices, None, None).await?.expect_error(415);
    // Well-formed JSON of the wrong shape: a missing field, a wrong type, an unknown field.
    http("POST", &devices, None, Some((JSON, "{}"))).await?.expect_error(422);
    http("POST", &devices, None, Some((JSON, r#"{"id": 5}"#))).await?.expect_error(422);
    http("POST", &devices, None, Some((JSON, r#"{"id": "x-1", "colour": "red"}"#))).await?.expect_error(422);
    // Invalid device ids, in the body and in the path.
    let message = http("POST", &devices, None, Some((JSON, r#"{"id": "no/slash"}"#))).await?.expect_error(400);
    assert!(message.contains("invalid device id"), "{message}");
    http("GET", &registry.url("/api/v1/devices/bad%20id"), None, None).await?.expect_error(400);
    http("GET", &registry.url(&format!("/api/v1/devices/{}", "x".repeat(65))), None, None).await?.expect_error(400);
    // Metadata that is not an object, a tag with a space.
    http("POST", &devices, None, Some((JSON, r#"{"id": "m-1", "metadata": [1]}"#))).await?.expect_error(400);
    http("POST", &devices, None, Some((JSON, r#"{"id": "m-1", "tags": ["a b"]}"#))).await?.expect_error(400);
    // Unknown device, duplicate device.
    http("GET", &registry.url("/api/v1/devices/nobody"), None, None).await?.expect_error(404);
    http("DELETE", &registry.url("/api/v1/devices/nobody"), None, None).await?.expect_error(404);
    http("POST", &registry.url("/api/v1/devices/nobody/credentials"), None, None).await?.expect_error(404);
    let message = http("POST", &devices, None, Some((JSON, &body))).await?.expect_error(409);
    assert!(message.contains("already exists"), "{message}");
    // Bad query values and cursors.
    http("GET", &registry.url("/api/v1/devices?limit=many"), None, None).await?.expect_error(400);
    http("GET", &registry.url("/api/v1/devices?online=maybe"), None, None).await?.expect_error(400);
    http("GET", &registry.url("/api/v1/devices?cursor=%23"), None, None).await?.expect_error(400);
    // Unknown routes and methods.
    http("GET", &registry.url("/api/v1/nothing-here"), None, None).await?.expect_error(404);
    http("PUT", &registry.url("/api/v1/devices/known-1"), None, None).await?.expect_error(405);
    // Token ids.
    http("DELETE", &registry.url("/api/v1/tokens/not-a-uuid"), None, None).await?.expect_error(400);
    let unknown = uuid::Uuid::new_v4();
    http("DELETE", &registry.url(&format!("/api/v1/tokens/{unknown}")), None, None).await?.expect_error(404);
    registry.stop().await
}

#[tokio::test]
async fn tokens_are_required_off_loopback() -> anyhow::Result<()> {
    let registry = TestRegistry::start(true).await?;
    let devices = registry.url("/api/v1/devices");
    let refused = http("GET", &devices, None, None).await?;
    refused.expect_error(401);
    assert_eq!(refused.headers.get("www-authenticate").map(|v| v.to_str()).transpose()?, Some("Bearer"));
    http("GET", &devices, Some("fer_0123"), None).await?.expect_error(401);
    http("POST", &registry.url("/api/v1/tokens"), None, Some((JSON, r#"{"name": "x"}"#))).await?.expect_error(401);
    // Health, metrics and the API description stay open.
    for open in ["/healthz", "/metrics", "/openapi.json"] {
        assert_eq!(http("GET", &registry.url(open), None, None).await?.status, 200, "{open}");
    }

    let issued = registry.service.create_token("admin").await?;
    let token = secrecy::ExposeSecret::expose_secret(&issued.secret).to_owned();
    assert_eq!(http("GET", &devices, Some(&token), None).await?.status, 200);

    let created =
        http("POST", &registry.url("/api/v1/tokens"), Some(&token), Some((JSON, r#"{"name": "ci"}"#))).await?;
    assert_eq!(created.status, 201);
    let created = created.json();
    let ci_token = created["secret"].as_str().expect("secret").to_owned();
    let ci_id = created["token"]["id"].as_str().expect("id").to_owned();
    let listed = http("GET", &registry.url("/api/v1/tokens"), Some(&ci_token), None).await?.json();
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    assert!(listed.to_string().find(&ci_token).is_none(), "secrets are never listed");

    let revoked = http("DELETE", &registry.url(&format!("/api/v1/tokens/{ci_id}")), Some(&token), None).await?;
    assert_eq!(revoked.status, 204);
    http("GET", &devices, Some(&ci_token), None).await?.expect_error(401);
    registry.stop().await
}

#[tokio::test]
async fn openapi_document_lists_every_route() -> anyhow::Result<()> {
    let registry = TestRegistry::start(false).await?;
    let response = http("GET", &registry.url("/openapi.json"), None, None).await?;
    assert_eq!(response.status, 200);
    let document = response.json();
    assert!(document["openapi"].as_str().is_some_and(|version| version.starts_with("3.")), "{}", document["openapi"]);
    assert!(document["info"]["title"].is_string());
    let expected = [
        ("/api/v1/devices", "get"),
        ("/api/v1/devices", "post"),
        ("/api/v1/devices/{id}", "get"),
        ("/api/v1/devices/{id}", "patch"),
        ("/api/v1/devices/{id}", "delete"),
        ("/api/v1/devices/{id}/credentials", "post"),
        ("/api/v1/devices/{id}/presence", "get"),
        ("/api/v1/presence/events", "get"),
        ("/api/v1/tokens", "get"),
        ("/api/v1/tokens", "post"),
        ("/api/v1/tokens/{id}", "delete"),
        ("/healthz", "get"),
        ("/metrics", "get"),
    ];
    let paths = document["paths"].as_object().expect("paths");
    let mut documented = 0;
    for (path, item) in paths {
        for method in ["get", "post", "put", "patch", "delete"] {
            if let Some(operation) = item.get(method) {
                documented += 1;
                assert!(expected.contains(&(path.as_str(), method)), "undocumented route {method} {path} in the test");
                assert!(operation["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path}");
            }
        }
    }
    for (path, method) in expected {
        assert!(paths.get(path).and_then(|item| item.get(method)).is_some(), "{method} {path} missing");
    }
    assert_eq!(documented, expected.len());

    // Every schema a route refers to exists.
    let schemas = document["components"]["schemas"].as_object().expect("schemas");
    let text = document.to_string();
    for reference in text.split("\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap_or_default();
        assert!(schemas.contains_key(name), "dangling reference to {name}");
    }
    assert!(document["components"]["securitySchemes"]["bearer"].is_object());

    // Every documented route is served (an unknown one would be a JSON 404 "no such route").
    for (path, method) in expected {
        if method != "get" || path.contains('{') || path.contains("presence") {
            continue;
        }
        assert_eq!(http("GET", &registry.url(path), None, None).await?.status, 200, "{path}");
    }
    registry.stop().await
}

#[tokio::test]
async fn presence_events_stream_as_server_sent_events() -> anyhow::Result<()> {
    let registry = TestRegistry::start(false).await?;
    let body = json_body(&json!({"id": "gate-1"}));
    assert_eq!(http("POST", &registry.url("/api/v1/devices"), None, Some((JSON, &body))).await?.status, 201);

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri = registry.url("/api/v1/presence/events?device=gate-1").parse()?;
    let response = client.get(uri).await?;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();

    // The watch is registered before the response starts, so this change cannot be missed.
    set_presence(registry.pool(), "gate-1", false).await?;
    let mut text = String::new();
    while !text.contains("\n\n") || !text.contains("gate-1") {
        let frame = tokio::time::timeout(ferrite_testkit::WAIT_DEADLINE, body.frame()).await?;
        let Some(frame) = frame.transpose()? else { anyhow::bail!("stream ended: {text}") };
        if let Some(data) = frame.data_ref() {
            text.push_str(&String::from_utf8_lossy(data));
        }
    }
    assert!(text.contains("event: presence"), "{text}");
    let data = text.lines().find_map(|line| line.strip_prefix("data: ")).expect("data line");
    let change: serde_json::Value = serde_json::from_str(data)?;
    assert_eq!((change["deviceId"].as_str(), change["online"].as_bool()), (Some("gate-1"), Some(false)));
    registry.stop().await
}

#[tokio::test]
async fn presence_history_lists_each_change_newest_first() -> anyhow::Result<()> {
    let registry = TestRegistry::start(false).await?;
    let body = json_body(&json!({"id": "door-1"}));
    assert_eq!(http("POST", &registry.url("/api/v1/devices"), None, Some((JSON, &body))).await?.status, 201);
    let pool = registry.pool();
    // Each statement is its own transaction, so each change has its own now(); a repeated state is no change.
    for online in [true, true, false, true] {
        set_presence(pool, "door-1", online).await?;
    }
    let history = http("GET", &registry.url("/api/v1/devices/door-1/presence"), None, None).await?;
    assert_eq!(history.status, 200);
    let states: Vec<bool> = history
        .json()
        .as_array()
        .expect("a list")
        .iter()
        .map(|event| event["online"].as_bool().expect("online"))
        .collect();
    assert_eq!(states, [true, false, true]);
    let one = http("GET", &registry.url("/api/v1/devices/door-1/presence?limit=1"), None, None).await?.json();
    assert_eq!(one.as_array().map(Vec::len), Some(1));
    assert_eq!(one[0]["online"], true);

    // At most 200 changes are kept per device, however often it flaps.
    for i in 1..=250 {
        sqlx::query("update presence set online = $2, changed_at = now() + make_interval(secs => $1) where device_id = 'door-1'")
            .bind(f64::from(i))
            .bind(i % 2 == 0)
            .execute(pool)
            .await?;
    }
    let kept: i64 =
        sqlx::query_scalar("select count(*) from presence_history where device_id = 'door-1'").fetch_one(pool).await?;
    assert_eq!(kept, 200);
    let all = http("GET", &registry.url("/api/v1/devices/door-1/presence?limit=100000"), None, None).await?.json();
    assert_eq!(all.as_array().map(Vec::len), Some(200));

    // Hostile or wrong input: a clear JSON error, nothing else lost.
    http("GET", &registry.url("/api/v1/devices/nobody/presence"), None, None).await?.expect_error(404);
    http("GET", &registry.url("/api/v1/devices/bad%20id/presence"), None, None).await?.expect_error(400);
    for limit in ["-1", "x", "99999999999", "%00"] {
        http("GET", &registry.url(&format!("/api/v1/devices/door-1/presence?limit={limit}")), None, None)
            .await?
            .expect_error(400);
    }
    // Deleting the device deletes its history.
    assert_eq!(http("DELETE", &registry.url("/api/v1/devices/door-1"), None, None).await?.status, 204);
    let left: i64 = sqlx::query_scalar("select count(*) from presence_history").fetch_one(pool).await?;
    assert_eq!(left, 0);
    registry.stop().await
}
