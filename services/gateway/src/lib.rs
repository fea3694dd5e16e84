//! Ferrite's gateway: live MQTT traffic for browsers over WebSocket, and the dashboard that shows it.
//!
//! The gateway is one MQTT client for all browsers. Browsers speak the JSON protocol of DESIGN.md on
//! `/dashboard` (subscribe with MQTT filters, unsubscribe, publish); the gateway subscribes at the broker once
//! per distinct filter, keeps the latest retained message per topic so a new browser sees the current state
//! at once, and fans each message out in memory. Every browser has its own bounded queue: one that cannot keep
//! up loses updates for itself alone, counted, and never slows the broker connection or other browsers.
//!
//! # Layout
//! - [`Config`], [`Gateway`] (`bind`, `local_addr`, `run`), [`GatewayState`], [`GatewayError`]: this file,
//!   with the task that feeds MQTT messages to the hub.
//! - [`http`]: [`router`]: `/` (the dashboard), `/assets/...`, `/config.json` (where the REST API is, [`ApiLocation`]),
//!   `/dashboard` (the WebSocket), `/healthz`, `/metrics`.
//! - [`client`]: one browser's reader and writer tasks, generic over `Sink`/`Stream`.
//! - `hub`: broker subscriptions counted per filter, the retained cache, and the fan-out.
//! - [`protocol`]: the JSON messages, and MQTT messages rendered as frames (with `ferrite_core`'s parsers).
//! - `queue`: one browser's bounded queue of updates, filled by the hub and emptied by its writer.
//! - [`filter`]: MQTT filter validation and matching.
//! - [`policy`]: [`PublishPolicy`], who may publish from a browser (everyone, until the registry's tokens).
//! - `server`: the HTTP/1 accept loop with its bounds (header-read timeout, connection cap).
//! - `assets`: the dashboard's files (`assets/` in this crate), embedded in the binary.

mod assets;
pub mod client;
pub mod filter;
pub mod http;
mod hub;
pub mod policy;
pub mod protocol;
mod queue;
mod server;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::Utc;
use ferrite_mqtt::{BrokerUrl, Event, Session, SessionConfig};

use crate::hub::Hub;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use ferrite_core::origin::{AllowedOrigin, OriginPolicy};
pub use http::router;
pub use hub::ClientStats;
pub use policy::{AdmitFuture, AllowAll, ClientInfo, PublishPolicy};
pub use server::{HEADER_READ_TIMEOUT, HTTP_HEADROOM};

/// The dashboard's port of DESIGN.md, on loopback: like the broker, safe by default.
pub const DEFAULT_HTTP_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));

/// Frames queued for one browser before its updates are dropped.
///
/// 1,024 is about a third of a second of a 1,000-device fleet's whole traffic (three readings a second each):
/// enough to ride out a browser's garbage-collection pause or a slow render without loss, while a browser that
/// has really fallen behind loses old values instead of holding memory. Frames are shared between browsers,
/// so a queued frame costs a pointer, not a copy.
pub const DEFAULT_CLIENT_QUEUE: usize = 1024;

/// The largest MQTT packet the gateway takes, announced to the broker so that it drops larger messages for us
/// (rumqttc would otherwise drop the whole connection on one, and a retained one would do it on every reconnect).
/// The platform's one limit (every Ferrite client's default, see [`ferrite_mqtt::SessionConfig::new`]).
pub const MAX_MQTT_PACKET: u32 = ferrite_core::limits::MAX_RECEIVED_PACKET_SIZE;

/// Most filters one browser may hold at once; the dashboard needs a handful, and this bounds a runaway page.
pub const MAX_FILTERS_PER_CLIENT: usize = 256;

/// Browsers (WebSocket connections on `/dashboard`) served at once; one more is refused with 503 and counted.
/// Each costs a queue of up to [`DEFAULT_CLIENT_QUEUE`] frames (pointers) and two tasks: a thousand browsers on
/// one update is what the gateway is tested with, and the cap keeps the file descriptors they take (with
/// [`HTTP_HEADROOM`]) well under what the broker in the same process needs. `--max-browsers` / `FERRITE_MAX_BROWSERS`.
pub const DEFAULT_MAX_BROWSERS: usize = 1024;

/// How long browsers get to receive their close frames at shutdown.
const CLIENT_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How long browsers' QoS 1/2 publishes get to be acknowledged at shutdown.
const PUBLISH_DRAIN: Duration = Duration::from_secs(5);

/// How the gateway listens and reaches the broker.
#[derive(Clone)]
pub struct Config {
    /// Where the dashboard, `/dashboard`, `/healthz` and `/metrics` listen.
    pub http_addr: SocketAddr,
    pub broker: BrokerUrl,
    /// `(username, password)` for the broker; never logged.
    pub credentials: Option<(String, String)>,
    /// The MQTT client id; each gateway needs its own, or the broker disconnects one for the other.
    pub client_id: String,
    /// Frames queued per browser before its updates are dropped; see [`DEFAULT_CLIENT_QUEUE`].
    pub client_queue: usize,
    /// Who may publish from a browser; [`AllowAll`] by default.
    pub publish_policy: Arc<dyn PublishPolicy>,
    /// Origins of pages served elsewhere that may open `/dashboard` (`--allowed-origins`); see [`OriginPolicy`].
    pub allowed_origins: Vec<AllowedOrigin>,
    /// Browsers served at once; see [`DEFAULT_MAX_BROWSERS`].
    pub max_browsers: usize,
    /// Where the dashboard finds the REST API (history, commands, rules); told to the page by `/config.json`.
    /// `None`: the page shows live data only.
    pub api: Option<ApiLocation>,
}

/// Where the dashboard finds the REST API (`/api/v1/...`), which the registry serves on its own port (DESIGN.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiLocation {
    /// At this origin, `scheme://host[:port]` (`ferrite gateway --api-url`).
    Url(ApiUrl),
    /// On this port of the host the browser reached the gateway by: `ferrite up`, whose registry listens beside
    /// the gateway on loopback or on every address, so the page's own host name reaches it too.
    Port(u16),
}

/// The REST API's origin, normalised (lower case, no default port); `/api/v1/...` is under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiUrl(String);

/// Why `--api-url` is not an API origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid API URL {0:?}: expected http(s)://host[:port] of the registry's REST API, e.g. http://registry.example.com:8081"
)]
pub struct ApiUrlError(String);

impl std::str::FromStr for ApiUrl {
    type Err = ApiUrlError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let origin = trimmed.strip_suffix('/').unwrap_or(trimmed);
        match ferrite_core::origin::normalize(origin) {
            Some(origin) if origin.starts_with("http://") || origin.starts_with("https://") => Ok(ApiUrl(origin)),
            _ => Err(ApiUrlError(text.to_owned())),
        }
    }
}

impl ApiUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Config {
    /// The defaults, with a client id of its own (`ferrite-gateway-` and a random suffix), so that several
    /// gateways behind a load balancer never take over each other's session.
    pub fn new(broker: BrokerUrl) -> Config {
        Config {
            http_addr: DEFAULT_HTTP_ADDR,
            broker,
            credentials: None,
            client_id: format!("ferrite-gateway-{:08x}", fastrand::u32(..)),
            client_queue: DEFAULT_CLIENT_QUEUE,
            publish_policy: Arc::new(AllowAll),
            allowed_origins: Vec::new(),
            max_browsers: DEFAULT_MAX_BROWSERS,
            api: None,
        }
    }
}

impl fmt::Debug for Config {
    // By hand: the credentials hold a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("http_addr", &self.http_addr)
            .field("broker", &self.broker)
            .field("username", &self.credentials.as_ref().map(|(user, _)| user))
            .field("client_id", &self.client_id)
            .field("client_queue", &self.client_queue)
            .field("allowed_origins", &self.allowed_origins)
            .field("max_browsers", &self.max_browsers)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

/// What can go wrong starting or running the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid gateway configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("gateway http server failed: {0}")]
    Serve(std::io::Error),
}

/// What the routes and browser tasks share: a cheap handle.
#[derive(Clone)]
pub struct GatewayState {
    shared: Arc<Shared>,
}

struct Shared {
    hub: Mutex<Hub>,
    session: Session,
    policy: Arc<dyn PublishPolicy>,
    origins: OriginPolicy,
    /// One permit per browser served; see [`Config::max_browsers`].
    browsers: Arc<Semaphore>,
    max_browsers: usize,
    client_queue: usize,
    api: Option<ApiLocation>,
    /// Cancelled when the gateway shuts down: every browser is sent a close frame.
    closing: CancellationToken,
    /// The browser connections, to wait for them at shutdown.
    tracker: TaskTracker,
}

impl GatewayState {
    /// The hub, locked. A panic while it was held leaves nothing half-done that matters more than serving on,
    /// so a poisoned lock is taken as it is.
    pub(crate) fn hub(&self) -> MutexGuard<'_, Hub> {
        self.shared.hub.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every connected browser, with its subscriptions and counters.
    pub fn clients(&self) -> Vec<ClientStats> {
        self.hub().clients()
    }

    /// The filters subscribed at the broker, each with how many browsers hold it.
    pub fn subscriptions(&self) -> Vec<(String, usize)> {
        self.hub().subscriptions()
    }

    pub(crate) fn session(&self) -> &Session {
        &self.shared.session
    }

    pub(crate) fn policy(&self) -> &dyn PublishPolicy {
        self.shared.policy.as_ref()
    }

    pub(crate) fn origins(&self) -> &OriginPolicy {
        &self.shared.origins
    }

    /// A browser's place, or `None` when [`Config::max_browsers`] are served already.
    pub(crate) fn browser_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.shared.browsers.clone().try_acquire_owned().ok()
    }

    pub(crate) fn max_browsers(&self) -> usize {
        self.shared.max_browsers
    }

    pub(crate) fn client_queue(&self) -> usize {
        self.shared.client_queue
    }

    pub(crate) fn api(&self) -> Option<&ApiLocation> {
        self.shared.api.as_ref()
    }

    pub(crate) fn closing(&self) -> &CancellationToken {
        &self.shared.closing
    }

    pub(crate) fn tracker(&self) -> TaskTracker {
        self.shared.tracker.clone()
    }
}

/// A bound gateway: its HTTP port is open and its MQTT session is connecting; it serves once [`Gateway::run`] is called.
pub struct Gateway {
    listener: TcpListener,
    state: GatewayState,
    events: mpsc::Receiver<Event>,
}

impl Gateway {
    /// Validates the configuration, binds the HTTP listener (port 0 picks a free port) and starts the MQTT session.
    pub async fn bind(config: Config) -> Result<Gateway, GatewayError> {
        if config.client_queue == 0 {
            return Err(GatewayError::InvalidConfig("the client queue must hold at least one frame".into()));
        }
        if config.client_id.is_empty() {
            return Err(GatewayError::InvalidConfig("the mqtt client id must not be empty".into()));
        }
        if config.max_browsers == 0 {
            return Err(GatewayError::InvalidConfig("the gateway must serve at least one browser".into()));
        }
        let listener = TcpListener::bind(config.http_addr)
            .await
            .map_err(|source| GatewayError::Bind { addr: config.http_addr, source })?;
        let mut session_config = SessionConfig::new(config.broker.clone(), config.client_id.clone());
        session_config.credentials = config.credentials.clone();
        session_config.max_packet_size = Some(MAX_MQTT_PACKET);
        let (session, events) = Session::start(session_config);
        let loopback = listener.local_addr().map_err(|source| GatewayError::Bind { addr: config.http_addr, source })?;
        let origins = OriginPolicy::new(config.allowed_origins, loopback.ip().is_loopback());
        if origins.admits_any() {
            tracing::warn!("--allowed-origins has '*': every web page the user visits may open /dashboard");
        }
        let shared = Shared {
            hub: Mutex::new(Hub::new(session.clone(), MAX_FILTERS_PER_CLIENT)),
            session,
            policy: config.publish_policy,
            origins,
            browsers: Arc::new(Semaphore::new(config.max_browsers)),
            max_browsers: config.max_browsers,
            client_queue: config.client_queue,
            api: config.api,
            closing: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        Ok(Gateway { listener, state: GatewayState { shared: Arc::new(shared) }, events })
    }

    /// The address the HTTP listener is bound to.
    /// Whether the gateway's MQTT session is connected and its subscriptions answered, for `/readyz`.
    pub fn mqtt_status(&self) -> ferrite_mqtt::SessionStatus {
        self.state.session().status()
    }

    pub fn local_addr(&self) -> SocketAddr {
        // A bound TCP listener always has a local address.
        self.listener.local_addr().unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
    }

    /// A handle on the gateway's state, for its router and for tests.
    pub fn state(&self) -> GatewayState {
        self.state.clone()
    }

    /// Serves until `shutdown` is cancelled; then closes every browser with a close frame, lets browsers'
    /// QoS 1/2 publishes be acknowledged, and disconnects from the broker.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), GatewayError> {
        let Gateway { listener, state, events } = self;
        let addr = listener.local_addr().map_err(GatewayError::Serve)?;
        tracing::info!(%addr, "gateway listening; dashboard at http://{addr}/");
        let pump = tokio::spawn(pump(events, state.clone()));
        let closing = state.closing().clone();
        let max_connections = state.max_browsers() + HTTP_HEADROOM;
        let served = server::serve(listener, router(state.clone()), max_connections, async move {
            shutdown.cancelled().await;
            // Upgraded connections are not the HTTP server's to wait for: tell the browsers ourselves.
            closing.cancel();
        })
        .await;
        state.closing().cancel();
        let tracker = state.tracker();
        tracker.close();
        if tokio::time::timeout(CLIENT_CLOSE_GRACE, tracker.wait()).await.is_err() {
            tracing::warn!(left = tracker.len(), "some browsers did not close in time");
        }
        let unacknowledged = state.session().close(PUBLISH_DRAIN).await;
        if unacknowledged > 0 {
            tracing::warn!(unacknowledged, "browser publishes were not acknowledged before shutdown");
        }
        // The session has ended, so its events end and the pump with them.
        let _ = pump.await;
        tracing::info!("gateway stopped");
        served.map_err(GatewayError::Serve)
    }
}

/// Feeds the session's events to the hub until the session ends.
async fn pump(mut events: mpsc::Receiver<Event>, state: GatewayState) {
    let mut connected = false;
    // Looked up once: the macros would look each counter up in the recorder for every message.
    let messages = metrics::counter!("ferrite_gateway_mqtt_messages_total");
    let queued = metrics::counter!("ferrite_gateway_frames_queued_total");
    let dropped = metrics::counter!("ferrite_gateway_frames_dropped_total");
    while let Some(event) = events.recv().await {
        match event {
            Event::Connected { .. } => {
                state.hub().on_connected();
                connected = true;
                metrics::gauge!("ferrite_gateway_mqtt_connected").set(1.0);
                tracing::info!("gateway connected to the broker");
            }
            Event::Disconnected { error } => {
                metrics::gauge!("ferrite_gateway_mqtt_connected").set(0.0);
                // Log the loss once, not every failed attempt while the broker is away.
                if connected {
                    tracing::warn!(%error, "gateway lost the broker; reconnecting");
                } else {
                    tracing::debug!(%error, "gateway cannot reach the broker yet");
                }
                connected = false;
            }
            Event::Subscribed { refused } => {
                if refused > 0 {
                    tracing::warn!(refused, "the broker refused a dashboard subscription");
                }
            }
            Event::Message(message) => {
                let publish = &message.publish;
                let topic = message.topic();
                let span = push_span(&message, &topic);
                let _entered = span.enter();
                let frames = protocol::render(&topic, &publish.payload, message.content_type(), Utc::now());
                let incoming = hub::Incoming {
                    topic: &topic,
                    retain: publish.retain,
                    payload: &publish.payload,
                    content_type: message.content_type(),
                    frames: frames.into(),
                };
                let delivered = state.hub().deliver(&incoming);
                span.record("queued", delivered.queued);
                span.record("dropped", delivered.dropped);
                messages.increment(1);
                queued.increment(delivered.queued);
                if delivered.dropped > 0 {
                    dropped.increment(delivered.dropped);
                }
            }
        }
    }
}

/// The `gateway.push` span of a message that carries a trace context: a child of its publisher's span, around
/// rendering the message and queueing it for the browsers (`queued` frames, `dropped` for full queues).
/// Untraced messages, or all of them while spans are not exported, get a disabled span that costs nothing.
fn push_span(message: &ferrite_mqtt::Message, topic: &str) -> tracing::Span {
    let properties = message.user_properties();
    if !ferrite_telemetry::propagation::is_traced(properties) {
        return tracing::Span::none();
    }
    let span =
        tracing::info_span!("gateway.push", topic, queued = tracing::field::Empty, dropped = tracing::field::Empty);
    ferrite_telemetry::propagation::set_parent_from_properties(&span, properties);
    span
}
