//! [`LiveFeed`]: live readings per device over one MQTT session, shared by every stream.
//!
//! The first stream of a device subscribes `sensors/{id}/+` and `sensors/{id}` at the broker; later streams of the
//! same device share that subscription (counted), and the last one to end unsubscribes. Payloads are parsed by
//! `ferrite_core`, once per message, and fanned out to the device's streams through a `tokio::sync::broadcast`
//! channel: a stream that falls behind loses the oldest readings (counted), never delays the others.
//!
//! Subscriptions do not ask for retain-as-published, so the broker marks only the retained readings it replays on
//! subscribing as retained; those are skipped, since a stream carries live readings only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use ferrite_core::{DeviceId, Reading, Topic, parse_readings};
use ferrite_mqtt::{BrokerUrl, Event, QoS, Session, SessionConfig};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// Readings buffered per device for its slowest stream before that stream starts losing the oldest ones.
pub const STREAM_BUFFER: usize = 1024;

/// The largest MQTT packet the feed accepts; bigger ones are dropped by the broker for us (rumqttc would otherwise
/// drop the whole connection on one). The platform's one limit.
const MAX_MQTT_PACKET: u32 = ferrite_core::limits::MAX_RECEIVED_PACKET_SIZE;

/// How long closing waits for the broker (the feed publishes nothing, so there is nothing to drain).
const CLOSE_DRAIN: Duration = Duration::from_millis(200);

/// How the feed reaches the broker.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub broker: BrokerUrl,
    /// A service account allowed to subscribe to `sensors/#` (e.g. `service:gateway`).
    pub credentials: Option<(String, String)>,
    pub client_id: String,
}

impl LiveConfig {
    /// A random client id, so that several registries can run against one broker.
    pub fn new(broker: BrokerUrl, credentials: Option<(String, String)>) -> Self {
        LiveConfig { broker, credentials, client_id: format!("ferrite-query-{:08x}", rand_u32()) }
    }
}

fn rand_u32() -> u32 {
    // The nanoseconds of now and the process id are unique enough for a client id; no RNG crate needed.
    let nanos = Utc::now().timestamp_subsec_nanos();
    nanos ^ std::process::id().rotate_left(16)
}

/// The live feed: one MQTT session, subscriptions counted per device, fan-out per device.
#[derive(Clone)]
pub struct LiveFeed {
    shared: Arc<Shared>,
}

struct Shared {
    session: Session,
    devices: Mutex<HashMap<String, DeviceChannel>>,
    shutdown: CancellationToken,
}

struct DeviceChannel {
    sender: broadcast::Sender<Arc<Reading>>,
    streams: usize,
}

/// One stream's share of a device's readings; dropping it ends the share (and the subscription with the last one).
pub struct LiveSubscription {
    pub readings: broadcast::Receiver<Arc<Reading>>,
    /// Cancelled when the feed shuts down: the stream should end.
    pub closed: CancellationToken,
    /// Holds the device's subscription: keep it as long as the stream reads `readings`.
    pub lease: Lease,
}

/// A stream's claim on its device's broker subscription; the last one dropped unsubscribes.
pub struct Lease {
    shared: Arc<Shared>,
    device: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut devices = self.shared.devices();
        let Some(channel) = devices.get_mut(&self.device) else { return };
        channel.streams -= 1;
        if channel.streams == 0 {
            devices.remove(&self.device);
            for filter in filters(&self.device) {
                // A stopped session has no subscriptions left to remove.
                let _ = self.shared.session.unsubscribe(filter);
            }
            metrics::gauge!("ferrite_query_live_devices").set(devices.len() as f64);
        }
    }
}

/// The broker subscriptions that carry a device's readings.
fn filters(device: &str) -> [String; 2] {
    [format!("sensors/{device}/+"), format!("sensors/{device}")]
}

impl LiveFeed {
    /// Starts the MQTT session (it connects and reconnects in the background) and the task that routes its messages.
    /// The feed stops, and every stream ends, when `shutdown` is cancelled.
    pub fn start(config: LiveConfig, shutdown: CancellationToken) -> LiveFeed {
        let mut session_config = SessionConfig::new(config.broker, config.client_id);
        session_config.credentials = config.credentials;
        session_config.max_packet_size = Some(MAX_MQTT_PACKET);
        let (session, events) = Session::start(session_config);
        let shared = Arc::new(Shared { session, devices: Mutex::new(HashMap::new()), shutdown });
        tokio::spawn(pump(events, shared.clone()));
        LiveFeed { shared }
    }

    /// A share of `device`'s live readings; the first share subscribes at the broker.
    pub fn subscribe(&self, device: &DeviceId) -> LiveSubscription {
        let mut devices = self.shared.devices();
        let channel = devices.entry(device.as_str().to_owned()).or_insert_with(|| {
            for filter in filters(device.as_str()) {
                if self.shared.session.subscribe(filter, QoS::AtMostOnce).is_err() {
                    tracing::warn!(device_id = %device, "the mqtt session has stopped; cannot subscribe");
                }
            }
            DeviceChannel { sender: broadcast::channel(STREAM_BUFFER).0, streams: 0 }
        });
        channel.streams += 1;
        let readings = channel.sender.subscribe();
        metrics::gauge!("ferrite_query_live_devices").set(devices.len() as f64);
        drop(devices);
        LiveSubscription {
            readings,
            closed: self.shared.shutdown.clone(),
            lease: Lease { shared: self.shared.clone(), device: device.as_str().to_owned() },
        }
    }

    /// The devices with at least one live stream, sorted; for diagnostics and tests.
    pub fn streamed_devices(&self) -> Vec<String> {
        let mut devices: Vec<String> = self.shared.devices().keys().cloned().collect();
        devices.sort();
        devices
    }
}

impl Shared {
    fn devices(&self) -> MutexGuard<'_, HashMap<String, DeviceChannel>> {
        // The map stays consistent even if a holder panicked: every change to it is a single insert or remove.
        self.devices.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Routes the session's messages to the devices' channels until shutdown, then disconnects.
async fn pump(mut events: mpsc::Receiver<Event>, shared: Arc<Shared>) {
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = shared.shutdown.cancelled() => break,
        };
        let Some(event) = event else { break };
        match event {
            Event::Connected { .. } => tracing::info!("live feed connected to the broker"),
            Event::Disconnected { error } => tracing::debug!(%error, "live feed lost the broker; reconnecting"),
            Event::Subscribed { refused } if refused > 0 => {
                tracing::warn!(
                    refused,
                    "the broker refused a live-feed subscription (does the account may read sensors/#?)"
                );
            }
            Event::Subscribed { .. } => {}
            Event::Message(message) => {
                if message.publish.retain {
                    continue;
                }
                let topic = message.topic();
                let parsed = Topic::parse(&topic);
                let device = match &parsed {
                    Topic::Reading { device, .. } | Topic::Batch { device } => device.as_str().to_owned(),
                    _ => continue,
                };
                let readings = match parse_readings(&parsed, message.payload(), message.content_type(), Utc::now()) {
                    Ok(readings) => readings,
                    // The ingester keeps it as a dead letter; a live view just has nothing to show.
                    Err(_) => continue,
                };
                let devices = shared.devices();
                if let Some(channel) = devices.get(&device) {
                    for reading in readings {
                        // No receiver left means the last stream is ending; its lease unsubscribes.
                        let _ = channel.sender.send(Arc::new(reading));
                    }
                }
            }
        }
    }
    // Ending the channels ends every stream that still reads them.
    shared.devices().clear();
    shared.session.close(CLOSE_DRAIN).await;
}
