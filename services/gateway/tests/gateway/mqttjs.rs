//! mqtt.js (npm) over WebSocket against the embedded broker, as the seed article's browser example uses it.

use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use crate::support::{Harness, NodeScript, require_node};

/// Runs `tests/js/mqttjs.mjs` with MQTT `version` (4 is 3.1.1, mqtt.js's default; 5 is MQTT 5).
async fn seed_example(version: &str) -> anyhow::Result<()> {
    require_node(&["mqtt"])?;
    let harness = Harness::start().await?;
    let ws = harness.broker().ws_addr().context("the test broker has a WebSocket listener")?;
    let mut observer = harness.mqtt().await?;
    observer.subscribe("control/#").await?;
    observer.subscribe("clients/#").await?;
    let sensor = harness.mqtt().await?;

    let url = format!("ws://{ws}/mqtt");
    let mut script = NodeScript::spawn("mqttjs.mjs", &[&url, version])?;
    let within = Duration::from_secs(60);
    script.expect("connected", within).await?;
    let subscribed = script.expect("subscribed", within).await?;
    assert_eq!(subscribed["granted"], json!([{"topic": "sensors/+/temperature", "qos": 1}]));

    // Its publish reaches a real MQTT subscriber, at QoS 1.
    let control = observer.next_message().await?;
    assert_eq!(control.topic, "control/lights/living-room");
    let payload: Value = serde_json::from_slice(&control.payload)?;
    assert_eq!(payload, json!({"state": "on", "brightness": 80}));
    assert_eq!(control.qos, ferrite_mqtt::QoS::AtLeastOnce);
    script.expect("published", within).await?;

    // A reading published by a real MQTT client reaches it.
    sensor.publish("sensors/web-1/temperature", "21.5", false).await?;
    let message = script.expect("message", within).await?;
    assert_eq!((&message["topic"], &message["payload"]), (&json!("sensors/web-1/temperature"), &json!("21.5")));
    assert_eq!(message["qos"], 1);

    // It then drops its connection without DISCONNECT: the broker publishes its Last Will.
    let will = observer.next_message().await?;
    ensure!(will.topic == "clients/web-client/status", "expected the Last Will, got {will:?}");
    assert_eq!(&will.payload[..], b"offline");
    script.finish().await?;
    harness.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_js_over_websocket_mqtt_3_1_1() -> anyhow::Result<()> {
    seed_example("4").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_js_over_websocket_mqtt_5() -> anyhow::Result<()> {
    seed_example("5").await
}
