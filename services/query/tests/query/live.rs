//! The live stream against the embedded broker: readings published by a device reach the gRPC stream, filtered by
//! device and metric, and the feed's broker subscription ends with the last stream.

use std::time::Duration;

use ferrite_mqtt::{QoS, Session, SessionConfig};
use ferrite_proto::v1 as pb;
use ferrite_query::{LiveConfig, LiveFeed};
use ferrite_testkit::{WAIT_DEADLINE, wait_for};
use ferrite_testkit_broker::TestBroker;
use tokio_util::sync::CancellationToken;

use crate::support::TestApp;

#[tokio::test]
async fn published_readings_reach_the_stream() -> anyhow::Result<()> {
    let broker = TestBroker::start().await?;
    let shutdown = CancellationToken::new();
    let feed = LiveFeed::start(LiveConfig::new(broker.url(), None), shutdown.clone());
    let app = TestApp::start_with(false, Some(feed.clone())).await?;
    let mut client = app.telemetry().await?;

    let request = pb::StreamRequest { device_id: "pump-7".into(), metric: "temperature".into() };
    let mut temperature = client.stream(request).await?.into_inner();
    let mut everything =
        client.stream(pb::StreamRequest { device_id: "pump-7".into(), metric: String::new() }).await?.into_inner();
    assert_eq!(feed.streamed_devices(), ["pump-7"], "two streams share one device subscription");

    // The subscription reaches the broker in the background, so the device publishes until the streams see readings.
    let (device, mut device_events) = Session::start(SessionConfig::new(broker.url(), "pump-7"));
    tokio::spawn(async move { while device_events.recv().await.is_some() {} });
    let publisher = tokio::spawn({
        let device = device.clone();
        async move {
            for round in 0u32.. {
                let ts = 1_764_000_000_000i64 + i64::from(round) * 1000;
                let reading = format!(r#"{{"value": 21.5, "ts": {ts}, "unit": "C"}}"#);
                device.publish("sensors/pump-7/temperature", QoS::AtLeastOnce, false, reading, None).await?;
                device.publish("sensors/pump-7/humidity", QoS::AtLeastOnce, false, "40", None).await?;
                let batch = format!(r#"{{"ts": {ts}, "metrics": {{"temperature": 22.5, "pressure": 1013}}}}"#);
                device.publish("sensors/pump-7", QoS::AtLeastOnce, false, batch, None).await?;
                device.publish("sensors/other-1/temperature", QoS::AtLeastOnce, false, "99", None).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        }
    });

    // The filtered stream carries pump-7's temperatures only, single and batched, with their timestamps and units.
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let next = tokio::time::timeout(WAIT_DEADLINE, temperature.message()).await??.expect("the stream goes on");
        assert_eq!((next.device_id.as_str(), next.metric.as_str()), ("pump-7", "temperature"), "{next:?}");
        let reading = next.reading.expect("reading");
        assert!(reading.ts.is_some_and(|ts| ts.seconds >= 1_764_000_000), "{reading:?}");
        seen.push((reading.value, reading.unit));
    }
    assert!(seen.contains(&(21.5, "C".to_owned())), "{seen:?}");
    assert!(seen.contains(&(22.5, String::new())), "{seen:?}");
    assert!(seen.iter().all(|reading| [21.5, 22.5].contains(&reading.0)), "{seen:?}");

    // The unfiltered stream carries every metric of pump-7, and nothing of other-1.
    let mut metrics = std::collections::BTreeSet::new();
    while metrics.len() < 3 {
        let next = tokio::time::timeout(WAIT_DEADLINE, everything.message()).await??.expect("the stream goes on");
        assert_eq!(next.device_id, "pump-7");
        metrics.insert(next.metric);
    }
    assert_eq!(metrics.into_iter().collect::<Vec<_>>(), ["humidity", "pressure", "temperature"]);

    // When the last stream of the device ends, the feed lets go of its subscription.
    drop(temperature);
    assert_eq!(feed.streamed_devices(), ["pump-7"], "one stream is left");
    drop(everything);
    wait_for("the feed to drop pump-7", || {
        let feed = feed.clone();
        async move { feed.streamed_devices().is_empty() }
    })
    .await?;

    // A new stream after that subscribes again.
    let mut again =
        client.stream(pb::StreamRequest { device_id: "pump-7".into(), metric: "humidity".into() }).await?.into_inner();
    let next = tokio::time::timeout(WAIT_DEADLINE, again.message()).await??.expect("the stream goes on");
    assert_eq!((next.metric.as_str(), next.reading.map(|r| r.value)), ("humidity", Some(40.0)));

    // Shutting the feed down ends open streams, so the registry can drain.
    shutdown.cancel();
    let end = tokio::time::timeout(WAIT_DEADLINE, async {
        loop {
            match again.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await?;
    assert!(matches!(end, Ok(None)), "the stream ends cleanly: {end:?}");
    publisher.abort();
    device.abort();
    app.stop().await?;
    broker.stop().await;
    Ok(())
}
