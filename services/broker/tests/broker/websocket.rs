//! MQTT over WebSocket on `/mqtt`, for MQTT 3.1.1 and 5, and its traffic meeting TCP clients.

use crate::support::{Paho, TestBroker, mosquitto_pub};

#[tokio::test]
async fn websocket_serves_mqtt_311_and_5_on_the_mqtt_path() {
    let broker = TestBroker::start().await;
    for (version, paho) in [("5", Paho::ws(broker.ws)), ("3.1.1", Paho::ws(broker.ws).v3())] {
        let events = paho.sub("browser/#", 2).publish("browser/hello", 2, false, version).expect(1).run().await;
        assert_eq!(events.connack_reason(), 0, "MQTT {version} over WebSocket connects");
        let message = events.first("message");
        assert_eq!(message["payload"], version);
        assert_eq!(message["qos"], 2, "MQTT {version} over WebSocket at QoS 2");
    }
    broker.stop().await;
}

#[tokio::test]
async fn websocket_subscribers_receive_what_tcp_clients_publish() {
    let broker = TestBroker::start().await;
    let mut browser = Paho::ws(broker.ws).sub("sensors/+/temperature", 1).hold().spawn();
    browser.wait_for("ready").await;
    mosquitto_pub(broker.mqtt, &["-q", "1", "-t", "sensors/dev-1/temperature", "-m", "21.5"]).await;
    let message = browser.wait_for("message").await;
    assert_eq!(message["topic"], "sensors/dev-1/temperature");
    assert_eq!(message["payload"], "21.5");
    browser.kill().await;
    broker.stop().await;
}
