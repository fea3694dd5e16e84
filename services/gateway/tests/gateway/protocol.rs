//! The live protocol of DESIGN.md over real WebSockets (tokio-tungstenite), against the embedded broker.

use std::time::Duration;

use anyhow::{Context, ensure};
use ferrite_fleet::Fleet;
use ferrite_testkit::{WAIT_DEADLINE, wait_for};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::{Browser, Harness, unique};

/// The frame without its `ts`, which must be RFC 3339 text; the rest is compared exactly.
fn without_ts(mut frame: Value) -> Value {
    if let Some(object) = frame.as_object_mut()
        && let Some(ts) = object.remove("ts")
    {
        let text = ts.as_str().unwrap_or_default();
        assert!(chrono::DateTime::parse_from_rfc3339(text).is_ok(), "ts is not RFC 3339: {ts}");
    }
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_type() -> anyhow::Result<()> {
    let harness = Harness::start().await?;
    let mqtt = harness.mqtt().await?;
    let mut observer = harness.mqtt().await?;
    observer.subscribe("control/#").await?;
    let mut browser = harness.browser().await?;
    browser.subscribe(&["sensors/#", "devices/+/status", "alerts/+", "control/#"]).await?;
    harness.wait_live(&mut browser, &mqtt).await?;

    mqtt.publish("sensors/d1/temperature", "21.5", false).await?;
    assert_eq!(
        without_ts(browser.next().await?),
        json!({"type": "sensor-update", "topic": "sensors/d1/temperature", "deviceId": "d1",
            "metric": "temperature", "value": 21.5})
    );
    mqtt.publish("sensors/d1/humidity", r#"{"value": 40, "ts": "2026-11-25T10:00:00Z", "unit": "%"}"#, false).await?;
    assert_eq!(
        browser.next().await?,
        json!({"type": "sensor-update", "topic": "sensors/d1/humidity", "deviceId": "d1", "metric": "humidity",
            "value": 40.0, "ts": "2026-11-25T10:00:00.000Z", "unit": "%"})
    );
    // A batch yields one update per metric.
    mqtt.publish("sensors/d1", r#"{"ts": 1795600800000, "metrics": {"temperature": 21.5, "humidity": 41}}"#, false)
        .await?;
    let mut batch = vec![browser.next().await?, browser.next().await?];
    batch.sort_by_key(|frame| frame["metric"].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        batch,
        [
            json!({"type": "sensor-update", "topic": "sensors/d1", "deviceId": "d1", "metric": "humidity",
                "value": 41.0, "ts": "2026-11-25T10:00:00.000Z"}),
            json!({"type": "sensor-update", "topic": "sensors/d1", "deviceId": "d1", "metric": "temperature",
                "value": 21.5, "ts": "2026-11-25T10:00:00.000Z"}),
        ]
    );
    mqtt.publish("devices/d1/status", "online", false).await?;
    assert_eq!(
        without_ts(browser.next().await?),
        json!({"type": "status", "topic": "devices/d1/status", "deviceId": "d1", "online": true})
    );
    mqtt.publish("devices/d1/status", "offline", false).await?;
    assert_eq!(browser.next().await?["online"], false);
    let alert = json!({"rule": "too-hot", "deviceId": "d1", "metric": "temperature", "value": 41.5,
        "message": "d1 is too hot", "severity": "critical", "ts": "2026-11-25T10:00:01Z"});
    mqtt.publish("alerts/d1", alert.to_string(), false).await?;
    assert_eq!(
        browser.next().await?,
        json!({"type": "alert", "topic": "alerts/d1", "deviceId": "d1", "message": "d1 is too hot",
            "severity": "critical", "ts": "2026-11-25T10:00:01Z", "rule": "too-hot", "metric": "temperature",
            "value": 41.5})
    );
    // Anything else is passed through: text as it is, binary as base64.
    mqtt.publish("control/lights/living-room", r#"{"state":"on","brightness":80}"#, false).await?;
    assert_eq!(
        browser.next().await?,
        json!({"type": "mqtt-message", "topic": "control/lights/living-room",
            "payload": r#"{"state":"on","brightness":80}"#})
    );
    observer.next_message().await?;
    mqtt.publish("control/blob", vec![0xffu8, 0, 1], false).await?;
    assert_eq!(
        browser.next().await?,
        json!({"type": "mqtt-message", "topic": "control/blob", "payload": "/wAB", "encoding": "base64"})
    );
    observer.next_message().await?;
    // A payload that does not parse still reaches the browser, with the reason.
    mqtt.publish("sensors/d1/temperature", "warm", false).await?;
    let frame = browser.next().await?;
    assert_eq!((&frame["type"], &frame["payload"]), (&json!("mqtt-message"), &json!("warm")), "{frame}");
    assert!(frame["error"].as_str().is_some_and(|error| error.contains("neither a number")), "{frame}");

    // The browser publishes; a real MQTT subscriber and the browser itself (subscribed to control/#) see it.
    browser
        .send(json!({"type": "publish", "topic": "control/lights/kitchen", "payload": "{\"state\":\"off\"}",
            "qos": 1, "retain": false}))
        .await?;
    let received = observer.next_message().await?;
    assert_eq!(
        (received.topic.as_str(), &received.payload[..]),
        ("control/lights/kitchen", &br#"{"state":"off"}"#[..])
    );
    assert_eq!(received.qos, ferrite_mqtt::QoS::AtLeastOnce);
    assert_eq!(
        browser.next().await?,
        json!({"type": "mqtt-message", "topic": "control/lights/kitchen", "payload": "{\"state\":\"off\"}"})
    );

    // Unsubscribing stops the flow for that filter only.
    browser.unsubscribe(&["control/#"]).await?;
    wait_for("the control filter to be released", || async {
        !harness.state.subscriptions().iter().any(|(filter, _)| filter == "control/#")
    })
    .await?;
    mqtt.publish("control/lights/hall", "on", false).await?;
    mqtt.publish("alerts/d2", "door open", false).await?;
    assert_eq!(
        without_ts(browser.next().await?),
        json!({"type": "alert", "topic": "alerts/d2", "deviceId": "d2", "message": "door open", "severity": "warning"})
    );
    harness.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_values_arrive_on_subscribe() -> anyhow::Result<()> {
    let harness = Harness::start().await?;
    let publisher = harness.mqtt().await?;
    publisher.publish("devices/r1/status", "online", true).await?;
    publisher.publish("sensors/r1/temperature", "19.5", true).await?;
    publisher.close().await?;

    // The first browser on a filter: the broker replays the retained value for the gateway's new subscription.
    let mut first = harness.browser().await?;
    first.subscribe(&["devices/+/status"]).await?;
    let status = json!({"type": "status", "topic": "devices/r1/status", "deviceId": "r1", "online": true});
    assert_eq!(without_ts(first.next().await?), status);

    // A second browser on the same filter, already subscribed at the broker: from the gateway's cache, at once.
    let mut second = harness.browser().await?;
    second.subscribe(&["devices/+/status"]).await?;
    assert_eq!(without_ts(second.next().await?), status);
    assert_eq!(harness.state.subscriptions(), [("devices/+/status".to_owned(), 2)]);

    // Another filter, new at the broker.
    let mut third = harness.browser().await?;
    third.subscribe(&["sensors/r1/#"]).await?;
    assert_eq!(
        without_ts(third.next().await?),
        json!({"type": "sensor-update", "topic": "sensors/r1/temperature", "deviceId": "r1",
            "metric": "temperature", "value": 19.5})
    );

    // A live retained publish replaces the cached value.
    let mqtt = harness.mqtt().await?;
    harness.wait_live(&mut first, &mqtt).await?;
    mqtt.publish("devices/r1/status", "offline", true).await?;
    assert_eq!(first.next().await?["online"], false);
    assert_eq!(second.next().await?["online"], false);
    let mut fourth = harness.browser().await?;
    fourth.subscribe(&["devices/+/status"]).await?;
    assert_eq!(fourth.next().await?["online"], false);

    // A new filter overlapping `devices/+/status`: its replay goes to its own browser, not as a duplicate to others.
    let mut fifth = harness.browser().await?;
    fifth.subscribe(&["devices/r1/status"]).await?;
    assert_eq!(fifth.next().await?["online"], false);
    mqtt.publish("devices/zz/status", "online", false).await?;
    for browser in [&mut first, &mut second, &mut fourth] {
        assert_eq!(browser.next().await?["deviceId"], "zz", "no duplicate of r1 before the live message");
    }
    harness.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_filters() -> anyhow::Result<()> {
    let harness = Harness::start().await?;
    let mqtt = harness.mqtt().await?;
    let mut temperatures = harness.browser().await?;
    temperatures.subscribe(&["sensors/+/temperature"]).await?;
    let mut one_device = harness.browser().await?;
    one_device.subscribe(&["sensors/w1/#"]).await?;
    let mut everything = harness.browser().await?;
    everything.subscribe(&["#"]).await?;
    harness.wait_live(&mut temperatures, &mqtt).await?;
    harness.wait_live(&mut one_device, &mqtt).await?;
    harness.wait_live(&mut everything, &mqtt).await?;

    let published = [
        "sensors/w1/temperature",
        "sensors/w2/temperature",
        "sensors/w1/humidity",
        "sensors/w1",
        "devices/w1/status",
        "control/x",
    ];
    for topic in published {
        let payload = match topic {
            "sensors/w1" => r#"{"metrics": {"co2": 400}}"#,
            "devices/w1/status" => "online",
            _ => "1",
        };
        mqtt.publish(topic, payload, false).await?;
    }
    mqtt.publish("sensors/w9/temperature", "2", false).await?;
    let mut expected: Vec<&str> = published.to_vec();
    expected.push("sensors/w9/temperature");
    assert_eq!(topics_until(&mut everything, "sensors/w9/temperature").await?, expected);
    assert_eq!(
        topics_until(&mut temperatures, "sensors/w9/temperature").await?,
        ["sensors/w1/temperature", "sensors/w2/temperature", "sensors/w9/temperature"]
    );
    mqtt.publish("sensors/w1/end", "3", false).await?;
    let seen = topics_until(&mut one_device, "sensors/w1/end").await?;
    // `sensors/w1/#` matches its parent `sensors/w1` too.
    assert_eq!(seen, ["sensors/w1/temperature", "sensors/w1/humidity", "sensors/w1", "sensors/w1/end"]);
    harness.stop().await
}

/// The topics of the frames `browser` receives, up to and including one on `last`.
async fn topics_until(browser: &mut Browser, last: &str) -> anyhow::Result<Vec<String>> {
    let mut seen = Vec::new();
    loop {
        let frame = browser.next().await?;
        let topic = frame["topic"].as_str().context("every frame here has a topic")?.to_owned();
        // Every payload here parses; an error would mean it reached the gateway damaged.
        ensure!(frame.get("error").is_none(), "{frame}");
        let done = topic == last;
        seen.push(topic);
        if done {
            return Ok(seen);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_keeps_the_connection_usable() -> anyhow::Result<()> {
    let harness = Harness::start().await?;
    let mqtt = harness.mqtt().await?;
    let mut bystander = harness.browser().await?;
    bystander.subscribe(&["sensors/#"]).await?;
    let mut browser = harness.browser().await?;
    for (input, expected) in [
        ("{not json", "invalid JSON"),
        ("42", "missing \"type\""),
        (r#"{"type": "explode"}"#, "unknown message type \"explode\""),
        (r#"{"type": "subscribe", "topics": ["sensors/#/x"]}"#, "'#' must be the last level"),
        (r#"{"type": "subscribe", "topics": ["$share/g/sensors/#"]}"#, "shared subscriptions"),
        (r#"{"type": "subscribe"}"#, "missing field `topics`"),
        (r#"{"type": "publish", "topic": "sensors/+/x", "payload": "1"}"#, "wildcards"),
        (r#"{"type": "publish", "topic": "$SYS/x", "payload": "1"}"#, "reserved"),
        (r#"{"type": "publish", "topic": "a", "qos": 7}"#, "invalid qos"),
    ] {
        browser.send_text(input).await?;
        let reply = browser.next().await?;
        assert_eq!(reply["type"], "error", "{input}: {reply}");
        let message = reply["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{input}: {message:?} does not contain {expected:?}");
    }
    // Still usable: it subscribes and receives.
    browser.subscribe(&["sensors/+/temperature"]).await?;
    harness.wait_live(&mut browser, &mqtt).await?;
    mqtt.publish("sensors/b1/temperature", "7", false).await?;
    assert_eq!(browser.next().await?["value"], 7.0);
    assert_eq!(bystander.next_where(|frame| frame["topic"] == "sensors/b1/temperature").await?["value"], 7.0);
    harness.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_browser_loses_updates_alone() -> anyhow::Result<()> {
    // A small queue, so that the slow browser's fills soon after the socket buffers do.
    const QUEUE: usize = 16;
    const PER_ROUND: usize = QUEUE / 2;
    let harness = Harness::start_with(|config| config.client_queue = QUEUE).await?;
    let mqtt = harness.mqtt().await?;
    let mut slow = harness.browser().await?;
    slow.subscribe(&["bulk/#"]).await?;
    let mut fast = harness.browser().await?;
    fast.subscribe(&["bulk/#"]).await?;
    harness.wait_live(&mut fast, &mqtt).await?;
    let slow_id = harness.state.clients()[0].id;

    // 32 KiB messages (above rumqttc's default packet limit, so large messages are covered too), a few at a
    // time, each round waiting for the fast browser to have all of them, until the slow one has lost some.
    let filler = "x".repeat(32 * 1024);
    let mut sent = 0usize;
    let mut rounds = 0;
    let dropped = |harness: &Harness| {
        harness.state.clients().iter().find(|client| client.id == slow_id).map_or(0, |client| client.dropped)
    };
    while dropped(&harness) == 0 {
        rounds += 1;
        ensure!(rounds <= 2_000, "the slow browser never lost an update after {sent} messages");
        for _ in 0..PER_ROUND {
            mqtt.publish("bulk/data", format!("{sent:08} {filler}"), false).await?;
            sent += 1;
        }
        for expected in sent - PER_ROUND..sent {
            let frame = fast.next().await?;
            let payload = frame["payload"].as_str().context("a bulk message")?;
            assert_eq!(&payload[..8], format!("{expected:08}"), "the fast browser gets everything, in order");
        }
    }
    let clients = harness.state.clients();
    let fast_stats = clients.iter().find(|client| client.id != slow_id).context("the fast browser")?;
    assert_eq!(fast_stats.dropped, 0);
    let rendered = ferrite_telemetry::metrics_handle().render();
    assert!(rendered.contains("ferrite_gateway_frames_dropped_total"), "the drops are counted in /metrics");
    println!("slow browser dropped {} of {sent} messages", dropped(&harness));
    drop(slow);
    harness.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_browsers_receive_one_update() -> anyhow::Result<()> {
    const BROWSERS: usize = 1_000;
    require_open_files(2 * BROWSERS + 200)?;
    let harness = Harness::start().await?;
    let mqtt = harness.mqtt().await?;
    let url = format!("ws://{}/dashboard", harness.addr);
    let mut browsers = Vec::with_capacity(BROWSERS);
    // In waves, so that the listen backlog never overflows.
    for _ in 0..BROWSERS / 100 {
        let wave = futures::future::try_join_all((0..100).map(|_| async {
            let mut browser = Browser::connect(&url).await?;
            browser.subscribe(&["sensors/#"]).await?;
            anyhow::Ok(browser)
        }))
        .await?;
        browsers.extend(wave);
    }
    assert_eq!(harness.state.clients().len(), BROWSERS);
    assert_eq!(harness.state.subscriptions(), [("sensors/#".to_owned(), BROWSERS)]);
    let (first, rest) = browsers.split_first_mut().context("browsers")?;
    harness.wait_live(first, &mqtt).await?;

    mqtt.publish("sensors/fan-1/temperature", "42.5", false).await?;
    let received = futures::future::try_join_all(std::iter::once(first).chain(rest.iter_mut()).map(|browser| async {
        let frame = browser.next_where(|frame| frame["topic"] == "sensors/fan-1/temperature").await?;
        anyhow::Ok(frame["value"].as_f64())
    }))
    .await?;
    assert_eq!(received.len(), BROWSERS);
    assert!(received.iter().all(|value| *value == Some(42.5)));
    drop(browsers);
    wait_for("every browser to be gone", || async { harness.state.clients().is_empty() }).await?;
    assert!(harness.state.subscriptions().is_empty());
    harness.stop().await
}

/// Fails with what to do when this process may not open `needed` files (each WebSocket is two here).
fn require_open_files(needed: usize) -> anyhow::Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse::<usize>().ok());
    match soft {
        Some(soft) if soft < needed => {
            anyhow::bail!(
                "this test opens about {needed} sockets but the open files limit is {soft}: run ulimit -n 4096 first"
            )
        }
        _ => Ok(()),
    }
}

/// The seed article's dashboard, step by step: it subscribes to `sensors/+/temperature` and writes
/// `${data.value}°C` into the element named by `data.deviceId`; its `alert` case shows `data.message`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_dashboard_flow() -> anyhow::Result<()> {
    let harness = Harness::start().await?;
    let fleet_stop = CancellationToken::new();
    let mut fleet_config = ferrite_fleet::Config::new(harness.broker().url(), 2);
    fleet_config.interval = Duration::from_millis(500);
    let fleet = tokio::spawn(Fleet::bind(fleet_config)?.run(fleet_stop.clone()));

    let mut ws = harness.browser().await?;
    ws.send(json!({"type": "subscribe", "topics": ["sensors/+/temperature"]})).await?;
    assert_eq!(ws.next().await?, json!({"type": "subscribed", "topics": ["sensors/+/temperature"]}));
    let mut elements = std::collections::BTreeMap::new();
    while elements.len() < 2 {
        let data = ws.next().await?;
        if data["type"] == "sensor-update" {
            let device = data["deviceId"].as_str().context("deviceId is text")?.to_owned();
            let value = data["value"].as_f64().context("value is a number")?;
            elements.insert(device, format!("{value}°C"));
        }
    }
    assert_eq!(elements.keys().collect::<Vec<_>>(), ["sim-0001", "sim-0002"]);

    // Alerts come to a dashboard that subscribes to them.
    ws.send(json!({"type": "subscribe", "topics": ["alerts/#"]})).await?;
    ws.next_where(|data| data["type"] == "subscribed").await?;
    let mqtt = harness.mqtt().await?;
    harness.wait_live(&mut ws, &mqtt).await?;
    mqtt.publish(
        "alerts/sim-0001",
        json!({"message": "sim-0001 overheating", "severity": "critical"}).to_string(),
        false,
    )
    .await?;
    let alert = ws.next_where(|data| data["type"] == "alert").await?;
    assert_eq!((&alert["deviceId"], &alert["message"]), (&json!("sim-0001"), &json!("sim-0001 overheating")));

    fleet_stop.cancel();
    tokio::time::timeout(WAIT_DEADLINE, fleet).await.context("the fleet did not stop")???;
    harness.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_browsers_with_going_away() -> anyhow::Result<()> {
    let harness = Harness::start().await?;
    let mut browser = harness.browser().await?;
    browser.subscribe(&[&format!("x/{}", unique())]).await?;
    let stopping = tokio::spawn(harness.stop());
    assert_eq!(browser.close_code().await?, 1001);
    stopping.await??;
    Ok(())
}

/// Messages far above rumqttc's default limit of 10 KiB reach browsers, retained ones from the cache too.
///
/// Above [`ferrite_gateway::MAX_MQTT_PACKET`] the broker drops a message for the gateway alone (MQTT 5, Maximum
/// Packet Size; counted as `too_large_for_client`); the broker's conformance test `maximum_packet_size_v5` checks that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_arrive() -> anyhow::Result<()> {
    let harness = Harness::start().await?;
    let mqtt = harness.mqtt().await?;
    let mut browser = harness.browser().await?;
    browser.subscribe(&["big/#"]).await?;
    harness.wait_live(&mut browser, &mqtt).await?;
    let large = "y".repeat(200 * 1024);
    mqtt.publish("big/large", large.clone(), true).await?;
    assert_eq!(browser.next().await?["payload"].as_str().map(str::len), Some(large.len()));
    let mut later = harness.browser().await?;
    later.subscribe(&["big/#"]).await?;
    assert_eq!(later.next().await?["payload"].as_str().map(str::len), Some(large.len()));
    harness.stop().await
}
