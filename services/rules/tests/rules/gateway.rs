//! An alert reaches a browser: the engine publishes `alerts/{device}`, a real gateway forwards it over WebSocket.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use ferrite_gateway::{Config, Gateway};
use ferrite_testkit::WAIT_DEADLINE;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::support::{Mqtt, Platform};

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON text frame, within `within`.
async fn next_frame(ws: &mut Socket, within: Duration) -> anyhow::Result<Option<Value>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let message = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Ok(None),
            Ok(message) => message.context("the gateway closed the connection")??,
        };
        match message {
            Message::Text(text) => return Ok(Some(serde_json::from_str(text.as_str())?)),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => bail!("unexpected frame {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_alert_reaches_a_websocket_client() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let mqtt = Mqtt::connect(&platform).await?;
    let mut config = Config::new(platform.broker_url());
    config.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let gateway = Gateway::bind(config).await?;
    let addr = gateway.local_addr();
    let stop = CancellationToken::new();
    let gateway_task = tokio::spawn(gateway.run(stop.clone()));

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/dashboard")).await?;
    ws.send(Message::text(json!({"type": "subscribe", "topics": ["alerts/#", "probe/ws"]}).to_string())).await?;
    // The gateway subscribes its filters in order, so once the probe comes through, alerts/# is live too.
    let deadline = tokio::time::Instant::now() + WAIT_DEADLINE;
    'live: loop {
        if tokio::time::Instant::now() > deadline {
            bail!("the gateway's subscriptions never went live");
        }
        mqtt.publish("probe/ws", "probe").await?;
        while let Some(frame) = next_frame(&mut ws, Duration::from_millis(200)).await? {
            if frame["topic"] == "probe/ws" {
                break 'live;
            }
        }
    }

    platform
        .create_rule(json!({"name": "battery low", "metric": "battery", "comparison": "<", "value": 20,
            "severity": "critical", "message": "{device} battery at {value}%"}))
        .await?;
    mqtt.reading("ws-1", "battery", 12.5, Utc::now()).await?;
    let alert = loop {
        let frame = next_frame(&mut ws, WAIT_DEADLINE).await?.context("no alert frame arrived")?;
        if frame["type"] == "alert" {
            break frame;
        }
    };
    assert_eq!(alert["deviceId"], "ws-1");
    assert_eq!(alert["topic"], "alerts/ws-1");
    assert_eq!(alert["message"], "ws-1 battery at 12.5%");
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["rule"], "battery low");
    assert_eq!(alert["metric"], "battery");
    assert_eq!(alert["value"], 12.5);
    assert!(alert["ts"].is_string());

    stop.cancel();
    tokio::time::timeout(WAIT_DEADLINE, gateway_task).await???;
    Ok(())
}
