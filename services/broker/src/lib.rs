//! Ferrite's MQTT broker: MQTT 3.1.1 and 5 over TCP, TLS and WebSocket, with retained messages, persistent
//! sessions and their queued QoS 1/2 messages kept on disk, behind a small interface of our own.
//!
//! The engine is ours (`native`, issue 13), over our wire codec `ferrite-mqtt-codec`; it replaced rmqtt 0.24, whose
//! defects we had patched from outside (see ARCHITECTURE.md). Every service also runs against Mosquitto or EMQX.
//!
//! # Layout
//! - [`Config`], [`Broker`] and [`BrokerError`] (this file): bind, serve, stop.
//! - [`auth`]: the [`Authorizer`] trait the device registry implements, and [`AllowAll`].
//! - [`Clients`] (`clients`): whether a client id is connected, and closing clients' connections.
//! - `native`: the engine (listeners, connections, sessions, routing, store); its module docs say how.
//!
//! # Guarantees
//! - A QoS 1/2 message is acknowledged to its publisher only once every persistent session it was queued for,
//!   and the retained value it sets, is on disk ([`native::Durability::Sync`], the default), or at once with a
//!   periodic flush ([`native::Durability::Periodic`]).
//! - A session taken over by a new connection under the same client id loses nothing and reorders nothing: the
//!   session's state never lives in a connection, so the new one resends the unacknowledged messages in their
//!   original order and with their packet identifiers, then goes on with the queue.
//! - Every queue is bounded by count and bytes; what is dropped is counted on `/metrics`
//!   (`ferrite_broker_messages_dropped_total{reason,qos}`).
//! - A connection must complete its CONNECT (and TLS or WebSocket handshake) within [`Config::connect_timeout`]
//!   from its first byte, or it is closed; a malformed packet ends only its own connection.

#![forbid(unsafe_code)]

pub mod auth;
mod clients;
pub mod native;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use auth::{AllowAll, AuthDecision, Authorizer, BoxFuture, DenyReason, Identity, Principal};
pub use clients::Clients;

/// The standard MQTT port.
pub const DEFAULT_MQTT_PORT: u16 = 1883;
/// The usual port for MQTT over WebSocket (EMQX and others use it too).
pub const DEFAULT_WS_PORT: u16 = 8083;
/// Long enough for a client on a slow link to send CONNECT, short enough that idle sockets do not pile up.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a persistent session outlives its connection, whatever a v5 client asks for (Session Expiry Interval
/// is clamped to it): an abandoned session holds its queue (up to 100,000 messages) until it expires. A week covers
/// the ingester's own sessions (they ask for 7 days) and a device off over a long weekend.
pub const DEFAULT_MAX_SESSION_EXPIRY: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Retained topics one device may hold at the broker (all anonymous clients together count as one): retained values
/// live on disk forever, so one device must not fill it. A device has a status topic and one topic per metric.
pub const DEFAULT_MAX_RETAINED_PER_CLIENT: usize = 1000;

/// Under the working directory, next to the other `ferrite up` state.
pub const DEFAULT_DATA_DIR: &str = "./.ferrite/broker";

/// How the broker listens and where it keeps its state.
#[derive(Clone)]
pub struct Config {
    /// MQTT 3.1.1 and 5 on one port.
    pub mqtt_addr: SocketAddr,
    /// MQTT over WebSocket, both versions; `None` turns it off.
    /// Clients use the path `/mqtt` (any path is accepted) and offer the `mqtt` subprotocol, as MQTT clients do.
    pub ws_addr: Option<SocketAddr>,
    /// Where retained messages and persistent sessions are kept; they survive a restart.
    pub data_dir: PathBuf,
    /// A WebSocket upgrade, and a CONNECT once its first bytes arrived, must complete within this,
    /// or the connection is closed. A connection that stays silent is not covered (see the crate docs).
    pub connect_timeout: Duration,
    /// Decides who may connect, publish and subscribe.
    pub authorizer: Arc<dyn Authorizer>,
    /// Web pages (origins such as `https://app.example.com`; `*` for any) whose browsers may open the WebSocket
    /// besides pages served from the broker's own address. Clients that send no `Origin` (everything but browsers)
    /// are never refused for it. See `--allowed-origins` and [`ferrite_core::origin`].
    pub allowed_origins: Vec<ferrite_core::origin::AllowedOrigin>,
    /// See [`DEFAULT_MAX_SESSION_EXPIRY`] (`--max-session-expiry`).
    pub max_session_expiry: Duration,
    /// See [`DEFAULT_MAX_RETAINED_PER_CLIENT`] (`--max-retained-per-device`); platform services are not limited.
    pub max_retained_per_client: usize,
    /// When a QoS 1/2 message counts as received: once on disk (group commit), or at once with a periodic flush.
    pub durability: native::Durability,
    /// MQTT 5 Server Keep Alive: when set, every v5 client is told to use this keep-alive instead of its own
    /// (and 3.1.1 clients are held to it).
    pub server_keep_alive: Option<Duration>,
    /// MQTT 5 Topic Alias Maximum the broker accepts from each client (0 turns inbound aliases off).
    pub topic_alias_maximum: u16,
    /// MQTT over TLS (both versions), off unless configured.
    pub tls: Option<TlsConfig>,
}

/// The MQTT-over-TLS listener: its address and the server's certificate chain and private key (PEM files).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub addr: SocketAddr,
    /// The server certificate first, then any intermediates.
    pub cert_chain: PathBuf,
    /// PKCS#8, PKCS#1 or SEC1.
    pub key: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mqtt_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_MQTT_PORT)),
            ws_addr: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_WS_PORT))),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            authorizer: Arc::new(AllowAll),
            allowed_origins: Vec::new(),
            max_session_expiry: DEFAULT_MAX_SESSION_EXPIRY,
            max_retained_per_client: DEFAULT_MAX_RETAINED_PER_CLIENT,
            durability: native::Durability::default(),
            server_keep_alive: None,
            topic_alias_maximum: native::DEFAULT_TOPIC_ALIAS_MAXIMUM,
            tls: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("mqtt_addr", &self.mqtt_addr)
            .field("ws_addr", &self.ws_addr)
            .field("data_dir", &self.data_dir)
            .field("connect_timeout", &self.connect_timeout)
            .field("allowed_origins", &self.allowed_origins)
            .field("max_session_expiry", &self.max_session_expiry)
            .field("max_retained_per_client", &self.max_retained_per_client)
            .field("durability", &self.durability)
            .field("server_keep_alive", &self.server_keep_alive)
            .field("topic_alias_maximum", &self.topic_alias_maximum)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// What can go wrong starting or running the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid broker configuration: {reason}")]
    InvalidConfig { reason: String },
    #[error("cannot create broker data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot open broker storage in {path}: {reason}")]
    Storage { path: PathBuf, reason: String },
    /// Another running broker (in this process or another) holds the directory.
    #[error("broker data directory {path} is in use by another broker")]
    DataDirInUse { path: PathBuf },
    #[error("cannot use the TLS certificate or key: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("broker stopped unexpectedly: {0}")]
    Stopped(String),
}

/// A bound broker: its ports are open (connections wait in the backlog) and it serves once [`Broker::run`] is called.
pub struct Broker {
    engine: native::Engine,
}

impl Broker {
    /// Opens the data directory (recovering retained messages and persistent sessions) and binds the listeners
    /// (port 0 picks a free port).
    pub async fn bind(config: Config) -> Result<Broker, BrokerError> {
        if config.max_session_expiry.is_zero() {
            return Err(BrokerError::InvalidConfig { reason: "maximum session expiry must be more than zero".into() });
        }
        if config.connect_timeout.is_zero() {
            return Err(BrokerError::InvalidConfig { reason: "connect timeout must be more than zero".into() });
        }
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| BrokerError::DataDir { path: config.data_dir.clone(), source })?;
        let data_dir = std::path::absolute(&config.data_dir)
            .map_err(|source| BrokerError::DataDir { path: config.data_dir.clone(), source })?;
        let engine = native::Engine::bind(config, &data_dir).await?;
        tracing::info!(mqtt = %engine.mqtt_addr, ws = ?engine.ws_addr, tls = ?engine.tls_addr, "mqtt broker bound");
        Ok(Broker { engine })
    }

    /// The address of the MQTT listener (TCP).
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.engine.mqtt_addr
    }

    /// The address of the MQTT-over-TLS listener, if enabled.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.engine.tls_addr
    }

    /// The address of the MQTT-over-WebSocket listener, if enabled.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.engine.ws_addr
    }

    /// A handle on the connected clients (is one connected, close some), for the services beside the broker.
    /// It stays usable while [`Broker::run`] serves.
    pub fn clients(&self) -> Clients {
        Clients::new(self.engine.clients())
    }

    /// Serves until `shutdown` is cancelled, then stops listening, takes every client offline
    /// (persistent sessions kept, Last Wills published), closes the store, and returns.
    /// The ports and the data directory are free when it returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BrokerError> {
        self.engine.run(shutdown).await
    }
}
