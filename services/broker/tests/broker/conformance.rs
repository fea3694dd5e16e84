//! Conformance: each behaviour the Eclipse Paho interoperability suites check (MQTT 3.1.1 and 5), as a scenario
//! of our own (`tests/clients/conformance.py`: Eclipse Paho, plus a raw client where a check needs the wire) run
//! against our broker.
//!
//! Broker configuration the scenarios need (the same as `scripts/conformance-mosquitto.sh` gives Mosquitto):
//! - `subscribe_failure`: an authorizer that refuses subscriptions to `test/nosubscribe` ([`DenyNoSubscribe`]);
//! - `server_keep_alive`: [`Config::server_keep_alive`] of [`SERVER_KEEP_ALIVE`], shorter than the client's 60 s;
//! - `topic_alias_*`: [`Config::topic_alias_maximum`] of [`TOPIC_ALIAS_MAXIMUM`];
//! - everything else: the default test configuration (`support::test_config`).
//!
//! Six of them failed on rmqtt 0.24, the engine before ours: redelivery on reconnect (both versions: reverse order),
//! topic aliases both ways, server keep alive, and maximum packet size.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ferrite_broker::{AllowAll, AuthDecision, Authorizer, BoxFuture, Config, Identity};
use serde_json::Value;
use tokio::process::Command;

use crate::support::{TestBroker, clients_dir, missing};

/// The whole run of one scenario: a guard against hangs (each of its steps has 20 s, a few wait out a keep alive).
const SCENARIO_GUARD: Duration = Duration::from_secs(240);
/// The Server Keep Alive the `server_keep_alive` scenario is run with: short, so the scenario is quick.
const SERVER_KEEP_ALIVE: Duration = Duration::from_secs(2);
/// The Topic Alias Maximum the topic alias scenarios are run with.
const TOPIC_ALIAS_MAXIMUM: u16 = 10;
/// The filter [`DenyNoSubscribe`] refuses.
const DENIED_FILTER: &str = "test/nosubscribe";

#[derive(Debug, Clone, Copy)]
enum Version {
    V311,
    V5,
}

impl Version {
    fn arg(self) -> &'static str {
        match self {
            Version::V311 => "3",
            Version::V5 => "5",
        }
    }
}

/// Everything a passing scenario reported, one JSON object per step.
struct Report(Vec<Value>);

impl Report {
    fn event(&self, name: &str) -> &Value {
        self.0
            .iter()
            .find(|event| event["event"] == name)
            .unwrap_or_else(|| panic!("no {name:?} event in {:#?}", self.0))
    }
}

/// Runs one scenario against `addr` and fails the test with the scenario's reason unless it passed.
async fn scenario(addr: SocketAddr, version: Version, name: &str, extra: &[&str]) -> Report {
    let mut command = Command::new("python3");
    command
        .arg(clients_dir().join("conformance.py"))
        .args(["--host", &addr.ip().to_string(), "--port", &addr.port().to_string(), "--version", version.arg(), name])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let output = match command.spawn() {
        Ok(child) => tokio::time::timeout(SCENARIO_GUARD, child.wait_with_output())
            .await
            .unwrap_or_else(|_| {
                panic!("scenario {name} (MQTT {}) still running after {SCENARIO_GUARD:?}", version.arg())
            })
            .expect("the scenario's output can be read"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            missing("python3", "install Python 3, then pip install paho-mqtt")
        }
        Err(e) => panic!("cannot start the conformance script: {e}"),
    };
    if output.status.code() == Some(3) {
        missing("paho-mqtt", "pip install paho-mqtt");
    }
    let events: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("the script printed {line:?}: {e}")))
        .collect();
    if let Some(failure) = events.iter().find(|event| event["event"] == "fail") {
        panic!("{name} (MQTT {}) failed: {}\nsteps: {events:#?}", version.arg(), failure["reason"]);
    }
    assert!(output.status.success(), "{name} (MQTT {}) exited with {}: {events:#?}", version.arg(), output.status);
    assert!(events.iter().any(|event| event["event"] == "pass"), "{name} reported no verdict: {events:#?}");
    // Shown with --nocapture: what the broker did (e.g. how long a silent client lived), not only that it passed.
    for event in &events {
        println!("{name} (MQTT {}): {event}", version.arg());
    }
    Report(events)
}

/// Runs a scenario on a broker with the default test configuration.
async fn on_default_broker(version: Version, name: &str) -> Report {
    on_broker(Arc::new(AllowAll), |_| {}, version, name).await
}

/// `retained` checks that a subscriber arriving right after the publisher's acknowledgement sees the retained value
/// (and, after an empty retained publish, none): the broker keeps a retained value before it acknowledges it.
async fn retained(version: Version) {
    let broker = TestBroker::start().await;
    scenario(broker.mqtt, version, "retained", &[]).await;
    broker.stop().await;
}

async fn on_broker(
    authorizer: Arc<dyn Authorizer>,
    adjust: impl FnOnce(&mut Config),
    version: Version,
    name: &str,
) -> Report {
    let broker = TestBroker::start_with(authorizer, adjust).await;
    let report = scenario(broker.mqtt, version, name, &[]).await;
    broker.stop().await;
    report
}

/// Allows everything except subscribing to [`DENIED_FILTER`]: the configuration of `subscribe_failure`.
struct DenyNoSubscribe;

impl Authorizer for DenyNoSubscribe {
    fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
        remote: SocketAddr,
    ) -> BoxFuture<'_, AuthDecision> {
        AllowAll.authenticate(client_id, username, password, remote)
    }

    fn may_publish(&self, _identity: &Identity, _topic: &str) -> bool {
        true
    }

    fn may_subscribe(&self, _identity: &Identity, filter: &str) -> bool {
        filter != DENIED_FILTER
    }
}

async fn subscribe_failure(version: Version) {
    on_broker(Arc::new(DenyNoSubscribe), |_| {}, version, "subscribe_failure").await;
}

fn with_topic_aliases(config: &mut Config) {
    config.topic_alias_maximum = TOPIC_ALIAS_MAXIMUM;
}

// ---- MQTT 3.1.1 ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn retained_v311() {
    retained(Version::V311).await;
}

#[tokio::test]
async fn will_v311() {
    on_default_broker(Version::V311, "will").await;
}

#[tokio::test]
async fn zero_length_clientid_v311() {
    on_default_broker(Version::V311, "zero_length_clientid").await;
}

#[tokio::test]
async fn offline_queueing_v311() {
    on_default_broker(Version::V311, "offline_queueing").await;
}

#[tokio::test]
async fn overlapping_subscriptions_v311() {
    on_default_broker(Version::V311, "overlapping_subscriptions").await;
}

#[tokio::test]
async fn keepalive_v311() {
    on_default_broker(Version::V311, "keepalive").await;
}

#[tokio::test]
async fn redelivery_on_reconnect_v311() {
    on_default_broker(Version::V311, "redelivery_on_reconnect").await;
}

#[tokio::test]
async fn subscribe_failure_v311() {
    subscribe_failure(Version::V311).await;
}

// ---- MQTT 5: the 3.1.1 behaviours again ------------------------------------------------------------------------

#[tokio::test]
async fn retained_v5() {
    retained(Version::V5).await;
}

#[tokio::test]
async fn will_v5() {
    on_default_broker(Version::V5, "will").await;
}

#[tokio::test]
async fn zero_length_clientid_v5() {
    on_default_broker(Version::V5, "zero_length_clientid").await;
}

#[tokio::test]
async fn offline_queueing_v5() {
    on_default_broker(Version::V5, "offline_queueing").await;
}

#[tokio::test]
async fn overlapping_subscriptions_v5() {
    on_default_broker(Version::V5, "overlapping_subscriptions").await;
}

#[tokio::test]
async fn keepalive_v5() {
    on_default_broker(Version::V5, "keepalive").await;
}

#[tokio::test]
async fn redelivery_on_reconnect_v5() {
    on_default_broker(Version::V5, "redelivery_on_reconnect").await;
}

#[tokio::test]
async fn subscribe_failure_v5() {
    subscribe_failure(Version::V5).await;
}

// ---- MQTT 5 only -----------------------------------------------------------------------------------------------

#[tokio::test]
async fn topic_alias_client_v5() {
    let report = on_broker(Arc::new(AllowAll), with_topic_aliases, Version::V5, "topic_alias_client").await;
    assert_eq!(
        report.event("broker_topic_alias_maximum")["maximum"],
        TOPIC_ALIAS_MAXIMUM,
        "CONNACK Topic Alias Maximum"
    );
}

#[tokio::test]
async fn topic_alias_server_v5() {
    on_broker(Arc::new(AllowAll), with_topic_aliases, Version::V5, "topic_alias_server").await;
}

#[tokio::test]
async fn server_keep_alive_v5() {
    let report = on_broker(
        Arc::new(AllowAll),
        |config| config.server_keep_alive = Some(SERVER_KEEP_ALIVE),
        Version::V5,
        "server_keep_alive",
    )
    .await;
    assert_eq!(report.event("server_keep_alive")["seconds"], SERVER_KEEP_ALIVE.as_secs(), "CONNACK Server Keep Alive");
}

#[tokio::test]
async fn flow_control_v5() {
    on_default_broker(Version::V5, "flow_control").await;
}

#[tokio::test]
async fn will_delay_v5() {
    on_default_broker(Version::V5, "will_delay").await;
}

#[tokio::test]
async fn shared_subscriptions_v5() {
    on_default_broker(Version::V5, "shared_subscriptions").await;
}

#[tokio::test]
async fn user_properties_v5() {
    on_default_broker(Version::V5, "user_properties").await;
}

#[tokio::test]
async fn request_response_v5() {
    on_default_broker(Version::V5, "request_response").await;
}

#[tokio::test]
async fn payload_format_v5() {
    on_default_broker(Version::V5, "payload_format").await;
}

#[tokio::test]
async fn subscription_identifiers_v5() {
    on_default_broker(Version::V5, "subscription_identifiers").await;
}

#[tokio::test]
async fn session_expiry_v5() {
    on_default_broker(Version::V5, "session_expiry").await;
}

#[tokio::test]
async fn maximum_packet_size_v5() {
    let report = on_default_broker(Version::V5, "maximum_packet_size").await;
    assert_eq!(
        report.event("broker_maximum_packet_size")["bytes"],
        ferrite_core::limits::MAX_PACKET_SIZE,
        "CONNACK Maximum Packet Size"
    );
}
