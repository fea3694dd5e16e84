//! Publish/subscribe behaviour: retained messages, QoS, properties, wildcards, shared subscriptions, `$SYS`.

use crate::support::{Paho, TestBroker, mosquitto_pub, mosquitto_sub};

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
