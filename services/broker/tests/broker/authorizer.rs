//! The Authorizer plumbing: refused connections get the right CONNACK code, and the identity the
//! authorizer returned is what decides publishes, subscriptions and the Last Will.

use std::net::SocketAddr;
use std::sync::Arc;

use ferrite_broker::{AuthDecision, Authorizer, BoxFuture, DenyReason, Identity, Principal};

use crate::support::{Paho, TestBroker};

/// MQTT 5 reason codes; paho reports v3.1.1 return codes converted to these as well.
const NOT_AUTHORIZED: u64 = 0x87;
const BAD_CREDENTIALS: u64 = 0x86;
/// The v3.1.1 SUBACK failure code.
const SUBACK_FAILURE_V311: u64 = 0x80;

/// A small device policy in the spirit of DESIGN.md: devices `dev-1` and `dev-2` (password `secret`)
/// may publish under their own `sensors/{id}/...` and `devices/{id}/...` and subscribe to `commands/{id}`;
/// the `platform` service may do anything; nobody else may connect.
struct DevicePolicy;

impl Authorizer for DevicePolicy {
    fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
        _remote: SocketAddr,
    ) -> BoxFuture<'_, AuthDecision> {
        let allow = |principal| AuthDecision::Allow(Identity { client_id: client_id.to_owned(), principal });
        let decision = match (username, password) {
            (Some(device @ ("dev-1" | "dev-2")), Some(b"secret")) => allow(Principal::Device(device.to_owned())),
            (Some("dev-1" | "dev-2"), _) => AuthDecision::Deny(DenyReason::BadCredentials),
            (Some("platform"), Some(b"platform-secret")) => allow(Principal::Service("platform".to_owned())),
            _ => AuthDecision::Deny(DenyReason::NotAuthorized),
        };
        Box::pin(std::future::ready(decision))
    }

    fn may_publish(&self, identity: &Identity, topic: &str) -> bool {
        match &identity.principal {
            Principal::Device(id) => {
                topic.starts_with(&format!("sensors/{id}/")) || topic.starts_with(&format!("devices/{id}/"))
            }
            Principal::Service(_) => true,
            Principal::Anonymous => false,
        }
    }

    fn may_subscribe(&self, identity: &Identity, filter: &str) -> bool {
        match &identity.principal {
            Principal::Device(id) => filter == format!("commands/{id}"),
            Principal::Service(_) => true,
            Principal::Anonymous => false,
        }
    }
}

#[tokio::test]
async fn authorizer_decides_connections_will_topics_subscriptions_and_publishes() {
    let broker = TestBroker::start_with(Arc::new(DevicePolicy), |_| {}).await;
    let device = |version_3: bool| {
        let paho = Paho::tcp(broker.mqtt);
        if version_3 { paho.v3() } else { paho }
    };

    for version_3 in [false, true] {
        let anonymous = device(version_3).run().await;
        assert_eq!(anonymous.connack_reason(), NOT_AUTHORIZED, "v3 {version_3}: anonymous");
        let wrong = device(version_3).credentials("dev-1", "guess").run().await;
        assert_eq!(wrong.connack_reason(), BAD_CREDENTIALS, "v3 {version_3}: wrong password");
        let foreign_will = device(version_3)
            .credentials("dev-1", "secret")
            .will("devices/dev-2/status", 1, true, "offline")
            .run()
            .await;
        assert_eq!(foreign_will.connack_reason(), NOT_AUTHORIZED, "v3 {version_3}: will on another device's topic");
        let own_will = device(version_3)
            .credentials("dev-1", "secret")
            .will("devices/dev-1/status", 1, true, "offline")
            .run()
            .await;
        assert_eq!(own_will.connack_reason(), 0, "v3 {version_3}: will on its own topic");

        let subscriptions = device(version_3)
            .credentials("dev-1", "secret")
            .sub("commands/dev-1", 1)
            .sub("commands/dev-2", 1)
            .run()
            .await;
        let refused = if version_3 { SUBACK_FAILURE_V311 } else { NOT_AUTHORIZED };
        assert_eq!(subscriptions.first("suback")["reasons"], serde_json::json!([1, refused]), "v3 {version_3}");
    }

    // The platform service watches all sensors; dev-1's publish under dev-2 is refused and never
    // delivered, so the first message the service sees is dev-1's own reading, sent second.
    let mut platform =
        Paho::tcp(broker.mqtt).credentials("platform", "platform-secret").sub("sensors/#", 1).hold().spawn();
    platform.wait_for("ready").await;
    let publishes = Paho::tcp(broker.mqtt)
        .credentials("dev-1", "secret")
        .publish("sensors/dev-2/temperature", 1, false, "spoofed")
        .publish("sensors/dev-1/temperature", 1, false, "21.5")
        .run()
        .await;
    let acks: Vec<_> = publishes.all("puback").iter().map(|ack| ack["reason"].clone()).collect();
    assert_eq!(acks, [serde_json::json!(NOT_AUTHORIZED), serde_json::json!(0)], "v5 PUBACK reason codes");
    let first = platform.wait_for("message").await;
    assert_eq!(first["topic"], "sensors/dev-1/temperature");
    assert_eq!(first["payload"], "21.5");
    platform.kill().await;

    broker.stop().await;
}
