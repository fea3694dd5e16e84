//! One simulated device: its connection, readings, commands and deliberate faults.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferrite_mqtt::{Event, LastWill, Message, PublishProperties, QoS, Session, SessionConfig};
use ferrite_telemetry::propagation;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::walk::Walk;
use crate::{Config, Stats};

/// The broker keeps a device's session (and its queued commands) this long while it is away.
const SESSION_EXPIRY_SECS: u32 = 24 * 3600;
/// How long a stopping device waits for its last readings to be acknowledged.
const DRAIN: Duration = Duration::from_secs(5);
/// Intervals' worth of readings sent at once by a burst.
const BURST_TICKS: usize = 10;

/// Why a connection ended.
enum Ending {
    Stop,
    Drop,
    Restart,
}

/// A simulated device.
pub struct Device {
    config: Arc<Config>,
    id: String,
    stats: Arc<Stats>,
    rng: fastrand::Rng,
    walks: Vec<Walk>,
    interval: Duration,
    ticks: u64,
    /// Milliseconds of the last reading, so two readings of one metric never share a timestamp
    /// (the timestamp is part of the readings' key).
    last_ts: i64,
    connected: bool,
    /// Issued by the provisioner, once, before the first connection.
    credentials: Option<(String, String)>,
}

impl Device {
    pub fn new(config: Arc<Config>, n: usize, stats: Arc<Stats>) -> Device {
        let mut rng = fastrand::Rng::new();
        let walks = Walk::standard(&mut rng);
        Device {
            id: config.device_id(n),
            interval: config.interval,
            config,
            stats,
            rng,
            walks,
            ticks: 0,
            last_ts: 0,
            connected: false,
            credentials: None,
        }
    }

    fn session_config(&self) -> SessionConfig {
        let mut config = SessionConfig::new(self.config.broker.clone(), &self.id);
        config.credentials = self.credentials.clone().or_else(|| self.config.credentials.clone());
        config.clean_start = false;
        config.session_expiry = Some(SESSION_EXPIRY_SECS);
        config.last_will = Some(LastWill::new(self.status_topic(), "offline", QoS::AtLeastOnce, true, None));
        config.subscriptions = vec![(ferrite_core::topic::build::command(&self.id), QoS::AtLeastOnce)];
        config
    }

    fn status_topic(&self) -> String {
        ferrite_core::topic::build::status(&self.id)
    }

    /// Runs the device until shutdown or until it has sent its `count` of readings.
    pub async fn run(mut self, shutdown: CancellationToken) {
        if let Some(provisioner) = self.config.provisioner.clone() {
            let mut pause = Duration::from_millis(500);
            loop {
                match provisioner.credentials(&self.id).await {
                    Ok(credentials) => {
                        self.credentials = Some(credentials);
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(device = %self.id, error = format!("{error:#}"), "cannot provision; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = shutdown.cancelled() => return,
                        }
                        pause = (pause * 2).min(Duration::from_secs(10));
                    }
                }
            }
        }
        loop {
            let (session, events) = Session::start(self.session_config());
            let ending = self.connected(&session, events, &shutdown).await;
            self.set_connected(false);
            match ending {
                Ending::Stop => {
                    // A device that shuts down on purpose says so; the Last Will is only for crashes.
                    let _ = session.publish(self.status_topic(), QoS::AtLeastOnce, true, "offline", None).await;
                    let left = session.close(DRAIN).await;
                    self.stats.unacknowledged.fetch_add(left as u64, Ordering::Relaxed);
                    self.stats.finished.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ending::Drop => {
                    session.abort();
                    self.stats.drops.fetch_add(1, Ordering::Relaxed);
                    let pause = Duration::from_millis(1000 + self.rng.u64(0..2000));
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
                Ending::Restart => {
                    let _ = session.publish(self.status_topic(), QoS::AtLeastOnce, true, "offline", None).await;
                    session.close(DRAIN).await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn set_connected(&mut self, connected: bool) {
        if connected != self.connected {
            self.connected = connected;
            if connected {
                self.stats.connected.fetch_add(1, Ordering::Relaxed);
            } else {
                self.stats.connected.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    async fn connected(
        &mut self,
        session: &Session,
        mut events: mpsc::Receiver<Event>,
        shutdown: &CancellationToken,
    ) -> Ending {
        // Start each device at a random point of its interval so a fleet does not publish in lockstep.
        let offset = self.interval.mul_f64(self.rng.f64());
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ending::Stop,
                event = events.recv() => match event {
                    Some(Event::Connected { .. }) => {
                        self.set_connected(true);
                        let _ = session.publish(self.status_topic(), QoS::AtLeastOnce, true, "online", None).await;
                    }
                    Some(Event::Disconnected { error }) => {
                        tracing::debug!(device = %self.id, %error, was_connected = self.connected, "device connection failed");
                        self.set_connected(false);
                    }
                    Some(Event::Message(message)) => {
                        let interval = self.interval;
                        if let Some(ending) = self.on_command(session, &message).await {
                            return ending;
                        }
                        if self.interval != interval {
                            ticker = tokio::time::interval(self.interval);
                            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        }
                    }
                    Some(Event::Subscribed { .. }) => {}
                    None => return Ending::Stop,
                },
                _ = ticker.tick() => {
                    if self.config.count.is_some_and(|count| self.ticks >= count) {
                        return Ending::Stop;
                    }
                    let faults = &self.config.misbehaviour;
                    if self.connected && self.rng.f64() < faults.drop_rate {
                        return Ending::Drop;
                    }
                    if self.rng.f64() < faults.bad_payload_rate {
                        let topic = ferrite_core::topic::build::reading(&self.id, "temperature");
                        let _ = session.publish(topic, self.config.qos, false, "{\"value\": \"warm\"}", None).await;
                        self.stats.bad_payloads.fetch_add(1, Ordering::Relaxed);
                    }
                    let ticks = if self.rng.f64() < faults.burst_rate { BURST_TICKS } else { 1 };
                    for _ in 0..ticks {
                        if self.config.count.is_some_and(|count| self.ticks >= count) {
                            break;
                        }
                        self.publish_readings(session).await;
                    }
                }
            }
        }
    }

    async fn publish_readings(&mut self, session: &Session) {
        let now = chrono::Utc::now().timestamp_millis();
        let ts = now.max(self.last_ts + 1);
        self.last_ts = ts;
        self.ticks += 1;
        for idx in 0..self.walks.len() {
            let value = self.walks[idx].next(&mut self.rng);
            let walk = &self.walks[idx];
            let topic = ferrite_core::topic::build::reading(&self.id, walk.metric);
            let payload = format!(r#"{{"value":{value},"ts":{ts},"unit":"{}"}}"#, walk.unit);
            // Each reading starts its own trace, carried to the ingester and the gateway in MQTT 5 user
            // properties. Without span export there is no span and no property: the load generator pays nothing.
            let span = if propagation::enabled() {
                tracing::info_span!("fleet.publish", device = %self.id, metric = walk.metric, qos = ?self.config.qos)
            } else {
                tracing::Span::none()
            };
            let properties = ferrite_mqtt::user_properties(propagation::inject_properties(&span));
            let published = session.publish(topic, self.config.qos, false, payload, properties).instrument(span);
            if published.await.is_ok() {
                self.stats.readings.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Answers a command on `commands/{id}`; returns how the connection should end, if it should.
    async fn on_command(&mut self, session: &Session, message: &Message) -> Option<Ending> {
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        let (command_id, outcome, ending) = match serde_json::from_slice::<Value>(message.payload()) {
            Ok(command) => {
                let id = command.get("id").cloned().unwrap_or(Value::Null);
                let name = command.get("name").and_then(Value::as_str).unwrap_or_default();
                let params = command.get("params").cloned().unwrap_or(Value::Null);
                let (outcome, ending) = self.execute(name, &params);
                (id, outcome, ending)
            }
            Err(error) => (Value::Null, Err(format!("command is not JSON: {error}")), None),
        };
        let response = match outcome {
            Ok(result) => json!({"id": command_id, "status": "ok", "result": result}),
            Err(message) => json!({"id": command_id, "status": "error", "result": {"message": message}}),
        };
        // MQTT 5 requesters may name their own response topic and correlation data; honour them.
        let properties = message.publish.properties.as_ref();
        let topic = properties
            .and_then(|p| p.response_topic.clone())
            .unwrap_or_else(|| ferrite_core::topic::build::command_response(&self.id));
        let reply_props = properties.and_then(|p| p.correlation_data.clone()).map(|correlation| PublishProperties {
            correlation_data: Some(correlation),
            content_type: Some("application/json".into()),
            ..PublishProperties::default()
        });
        let _ = session.publish(topic, QoS::AtLeastOnce, false, response.to_string(), reply_props).await;
        ending
    }

    fn execute(&mut self, name: &str, params: &Value) -> (Result<Value, String>, Option<Ending>) {
        match name {
            "ping" => (Ok(json!("pong")), None),
            "restart" => (Ok(json!({"restarting": true})), Some(Ending::Restart)),
            "set-interval" => match params.get("seconds").and_then(Value::as_f64) {
                Some(seconds) if (0.001..=86_400.0).contains(&seconds) => {
                    self.interval = Duration::from_secs_f64(seconds);
                    (Ok(json!({"interval": seconds})), None)
                }
                _ => (Err("set-interval needs params.seconds between 0.001 and 86400".into()), None),
            },
            "lights" => {
                let state = params.get("state").and_then(Value::as_str).unwrap_or("on");
                let brightness = params.get("brightness").and_then(Value::as_u64).unwrap_or(100).min(100);
                (Ok(json!({"state": state, "brightness": brightness})), None)
            }
            other => (Err(format!("unknown command {other:?}")), None),
        }
    }
}
