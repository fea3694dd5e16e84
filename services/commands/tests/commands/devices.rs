//! Commands with real devices: round trips with a fleet device (ping, restart, lights, set-interval), a command to
//! an offline device delivered when it reconnects, and a device that never answers.

use ferrite_proto::v1 as pb;
use ferrite_proto::v1::commands_client::CommandsClient;
use serde_json::json;

use crate::support::{FleetDevice, Platform, RawDevice, http, unique};

#[tokio::test]
async fn ping_and_restart_round_trip_with_a_fleet_device() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let device = FleetDevice::start(&platform, "cmd", 1)?;
    platform.wait_presence(&device.id, true).await?;

    let ping = platform.send(&device.id, json!({"name": "ping"})).await?.expect(200);
    assert_eq!(ping["state"], "ok", "{ping}");
    assert_eq!(ping["result"], "pong");
    assert_eq!(ping["deviceId"], device.id.as_str());
    assert_eq!(ping["params"], json!({}));
    assert_eq!(ping["timeout"], "10s");
    assert!(ping["completedAt"].is_string());

    // `restart` answers, then drops and restores the device's connection.
    let (before,): (chrono::DateTime<chrono::Utc>,) = sqlx::query_as("select now()").fetch_one(platform.pool()).await?;
    let restart = platform.send(&device.id, json!({"name": "restart", "timeout": "5s"})).await?.expect(200);
    assert_eq!(restart["state"], "ok", "{restart}");
    assert_eq!(restart["result"], json!({"restarting": true}));
    let pool = platform.pool().clone();
    let id = device.id.clone();
    ferrite_testkit::wait_for("the device to reconnect after restart", || {
        let (pool, id) = (pool.clone(), id.clone());
        async move {
            let row: Option<(bool, chrono::DateTime<chrono::Utc>)> =
                sqlx::query_as("select online, changed_at from presence where device_id = $1")
                    .bind(id)
                    .fetch_optional(&pool)
                    .await
                    .ok()
                    .flatten();
            // Went offline (changed_at moved on) and is back online.
            row.is_some_and(|(online, changed_at)| online && changed_at > before)
        }
    })
    .await?;

    // The device answers again; without waiting, the answer is 202 `sent` and the outcome arrives later.
    let sent = platform.send(&device.id, json!({"name": "ping", "wait": false})).await?.expect(202);
    assert_eq!(sent["state"], "sent");
    let answered = platform.wait_command(sent["id"].as_str().unwrap_or_default(), "ok").await?;
    assert_eq!(answered["result"], "pong");

    // The same over gRPC, with params, and a command the device does not know.
    let mut client = CommandsClient::new(platform.channel().await?);
    let params = prost_types::Struct {
        fields: [
            (
                "state".to_owned(),
                prost_types::Value { kind: Some(prost_types::value::Kind::StringValue("off".into())) },
            ),
            ("brightness".to_owned(), prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(40.0)) }),
        ]
        .into(),
    };
    let lights = client
        .send(pb::SendCommandRequest {
            device_id: device.id.clone(),
            name: "lights".into(),
            params: Some(params),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(lights.state, "ok");
    let result = lights.result.and_then(|value| value.kind);
    let Some(prost_types::value::Kind::StructValue(result)) = result else { panic!("lights result is not an object") };
    assert_eq!(
        result.fields.get("brightness").and_then(|v| v.kind.clone()),
        Some(prost_types::value::Kind::NumberValue(40.0))
    );
    let unknown = client
        .send(pb::SendCommandRequest { device_id: device.id.clone(), name: "dance".into(), ..Default::default() })
        .await?
        .into_inner();
    assert_eq!(unknown.state, "error");
    let fetched = client.get(pb::GetCommandRequest { id: unknown.id.clone() }).await?.into_inner();
    assert_eq!(fetched, unknown);

    // History, newest first, on both faces.
    let history =
        http("GET", &platform.url(&format!("/api/v1/devices/{}/commands", device.id)), None).await?.expect(200);
    let names: Vec<&str> = history.as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, vec!["dance", "lights", "ping", "restart", "ping"]);
    let listed = client.list(pb::ListCommandsRequest { device_id: device.id.clone(), limit: 2 }).await?.into_inner();
    assert_eq!(listed.commands.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), vec!["dance", "lights"]);
    device.stop().await
}

#[tokio::test]
async fn an_offline_device_gets_its_command_when_it_reconnects() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let number = 100 + unique() as usize;
    let device = FleetDevice::start(&platform, "away", number)?;
    let id = device.id.clone();
    platform.wait_presence(&id, true).await?;
    device.stop().await?;
    platform.wait_presence(&id, false).await?;

    let pending = platform.send(&id, json!({"name": "set-interval", "params": {"seconds": 2}})).await?.expect(202);
    assert_eq!(pending["state"], "pending", "{pending}");
    assert!(pending["completedAt"].is_null());
    let command_id = pending["id"].as_str().unwrap_or_default().to_owned();

    // The device comes back with its persistent session: the broker delivers the queued command and the
    // answer updates the stored command.
    let device = FleetDevice::start(&platform, "away", number)?;
    let done = platform.wait_command(&command_id, "ok").await?;
    assert_eq!(done["result"], json!({"interval": 2.0}));
    let (state,): (String,) = sqlx::query_as("select state from commands where id = $1::uuid")
        .bind(&command_id)
        .fetch_one(platform.pool())
        .await?;
    assert_eq!(state, "ok");
    device.stop().await
}

#[tokio::test]
async fn a_device_that_never_answers_times_out_and_a_late_answer_still_counts() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let mut mute = RawDevice::start(&platform, "mute-1").await?;

    let timed_out = platform.send("mute-1", json!({"name": "ping", "timeout": "300ms"})).await?.expect(200);
    assert_eq!(timed_out["state"], "timed_out", "{timed_out}");
    assert!(timed_out["result"].is_null());
    assert_eq!(timed_out["timeout"], "300ms");
    let id = timed_out["id"].as_str().unwrap_or_default().to_owned();
    let (state,): (String,) =
        sqlx::query_as("select state from commands where id = $1::uuid").bind(&id).fetch_one(platform.pool()).await?;
    assert_eq!(state, "timed_out");

    // The device did get it, as DESIGN.md's JSON with the MQTT 5 response topic and correlation data.
    let command = mute.next_command().await?;
    assert_eq!(command.topic(), "commands/mute-1");
    assert_eq!(command.publish.qos, ferrite_mqtt::QoS::AtLeastOnce);
    let body: serde_json::Value = serde_json::from_slice(command.payload())?;
    assert_eq!(body, json!({"id": id, "name": "ping", "params": {}}));
    let properties = command.publish.properties.clone().unwrap_or_default();
    assert_eq!(properties.response_topic.as_deref(), Some("commands/mute-1/response"));
    let correlation = properties.correlation_data.clone().unwrap_or_default();
    assert_eq!(correlation, id.as_bytes());

    // Another device cannot answer for it (this would make it an error); the real, late answer makes it ok.
    mute.respond(
        "commands/other-1/response",
        Some(correlation.clone()),
        &json!({"id": id, "status": "error", "result": "spoof"}),
    )
    .await?;
    mute.respond("commands/mute-1/response", Some(correlation), &json!({"id": id, "status": "ok", "result": "late"}))
        .await?;
    let late = platform.wait_command(&id, "ok").await?;
    assert_eq!(late["result"], "late");
    assert!(platform.stats.responses.load(std::sync::atomic::Ordering::Relaxed) >= 2);

    // A v3.1.1-style answer without correlation data is matched by its JSON id.
    let second = platform.send("mute-1", json!({"name": "ping", "wait": false})).await?.expect(202);
    let second_id = second["id"].as_str().unwrap_or_default().to_owned();
    mute.next_command().await?;
    mute.respond(
        "commands/mute-1/response",
        None,
        &json!({"id": second_id, "status": "error", "result": {"message": "busy"}}),
    )
    .await?;
    let failed = platform.wait_command(&second_id, "error").await?;
    assert_eq!(failed["result"], json!({"message": "busy"}));
    Ok(())
}
