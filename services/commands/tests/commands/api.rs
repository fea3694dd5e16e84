//! Bad input over REST and gRPC, unknown devices and commands, and the OpenAPI document.

use ferrite_proto::v1 as pb;
use ferrite_proto::v1::commands_client::CommandsClient;
use serde_json::json;
use tonic::Code;

use crate::support::{Platform, http};

#[tokio::test]
async fn bad_input_is_refused_on_both_faces() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    // A device that exists (and is offline), so only the input is wrong.
    sqlx::query("insert into devices (id) values ('known-1')").execute(platform.pool()).await?;

    for (device, body, expected) in [
        ("bad%20id", json!({"name": "ping"}), "invalid device id"),
        ("known-1", json!({"name": "ping", "timeout": "abc"}), "invalid timeout"),
        ("known-1", json!({"name": "ping", "timeout": "0s"}), "timeout must be above 0"),
        ("known-1", json!({"name": "ping", "timeout": "10m"}), "at most 5m"),
        ("known-1", json!({"name": "ping", "timeout": -1}), "invalid timeout"),
        ("known-1", json!({"name": "ping", "timeout": true}), "invalid timeout"),
        ("known-1", json!({"name": ""}), "command name"),
        ("known-1", json!({"name": "a b"}), "invalid command name"),
        ("known-1", json!({"name": "ping", "params": [1, 2]}), "params must be a JSON object"),
    ] {
        let message = platform.send(device, body.clone()).await?.expect_error(400);
        assert!(message.contains(expected), "{device} {body}: {message:?} lacks {expected:?}");
    }
    platform.send("known-1", json!({"params": {}})).await?.expect_error(422);
    platform.send("ghost-1", json!({"name": "ping"})).await?.expect_error(404);
    http("GET", &platform.url("/api/v1/devices/bad%20id/commands"), None).await?.expect_error(400);
    http("GET", &platform.url("/api/v1/devices/ghost-1/commands"), None).await?.expect_error(404);
    http("GET", &platform.url("/api/v1/devices/known-1/commands?limit=0"), None).await?.expect_error(400);
    http("GET", &platform.url("/api/v1/commands/not-a-uuid"), None).await?.expect_error(400);
    http("GET", &platform.url(&format!("/api/v1/commands/{}", uuid::Uuid::new_v4())), None).await?.expect_error(404);
    // Nothing bad was stored.
    let (stored,): (i64,) = sqlx::query_as("select count(*) from commands").fetch_one(platform.pool()).await?;
    assert_eq!(stored, 0);

    let mut client = CommandsClient::new(platform.channel().await?);
    let send = |device: &str, timeout: Option<prost_types::Duration>| pb::SendCommandRequest {
        device_id: device.into(),
        name: "ping".into(),
        timeout,
        ..Default::default()
    };
    for (request, expected) in [
        (send("bad id", None), "invalid device id"),
        (send("known-1", Some(prost_types::Duration { seconds: -1, nanos: 0 })), "timeout must not be negative"),
        (send("known-1", Some(prost_types::Duration { seconds: 600, nanos: 0 })), "at most 5m"),
        (pb::SendCommandRequest { name: String::new(), ..send("known-1", None) }, "command name"),
    ] {
        let status = client.send(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{:?} lacks {expected:?}", status.message());
    }
    assert_eq!(client.send(send("ghost-1", None)).await.expect_err("unknown").code(), Code::NotFound);
    let status = client.get(pb::GetCommandRequest { id: "x".into() }).await.expect_err("bad id");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client.list(pb::ListCommandsRequest { device_id: "a/b".into(), limit: 0 }).await.expect_err("bad id");
    assert_eq!(status.code(), Code::InvalidArgument);

    // An offline device's command is pending at once, over gRPC too.
    let pending = client.send(send("known-1", None)).await?.into_inner();
    assert_eq!(pending.state, "pending");

    let document = http("GET", &platform.url("/openapi.json"), None).await?.expect(200);
    for path in ["/api/v1/devices/{id}/commands", "/api/v1/commands/{command_id}", "/api/v1/devices"] {
        assert!(document["paths"][path].is_object(), "{path} missing from /openapi.json");
    }
    Ok(())
}
