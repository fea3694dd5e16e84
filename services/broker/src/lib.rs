//! Ferrite's embedded MQTT broker: MQTT 3.1.1 and 5 over TCP and WebSocket, with retained
//! messages and persistent sessions kept on disk, behind a small interface of our own.
//!
//! rmqtt does the MQTT work; nothing of it shows in this crate's public interface, so that it can be
//! replaced one day without touching the services that start a broker.
//!
//! # Layout
//! - [`Config`], [`Broker`] and [`BrokerError`] (this file): bind, serve, stop; the broker's own runtime.
//! - [`auth`]: the [`Authorizer`] trait the device registry implements, and [`AllowAll`].
//! - `engine`: rmqtt's server context, plugins (retained and sessions in sled, `$SYS`, shared
//!   subscriptions) and listeners, and the orderly close of connections at shutdown.
//! - `hooks`: rmqtt hooks that ask the [`Authorizer`], and that keep the takeover of a persistent session
//!   (a client reconnecting under its id) from losing messages, which rmqtt 0.24 alone does.
//! - [`Clients`] (`clients`): whether a client id is connected, and closing clients' connections.
//! - `logging`: rmqtt's `log` records into `tracing`, quietly.
//!
//! # Limits measured in rmqtt 0.24
//! - A stopped broker's data directory stays locked until the process exits: rmqtt-storage keeps each
//!   sled database open from a thread that never ends (and leaves that thread, sled's flusher and a
//!   parked blocking thread behind, per database). In one process a broker can be started again on
//!   another `data_dir`; on the same one only in a new process ([`BrokerError::DataDirInUse`] otherwise).
//! - A connection that sends nothing, or fewer than 9 bytes of its CONNECT, over TCP or after a WebSocket
//!   upgrade, is held until TCP keepalive finds the peer gone: rmqtt reads the protocol version without
//!   a deadline, and nothing of ours runs before that. It costs a socket and a task, never another
//!   client's time. Only a proxy copying every byte could cut it off (measured: about 40 % less QoS 1
//!   throughput), so [`Config::connect_timeout`] covers the rest of the handshake only.
//! - When a client takes its persistent session over, rmqtt sends the messages it had not acknowledged
//!   again in reverse order (DUP set); `hooks` makes sure none is lost, but cannot restore their order.
//! - A QoS 1/2 publish is acknowledged before sled writes it to disk (sled flushes every 500 ms), so a
//!   crash, unlike [`Broker::run`]'s orderly stop, can lose the last half second of retained values and queued messages.

#![forbid(unsafe_code)]

pub mod auth;
mod clients;
mod engine;
mod hooks;
mod logging;
pub mod native;
mod origin;
mod router;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;
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

/// At least this many worker threads for the broker's runtime, whatever the number of cores.
///
/// rmqtt 0.24 holds a lock of its client table (a DashMap shard) across an `.await` (`Entry::is_connected`, which
/// shared subscriptions call for every message) while other tasks take the same lock synchronously, blocking their
/// worker thread (a session takeover's `remove`, routing's lookups). When every worker blocks so, the task holding
/// the lock never runs again: measured on 2 cores with Tokio's default of one worker per core, a takeover of the
/// ingester's session hung the whole broker (no CONNACK for any later connection) in 1 to 3 of 10 runs.
/// Spare workers let the holder finish; they cost an idle thread each.
const MIN_WORKER_THREADS: usize = 8;

/// The broker's own runtime is given this long to end its tasks after the last connection closed.
/// rmqtt-storage's database threads never end, so the wait always runs out; it stays short.
const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_millis(300);

/// How the broker listens and where it keeps its state.
#[derive(Clone)]
pub struct Config {
    /// MQTT 3.1.1 and 5 on one port.
    pub mqtt_addr: SocketAddr,
    /// MQTT over WebSocket, both versions; `None` turns it off.
    /// Clients use the path `/mqtt` (rmqtt accepts any path) and must offer the `mqtt` subprotocol, as MQTT clients do.
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
    /// Which engine does the MQTT work (`--engine`): rmqtt until Ferrite's own passes every test (issue 13).
    pub engine: EngineKind,
    /// When a QoS 1/2 message is safe on disk (Ferrite's engine only; rmqtt's sled flushes every 500 ms).
    pub durability: native::Durability,
    /// MQTT 5 Server Keep Alive: when set, every v5 client is told to use this keep-alive instead of its own
    /// (and 3.1.1 clients are held to it). Ferrite's engine only.
    pub server_keep_alive: Option<Duration>,
    /// MQTT 5 Topic Alias Maximum the broker accepts from each client (0 turns inbound aliases off). Ferrite's engine only.
    pub topic_alias_maximum: u16,
    /// MQTT over TLS (both versions), off unless configured. Ferrite's engine only.
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

/// The MQTT engine inside the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// rmqtt 0.24 with our hooks (the default until Ferrite's engine passes every broker, pipeline and acceptance test).
    #[default]
    Rmqtt,
    /// Ferrite's own engine (`native`), over `ferrite-mqtt-codec`.
    Ferrite,
}

impl EngineKind {
    /// The variable that names the engine, for `--engine` and for test harnesses.
    pub const ENV: &'static str = "FERRITE_BROKER_ENGINE";

    /// The engine `FERRITE_BROKER_ENGINE` names, else the default: how every test suite picks the engine under test.
    ///
    /// # Panics
    /// If the variable names no engine (a test run must not silently test another engine than asked).
    pub fn from_env() -> EngineKind {
        match std::env::var(Self::ENV) {
            Ok(name) => name.parse().unwrap_or_else(|e| panic!("{}: {e}", Self::ENV)),
            Err(_) => EngineKind::default(),
        }
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rmqtt" => Ok(EngineKind::Rmqtt),
            "ferrite" => Ok(EngineKind::Ferrite),
            other => Err(format!("unknown broker engine {other:?}: expected \"ferrite\" or \"rmqtt\"")),
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineKind::Rmqtt => "rmqtt",
            EngineKind::Ferrite => "ferrite",
        })
    }
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
            engine: EngineKind::default(),
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
            .field("engine", &self.engine)
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
    /// Another broker holds the directory: a running one, or one stopped earlier in this same process
    /// (rmqtt-storage keeps its databases open until the process exits).
    #[error("broker data directory {path} is in use by another broker, possibly a stopped one in this process")]
    DataDirInUse { path: PathBuf },
    #[error("cannot use the TLS certificate or key: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the broker runtime: {0}")]
    Runtime(std::io::Error),
    #[error("broker startup failed: {0}")]
    Startup(String),
    #[error("broker stopped unexpectedly: {0}")]
    Stopped(String),
}

/// A bound broker: its ports are open (connections wait in the backlog) and it serves once [`Broker::run`] is called.
pub struct Broker {
    inner: Inner,
}

enum Inner {
    Rmqtt { runtime: OwnedRuntime, engine: engine::Engine },
    Ferrite(native::Engine),
}

/// The broker's own Tokio runtime.
///
/// rmqtt and its plugins spawn tasks that loop forever; on a runtime of their own, shutting that
/// runtime down ends them and closes their sockets, whatever runtime the caller uses.
/// rmqtt-storage also parks a blocking task per database for good, so an ordinary drop of the
/// runtime would wait forever: dropping this wrapper shuts the runtime down in the background instead.
struct OwnedRuntime(Option<Runtime>);

impl OwnedRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        // The runtime is only taken out by `shut_down`, which consumes the wrapper.
        self.0.as_ref().map(Runtime::handle).expect("the runtime is present until shut down")
    }

    /// Gives the runtime's tasks a short grace to end, on a blocking thread of the caller's runtime.
    async fn shut_down(mut self) {
        if let Some(runtime) = self.0.take() {
            let stopped = tokio::task::spawn_blocking(move || runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE)).await;
            if let Err(join) = stopped {
                tracing::warn!(cause = %join, "broker runtime shutdown failed");
            }
        }
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Broker {
    /// Opens the data directory and binds the listeners (port 0 picks a free port).
    pub async fn bind(config: Config) -> Result<Broker, BrokerError> {
        if config.max_session_expiry.is_zero() {
            return Err(BrokerError::InvalidConfig { reason: "maximum session expiry must be more than zero".into() });
        }
        if config.connect_timeout.is_zero() {
            return Err(BrokerError::InvalidConfig { reason: "connect timeout must be more than zero".into() });
        }
        if config.tls.is_some() && config.engine == EngineKind::Rmqtt {
            return Err(BrokerError::InvalidConfig {
                reason: "MQTT over TLS needs Ferrite's engine (--engine ferrite)".into(),
            });
        }
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| BrokerError::DataDir { path: config.data_dir.clone(), source })?;
        let data_dir = std::path::absolute(&config.data_dir)
            .map_err(|source| BrokerError::DataDir { path: config.data_dir.clone(), source })?;
        if config.engine == EngineKind::Ferrite {
            let engine = native::Engine::bind(config, &data_dir).await?;
            tracing::info!(mqtt = %engine.mqtt_addr, ws = ?engine.ws_addr, engine = "ferrite", "mqtt broker bound");
            return Ok(Broker { inner: Inner::Ferrite(engine) });
        }
        logging::install();

        let workers = std::thread::available_parallelism().map_or(1, usize::from).max(MIN_WORKER_THREADS);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .thread_name("ferrite-broker")
            .build()
            .map_err(BrokerError::Runtime)?;
        let runtime = OwnedRuntime(Some(runtime));
        let bound = runtime.handle().spawn(async move { engine::Engine::bind(config, &data_dir).await }).await;
        // On failure the runtime is dropped, which shuts it down without waiting.
        let engine = bound.map_err(|join| BrokerError::Startup(format!("setup task failed: {join}")))??;
        tracing::info!(mqtt = %engine.mqtt_addr, ws = ?engine.ws_addr, engine = "rmqtt", "mqtt broker bound");
        Ok(Broker { inner: Inner::Rmqtt { runtime, engine } })
    }

    /// The address of the MQTT listener (TCP).
    pub fn mqtt_addr(&self) -> SocketAddr {
        match &self.inner {
            Inner::Rmqtt { engine, .. } => engine.mqtt_addr,
            Inner::Ferrite(engine) => engine.mqtt_addr,
        }
    }

    /// A handle on the connected clients (is one connected, close some), for the services beside the broker.
    /// It stays usable while [`Broker::run`] serves.
    pub fn clients(&self) -> Clients {
        match &self.inner {
            Inner::Rmqtt { runtime, engine } => Clients::rmqtt(engine.scx.clone(), runtime.handle().clone()),
            Inner::Ferrite(engine) => Clients::ferrite(engine.clients()),
        }
    }

    /// The address of the MQTT-over-TLS listener, if enabled.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        match &self.inner {
            Inner::Rmqtt { .. } => None,
            Inner::Ferrite(engine) => engine.tls_addr,
        }
    }

    /// The address of the MQTT-over-WebSocket listener, if enabled.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        match &self.inner {
            Inner::Rmqtt { engine, .. } => engine.ws_addr,
            Inner::Ferrite(engine) => engine.ws_addr,
        }
    }

    /// Serves until `shutdown` is cancelled, then stops listening, takes every client offline
    /// (persistent sessions kept, Last Wills published), lets persistence reach the disk, and returns.
    /// The ports are free when it returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BrokerError> {
        let (runtime, engine) = match self.inner {
            Inner::Rmqtt { runtime, engine } => (runtime, engine),
            Inner::Ferrite(engine) => return engine.run(shutdown).await,
        };
        let engine::Engine { scx, server, ws_front, .. } = engine;
        let mut serving = runtime.handle().spawn(server.run());
        let front = ws_front.map(|front| {
            runtime.handle().spawn(origin::serve(front.listener, front.backend, front.policy, front.deadline))
        });
        let outcome = tokio::select! {
            () = shutdown.cancelled() => Ok(()),
            ended = &mut serving => Err(BrokerError::Stopped(match ended {
                Ok(Ok(())) => "listeners ended".to_owned(),
                Ok(Err(e)) => format!("{e:#}"),
                Err(join) => join.to_string(),
            })),
        };
        tracing::info!("mqtt broker stopping");
        // Dropping the server future drops its listeners, which frees the ports at once.
        serving.abort();
        let _ = (&mut serving).await;
        if let Some(front) = front {
            front.abort();
            let _ = front.await;
        }
        let closing = runtime.handle().spawn(async move { engine::close_connections(&scx).await });
        if let Err(join) = closing.await {
            tracing::warn!(cause = %join, "closing connections failed");
        }
        runtime.shut_down().await;
        tracing::info!("mqtt broker stopped");
        outcome
    }
}
