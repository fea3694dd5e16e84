//! Publish/subscribe behaviour: retained messages, QoS, user properties, wildcards, shared subscriptions, `$SYS`.

use std::collections::BTreeSet;

use crate::support::{HANG_GUARD, Paho, TestBroker, mosquitto_pub, mosquitto_sub};

#[tokio::test]
async fn retained_message_reaches_later_subscribers_of_both_versions() {
    let broker = TestBroker::start().await;
    mosquitto_pub(broker.mqtt, &["-V", "mqttv311", "-q", "1", "-r", "-t", "rooms/kitchen/temp", "-m", "21.5"]).await;

    let v5 = mosquitto_sub(broker.mqtt, &["-V", "mqttv5", "-C", "1", "-W", "20", "-t", "rooms/+/temp", "-v"]).await;
    assert_eq!(v5, ["rooms/kitchen/temp 21.5"]);
    let v3 = Paho::tcp(broker.mqtt).v3().sub("rooms/#", 1).expect(1).run().await;
    let message = v3.first("message");
    assert_eq!(message["payload"], "21.5");
    assert_eq!(message["retain"], true);

    broker.stop().await;
}

/// Each client subscribes at QoS 0, 1 and 2 and publishes at every QoS to itself: nine deliveries,
/// each exactly once, each at the lower of the two QoS levels.
#[tokio::test]
async fn delivery_qos_is_the_lower_of_publish_and_subscription_qos() {
    let broker = TestBroker::start().await;
    for (version, paho) in [("5", Paho::tcp(broker.mqtt)), ("3.1.1", Paho::tcp(broker.mqtt).v3())] {
        let mut paho = paho.sub("qos/sub0", 0).sub("qos/sub1", 1).sub("qos/sub2", 2);
        for sub_qos in 0..=2u8 {
            for pub_qos in 0..=2u8 {
                paho = paho.publish(&format!("qos/sub{sub_qos}"), pub_qos, false, &format!("{sub_qos}-{pub_qos}"));
            }
        }
        let events = paho.expect(9).run().await;
        let messages = events.all("message");
        assert_eq!(messages.len(), 9, "MQTT {version}: exactly nine deliveries, no duplicates");
        let mut seen = BTreeSet::new();
        for message in messages {
            let payload = message["payload"].as_str().expect("payloads are text");
            assert!(seen.insert(payload.to_owned()), "MQTT {version}: {payload} delivered twice");
            let (sub_qos, pub_qos) = payload.split_once('-').expect("payload is sub-pub");
            let expected = sub_qos.min(pub_qos).parse::<u64>().expect("a digit");
            assert_eq!(message["qos"], expected, "MQTT {version}: subscription QoS {sub_qos}, publish QoS {pub_qos}");
        }
    }
    broker.stop().await;
}

#[tokio::test]
async fn qos2_flow_between_mosquitto_clients() {
    let broker = TestBroker::start().await;
    let mut subscriber = Paho::tcp(broker.mqtt).v3().sub("exactly/once", 2).expect(3).spawn();
    subscriber.wait_for("ready").await;
    for n in 1..=3 {
        mosquitto_pub(broker.mqtt, &["-V", "mqttv5", "-q", "2", "-t", "exactly/once", "-m", &format!("m{n}")]).await;
    }
    let mut payloads = Vec::new();
    for _ in 0..3 {
        let message = subscriber.wait_for("message").await;
        assert_eq!(message["qos"], 2);
        payloads.push(message["payload"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(payloads, ["m1", "m2", "m3"]);
    subscriber.wait_for("done").await;
    broker.stop().await;
}

#[tokio::test]
async fn mqtt5_user_properties_pass_through() {
    let broker = TestBroker::start().await;
    let events = Paho::tcp(broker.mqtt)
        .sub("props/#", 1)
        .user_property("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .user_property("unit", "C")
        .publish("props/temp", 1, false, "21.5")
        .expect(1)
        .run()
        .await;
    let message = events.first("message");
    let properties = &message["user_properties"];
    assert_eq!(properties["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    assert_eq!(properties["unit"], "C");
    // A broker default (rmqtt's was 5 minutes) must not stamp an expiry on every v5 delivery.
    assert!(message["message_expiry"].is_null(), "no expiry the publisher did not set: {message}");
    broker.stop().await;
}

#[tokio::test]
async fn mqtt5_message_expiry_set_by_the_publisher_is_kept() {
    let broker = TestBroker::start().await;
    let events = Paho::tcp(broker.mqtt)
        .sub("expiring/#", 1)
        .message_expiry(600)
        .publish("expiring/x", 1, false, "soon")
        .expect(1)
        .run()
        .await;
    let expiry = events.first("message")["message_expiry"].as_u64().expect("the expiry is forwarded");
    assert!((1..=600).contains(&expiry), "the remaining expiry is forwarded, got {expiry}");
    broker.stop().await;
}

/// The non-matching topics are published first, so a wrong delivery would arrive before the expected ones.
#[tokio::test]
async fn wildcards_match_single_and_multiple_levels() {
    let broker = TestBroker::start().await;
    let events = Paho::tcp(broker.mqtt)
        .sub("sensors/+/temperature", 1)
        .sub("alerts/#", 1)
        .publish("sensors/dev-1/humidity", 1, false, "no: other metric")
        .publish("sensors/dev-1/x/temperature", 1, false, "no: two levels")
        .publish("alert", 1, false, "no: other topic")
        .publish("sensors/dev-1/temperature", 1, false, "yes: plus")
        .publish("alerts", 1, false, "yes: hash matches the parent")
        .publish("alerts/dev-1/high", 1, false, "yes: hash")
        .expect(3)
        .run()
        .await;
    let payloads: BTreeSet<_> = events.payloads().into_iter().collect();
    let expected: BTreeSet<_> =
        ["yes: plus", "yes: hash matches the parent", "yes: hash"].into_iter().map(str::to_owned).collect();
    assert_eq!(payloads, expected);
    broker.stop().await;
}

#[tokio::test]
async fn shared_subscription_splits_messages_between_members() {
    let broker = TestBroker::start().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut readers = Vec::new();
    for member in 0..2 {
        let mut process =
            Paho::tcp(broker.mqtt).client_id(&format!("member-{member}")).sub("$share/ingest/jobs/#", 1).hold().spawn();
        process.wait_for("ready").await;
        let tx = tx.clone();
        // Each member is read on its own task; dropping the task kills the client.
        readers.push(tokio::spawn(async move {
            loop {
                let message = process.wait_for("message").await;
                let payload = message["payload"].as_str().unwrap_or_default().to_owned();
                if tx.send((member, payload)).is_err() {
                    return;
                }
            }
        }));
    }

    let total = 20;
    let mut publisher = Paho::tcp(broker.mqtt).v3();
    for n in 0..total {
        publisher = publisher.publish(&format!("jobs/{n}"), 1, false, &n.to_string());
    }
    publisher.run().await;

    let mut received = [BTreeSet::new(), BTreeSet::new()];
    while received[0].len() + received[1].len() < total {
        let (member, payload) = tokio::time::timeout(HANG_GUARD, rx.recv())
            .await
            .expect("the members receive all messages")
            .expect("a member reader is running");
        assert!(received[member].insert(payload.clone()), "member {member} got {payload} twice");
    }
    for reader in readers {
        reader.abort();
    }
    assert!(!received[0].is_empty() && !received[1].is_empty(), "both members get a share: {received:?}");
    assert!(received[0].is_disjoint(&received[1]), "each message goes to one member only: {received:?}");
    broker.stop().await;
}

#[tokio::test]
async fn sys_topics_report_broker_events() {
    let broker = TestBroker::start().await;
    let mut watcher = Paho::tcp(broker.mqtt).sub("$SYS/#", 0).hold().spawn();
    watcher.wait_for("ready").await;
    // Like Mosquitto, the broker keeps retained `$SYS/broker/...` values, which a new subscriber gets at once.
    mosquitto_pub(broker.mqtt, &["-i", "sys-trigger", "-t", "some/topic", "-m", "x"]).await;
    let message = watcher.wait_for("message").await;
    let topic = message["topic"].as_str().unwrap_or_default();
    assert!(topic.starts_with("$SYS/broker"), "a $SYS message arrived: {message}");
    watcher.kill().await;
    broker.stop().await;
}
