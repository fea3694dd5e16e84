//! The rules API on the registry's ports: CRUD over REST and gRPC, bad input, tokens, the OpenAPI document.

use ferrite_proto::v1 as pb;
use ferrite_proto::v1::rules_client::RulesClient;
use serde_json::json;
use tonic::Code;

use crate::support::{Platform, http};

fn spec(metric: &str, comparison: &str) -> pb::RuleSpec {
    pb::RuleSpec {
        name: "spec".into(),
        metric: metric.into(),
        comparison: comparison.into(),
        value: 30.0,
        severity: "info".into(),
        enabled: true,
        ..pb::RuleSpec::default()
    }
}

#[tokio::test]
async fn bad_rest_input_is_400_with_a_json_error() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let url = platform.url("/api/v1/rules");
    let check = |body: serde_json::Value, expected: &'static str| {
        let url = url.clone();
        async move {
            let message = http("POST", &url, None, Some(&body)).await?.expect_error(400);
            assert!(message.contains(expected), "{body}: {message:?} lacks {expected:?}");
            anyhow::Ok(())
        }
    };
    check(json!({"metric": "temperature", "comparison": "~=", "value": 1}), "unknown comparison").await?;
    check(json!({"metric": "", "comparison": ">", "value": 1}), "metric must not be empty").await?;
    check(json!({"metric": "t", "comparison": ">", "value": 1, "for": "soon"}), "invalid duration").await?;
    check(json!({"metric": "t", "comparison": ">", "value": 1, "severity": "loud"}), "unknown severity").await?;
    check(json!({"metric": "t", "comparison": ">", "value": 1, "deviceId": "a b"}), "invalid device id").await?;
    check(json!({"metric": "t", "comparison": ">", "value": 1, "message": "{nope}"}), "unknown placeholder").await?;
    // Not JSON at all, and a missing field: axum's rejections, in our JSON shape.
    let response = http("POST", &url, None, Some(&json!("not an object"))).await?;
    assert!(response.status == 400 || response.status == 422, "{}", response.status);
    response.expect_error(response.status);
    http("POST", &url, None, Some(&json!({"metric": "t", "value": 1}))).await?.expect_error(422);

    http("GET", &platform.url("/api/v1/alerts?state=bogus"), None, None).await?.expect_error(400);
    http("GET", &platform.url("/api/v1/alerts?device=a%20b"), None, None).await?.expect_error(400);
    http("GET", &platform.url("/api/v1/alerts?limit=0"), None, None).await?.expect_error(400);
    http("GET", &platform.url("/api/v1/alerts?limit=5000"), None, None).await?.expect_error(400);
    http("GET", &platform.url("/api/v1/rules/not-a-uuid"), None, None).await?.expect_error(400);
    let missing = uuid::Uuid::new_v4();
    http("GET", &platform.url(&format!("/api/v1/rules/{missing}")), None, None).await?.expect_error(404);
    http("DELETE", &platform.url(&format!("/api/v1/rules/{missing}")), None, None).await?.expect_error(404);
    Ok(())
}

#[tokio::test]
async fn rules_over_grpc() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let mut client = RulesClient::new(platform.channel().await?);

    for (request, expected) in [
        (spec("temperature", "~="), "unknown comparison"),
        (spec("", ">"), "metric must not be empty"),
        (pb::RuleSpec { severity: "loud".into(), ..spec("t", ">") }, "unknown severity"),
        (
            pb::RuleSpec { for_duration: Some(prost_types::Duration { seconds: -5, nanos: 0 }), ..spec("t", ">") },
            "for_duration",
        ),
    ] {
        let status = client.create_rule(pb::CreateRuleRequest { spec: Some(request) }).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{:?} lacks {expected:?}", status.message());
    }
    let status = client.create_rule(pb::CreateRuleRequest { spec: None }).await.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .list_alerts(pb::ListAlertsRequest { state: "bogus".into(), ..Default::default() })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);

    let created = client
        .create_rule(pb::CreateRuleRequest {
            spec: Some(pb::RuleSpec {
                for_duration: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
                tags: vec!["b".into(), "a".into()],
                ..spec("humidity", ">=")
            }),
        })
        .await?
        .into_inner();
    let created_spec = created.spec.clone().unwrap_or_default();
    assert_eq!(created_spec.tags, vec!["a", "b"]);
    assert_eq!(created_spec.for_duration.map(|d| d.seconds), Some(60));
    assert_eq!(created_spec.message, "{device} {metric} is {value} ({comparison} {threshold})");
    platform.wait_rules(1).await?;

    let fetched = client.get_rule(pb::GetRuleRequest { id: created.id.clone() }).await?.into_inner();
    assert_eq!(fetched, created);
    // The same rule over REST.
    let rest = http("GET", &platform.url(&format!("/api/v1/rules/{}", created.id)), None, None).await?.json();
    assert_eq!(rest["for"], "1m");
    assert_eq!(rest["comparison"], ">=");
    assert_eq!(rest["tags"], json!(["a", "b"]));

    let disabled = client
        .update_rule(pb::UpdateRuleRequest {
            id: created.id.clone(),
            spec: Some(pb::RuleSpec { enabled: false, ..created_spec.clone() }),
        })
        .await?
        .into_inner();
    assert_eq!(disabled.spec.map(|s| s.enabled), Some(false));
    // A disabled rule is not evaluated.
    platform.wait_rules(0).await?;
    let listed = client.list_rules(pb::ListRulesRequest {}).await?.into_inner();
    assert_eq!(listed.rules.len(), 1);

    client.delete_rule(pb::DeleteRuleRequest { id: created.id.clone() }).await?;
    let status = client.get_rule(pb::GetRuleRequest { id: created.id }).await.expect_err("deleted");
    assert_eq!(status.code(), Code::NotFound);
    let status = client.get_rule(pb::GetRuleRequest { id: "x".into() }).await.expect_err("bad id");
    assert_eq!(status.code(), Code::InvalidArgument);
    Ok(())
}

#[tokio::test]
async fn tokens_are_checked_on_both_faces() -> anyhow::Result<()> {
    let platform = Platform::start_with(true).await?;
    http("GET", &platform.url("/api/v1/rules"), None, None).await?.expect_error(401);
    http("GET", &platform.url("/api/v1/alerts"), Some("fer_wrong"), None).await?.expect_error(401);
    let mut client = RulesClient::new(platform.channel().await?);
    let status = client.list_rules(pb::ListRulesRequest {}).await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);

    // The OpenAPI document describes the rules routes beside the registry's.
    let document = http("GET", &platform.url("/openapi.json"), None, None).await?.json();
    for path in ["/api/v1/rules", "/api/v1/rules/{id}", "/api/v1/alerts", "/api/v1/devices"] {
        assert!(document["paths"][path].is_object(), "{path} missing from /openapi.json");
    }
    Ok(())
}
