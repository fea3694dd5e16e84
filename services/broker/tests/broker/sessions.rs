//! Sessions and connections: offline queues of persistent sessions, v5 session expiry,
//! Last Will and Testament, and a client reconnecting at once under the same client id.

use std::net::SocketAddr;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, Incoming, MqttOptions, Outgoing};

use crate::support::{HANG_GUARD, Paho, TestBroker, mosquitto_pub, mosquitto_sub};

/// A persistent client subscribes, goes away, misses three QoS 1 messages and gets them on its return.
async fn offline_queue_is_delivered_on_reconnect(broker: &TestBroker, client: impl Fn() -> Paho) {
    let first = client().sub("queue/offline", 1).run().await;
    assert_eq!(first.connack_reason(), 0);

    for n in 1..=3 {
        mosquitto_pub(broker.mqtt, &["-q", "1", "-t", "queue/offline", "-m", &format!("m{n}")]).await;
    }

    let second = client().expect(3).run().await;
    assert!(second.session_present(), "the broker kept the session");
    assert_eq!(second.payloads(), ["m1", "m2", "m3"]);
    assert!(second.all("message").iter().all(|message| message["qos"] == 1));
}

#[tokio::test]
async fn persistent_session_keeps_an_offline_queue_v311() {
    let broker = TestBroker::start().await;
    offline_queue_is_delivered_on_reconnect(&broker, || {
        Paho::tcp(broker.mqtt).v3().client_id("offline-v311").persistent()
    })
    .await;
    broker.stop().await;
}

#[tokio::test]
async fn persistent_session_keeps_an_offline_queue_v5() {
    let broker = TestBroker::start().await;
    offline_queue_is_delivered_on_reconnect(&broker, || {
        Paho::tcp(broker.mqtt).client_id("offline-v5").persistent().session_expiry(300)
    })
    .await;
    broker.stop().await;
}

/// In MQTT 5 a session expiry interval of 0 (the default) ends the session with the connection,
/// even when clean start is off.
#[tokio::test]
async fn v5_session_with_expiry_zero_ends_with_the_connection() {
    let broker = TestBroker::start().await;
    let client = || Paho::tcp(broker.mqtt).client_id("expiry-zero").persistent();
    client().session_expiry(0).sub("queue/expiry", 1).run().await;
    mosquitto_pub(broker.mqtt, &["-q", "1", "-t", "queue/expiry", "-m", "lost"]).await;
    let again = client().session_expiry(300).run().await;
    assert!(!again.session_present(), "a session with expiry 0 is not resumed");
    broker.stop().await;
}

#[tokio::test]
async fn last_will_is_published_when_a_client_dies_v311_retained() {
    let broker = TestBroker::start().await;
    let mut device = Paho::tcp(broker.mqtt)
        .v3()
        .client_id("dev-will")
        .will("devices/dev-will/status", 1, true, "offline")
        .publish("devices/dev-will/status", 1, true, "online")
        .hold()
        .spawn();
    device.wait_for("received_all").await;
    let mut watcher = Paho::tcp(broker.mqtt).sub("devices/+/status", 1).hold().spawn();
    watcher.wait_for("ready").await;

    // A killed process leaves its socket to the kernel, which closes it without DISCONNECT.
    device.kill().await;
    // The watcher first gets the retained "online", then the will.
    while watcher.wait_for("message").await["payload"] != "offline" {}
    watcher.kill().await;

    let retained = mosquitto_sub(broker.mqtt, &["-C", "1", "-W", "20", "-t", "devices/dev-will/status"]).await;
    assert_eq!(retained, ["offline"], "the will replaced the retained status");
    broker.stop().await;
}

#[tokio::test]
async fn last_will_reaches_a_subscriber_when_a_v5_client_drops_its_socket() {
    let broker = TestBroker::start().await;
    let mut watcher = Paho::tcp(broker.mqtt).sub("wills/#", 1).hold().spawn();
    watcher.wait_for("ready").await;

    let dropped = Paho::tcp(broker.mqtt).client_id("dropper").will("wills/dropper", 1, false, "gone").drop_connection();
    dropped.run().await;

    let will = watcher.wait_for("message").await;
    assert_eq!(will["topic"], "wills/dropper");
    assert_eq!(will["payload"], "gone");
    watcher.kill().await;
    broker.stop().await;
}

/// A clean DISCONNECT discards the will: the watcher's first message is the marker sent afterwards.
#[tokio::test]
async fn last_will_is_not_published_after_a_clean_disconnect() {
    let broker = TestBroker::start().await;
    let mut watcher = Paho::tcp(broker.mqtt).sub("wills/#", 1).hold().spawn();
    watcher.wait_for("ready").await;

    Paho::tcp(broker.mqtt).v3().client_id("polite").will("wills/polite", 1, false, "gone").run().await;
    mosquitto_pub(broker.mqtt, &["-q", "1", "-t", "wills/marker", "-m", "marker"]).await;

    let first = watcher.wait_for("message").await;
    assert_eq!(first["topic"], "wills/marker", "no will after DISCONNECT");
    watcher.kill().await;
    broker.stop().await;
}

/// rmqtt 0.24, the engine before ours, refused about one reconnect in ten here with "server unavailable".
#[tokio::test]
async fn immediate_reconnect_with_the_same_client_id_is_accepted() {
    let broker = TestBroker::start().await;
    for clean in [true, false] {
        for round in 0..100 {
            for connection in ["first", "second"] {
                let outcome = tokio::time::timeout(HANG_GUARD, connect_and_disconnect(broker.mqtt, clean)).await;
                let outcome = outcome.expect("connect and disconnect finish");
                assert_eq!(outcome, Ok(()), "clean session {clean}, round {round}, {connection} connection");
            }
        }
    }
    broker.stop().await;
}

async fn connect_and_disconnect(addr: SocketAddr, clean: bool) -> Result<(), String> {
    let mut options = MqttOptions::new("same-id", addr.ip().to_string(), addr.port());
    options.set_clean_session(clean);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => break,
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => return Err(format!("refused: {:?}", ack.code)),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    client.disconnect().await.map_err(|e| e.to_string())?;
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}
