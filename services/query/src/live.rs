//! [`LiveFeed`]: live readings per device over one MQTT session, shared by every stream.
//!
//! The session is fanned out by the shared [`Fanout`] (also behind the gateway's browsers): the first stream of a
//! device subscribes `sensors/{id}/+` and `sensors/{id}` at the broker, later streams of the same device share that
//! subscription (counted), and the last one to end unsubscribes. A stream starts only once the broker has granted
//! its subscriptions (SUBACK), so a reading published after it opened reaches it. Payloads are parsed by
//! `ferrite_core`, once per message, and queued for each of the device's streams in a bounded queue: a stream that
//! falls behind loses the newest readings while its queue is full (counted in `ferrite_query_live_dropped_total`),
//! never delays the others.
//!
//! Subscriptions do not ask for retain-as-published, so the broker marks only the retained readings it replays on
//! subscribing as retained; those are skipped, since a stream carries live readings only.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::Utc;
use ferrite_core::{DeviceId, Reading, Topic, parse_readings};
use ferrite_mqtt::fanout::ConsumerId;
use ferrite_mqtt::{BrokerUrl, Event, Fanout, Filter, QoS, Queue, Session, SessionConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::QueryError;

/// Readings queued per stream before that stream starts losing readings.
pub const STREAM_BUFFER: usize = 1024;

/// How long opening a stream waits for the broker to grant its subscriptions.
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest MQTT packet the feed accepts; bigger ones are dropped by the broker for us (rumqttc would otherwise
/// drop the whole connection on one). The platform's one limit.
const MAX_MQTT_PACKET: u32 = ferrite_core::limits::MAX_RECEIVED_PACKET_SIZE;

/// How long closing waits for the broker (the feed publishes nothing, so there is nothing to drain).
const CLOSE_DRAIN: Duration = Duration::from_millis(200);

/// A stream holds exactly its device's two filters.
const FILTERS_PER_STREAM: usize = 2;

/// How the feed reaches the broker.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub broker: BrokerUrl,
    /// A service account allowed to subscribe to `sensors/#` (e.g. `service:gateway`); its `Debug` hides the password.
    pub credentials: Option<ferrite_core::Credentials>,
    pub client_id: String,
}

impl LiveConfig {
    /// A random client id, so that several registries can run against one broker.
    pub fn new(broker: BrokerUrl, credentials: Option<(String, String)>) -> Self {
        LiveConfig {
            broker,
            credentials: credentials.map(ferrite_core::Credentials::from),
            client_id: format!("ferrite-query-{:08x}", rand_u32()),
        }
    }
}

fn rand_u32() -> u32 {
    // The nanoseconds of now and the process id are unique enough for a client id; no RNG crate needed.
    let nanos = Utc::now().timestamp_subsec_nanos();
    nanos ^ std::process::id().rotate_left(16)
}

/// The live feed: one MQTT session fanned out to the streams, subscriptions counted per device.
#[derive(Clone)]
pub struct LiveFeed {
    shared: Arc<Shared>,
}

struct Shared {
    session: Session,
    fanout: Mutex<Fanout<Arc<Reading>>>,
    shutdown: CancellationToken,
}

/// One stream's share of a device's readings; dropping it ends the share (and the subscription with the last one).
pub struct LiveSubscription {
    /// The stream's readings, oldest first; see [`Queue::take`] and [`Queue::ready`].
    pub readings: Arc<Queue<Arc<Reading>>>,
    /// Cancelled when the feed shuts down: the stream should end.
    pub closed: CancellationToken,
    /// Holds the device's subscription: keep it as long as the stream reads `readings`.
    pub lease: Lease,
}

/// A stream's claim on its device's broker subscription; the last one dropped unsubscribes.
pub struct Lease {
    shared: Arc<Shared>,
    consumer: ConsumerId,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut fanout = self.shared.fanout();
        if let Some(queue) = fanout.queue(self.consumer) {
            queue.close();
        }
        fanout.unregister(self.consumer);
        set_devices_gauge(&fanout);
    }
}

/// The broker subscriptions that carry a device's readings.
fn filters(device: &str) -> [String; FILTERS_PER_STREAM] {
    [format!("sensors/{device}/+"), format!("sensors/{device}")]
}

/// The broker subscription for a stream's filter: live readings at most once, as a dashboard needs them.
fn subscription(filter: &str) -> Filter {
    Filter::new(filter, QoS::AtMostOnce)
}

fn set_devices_gauge(fanout: &Fanout<Arc<Reading>>) {
    metrics::gauge!("ferrite_query_live_devices").set((fanout.subscription_count() / FILTERS_PER_STREAM) as f64);
}

impl LiveFeed {
    /// Starts the MQTT session (it connects and reconnects in the background) and the task that routes its messages.
    /// The feed stops, and every stream ends, when `shutdown` is cancelled.
    pub fn start(config: LiveConfig, shutdown: CancellationToken) -> LiveFeed {
        let mut session_config = SessionConfig::new(config.broker, config.client_id);
        session_config.credentials = config.credentials.map(ferrite_core::Credentials::into_pair);
        session_config.max_packet_size = Some(MAX_MQTT_PACKET);
        let (session, events) = Session::start(session_config);
        let fanout = Mutex::new(Fanout::new(session.clone(), FILTERS_PER_STREAM, subscription));
        let shared = Arc::new(Shared { session, fanout, shutdown });
        tokio::spawn(pump(events, shared.clone()));
        LiveFeed { shared }
    }

    /// A share of `device`'s live readings, once the broker has granted the device's subscriptions (the first share
    /// subscribes at the broker). Fails when the broker refuses them or does not answer within [`SUBSCRIBE_TIMEOUT`].
    pub async fn subscribe(&self, device: &DeviceId) -> Result<LiveSubscription, QueryError> {
        let readings = Arc::new(Queue::new(STREAM_BUFFER));
        let filters = filters(device.as_str());
        let (lease, waiting) = {
            let mut fanout = self.shared.fanout();
            let consumer = fanout.register(readings.clone());
            let waiting =
                fanout.subscribe(consumer, &filters).map_err(|error| QueryError::Internal(error.to_string()))?;
            set_devices_gauge(&fanout);
            (Lease { shared: self.shared.clone(), consumer }, waiting)
        };
        // The lease is held while waiting: a stream given up meanwhile releases the subscription.
        let answers = futures::future::join_all(waiting.into_iter().map(|(_, grant)| grant));
        let refused = match tokio::time::timeout(SUBSCRIBE_TIMEOUT, answers).await {
            Ok(answers) => answers.into_iter().find_map(Result::err),
            Err(_) => Some(format!("the broker did not answer within {}s", SUBSCRIBE_TIMEOUT.as_secs())),
        };
        if let Some(reason) = refused {
            tracing::warn!(device_id = %device, %reason, "cannot subscribe to a device's readings (may the account read sensors/#?)");
            return Err(QueryError::LiveRefused(reason));
        }
        self.shared.fanout().activate(lease.consumer, &filters);
        Ok(LiveSubscription { readings, closed: self.shared.shutdown.clone(), lease })
    }

    /// The devices with at least one live stream, sorted; for diagnostics and tests.
    pub fn streamed_devices(&self) -> Vec<String> {
        let subscriptions = self.shared.fanout().subscriptions();
        subscriptions
            .into_iter()
            .filter_map(|(filter, _)| Some(filter.strip_prefix("sensors/")?.strip_suffix("/+")?.to_owned()))
            .collect()
    }
}

impl Shared {
    fn fanout(&self) -> MutexGuard<'_, Fanout<Arc<Reading>>> {
        // The fan-out stays consistent even if a holder panicked: nothing in it panics halfway through a change.
        self.fanout.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Routes the session's messages to the streams until shutdown, then disconnects.
async fn pump(mut events: mpsc::Receiver<Event>, shared: Arc<Shared>) {
    let dropped = metrics::counter!("ferrite_query_live_dropped_total");
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
                if !shared.fanout().covers(&topic) {
                    continue;
                }
                let parsed = Topic::parse(&topic);
                if !matches!(parsed, Topic::Reading { .. } | Topic::Batch { .. }) {
                    continue;
                }
                let readings = match parse_readings(&parsed, message.payload(), message.content_type(), Utc::now()) {
                    Ok(readings) => readings,
                    // The ingester keeps it as a dead letter; a live view just has nothing to show.
                    Err(_) => continue,
                };
                let readings: Vec<Arc<Reading>> = readings.into_iter().map(Arc::new).collect();
                let delivered = shared.fanout().deliver(&topic, &readings);
                if delivered.dropped > 0 {
                    dropped.increment(delivered.dropped);
                }
            }
        }
    }
    shared.session.close(CLOSE_DRAIN).await;
}
