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
//! - `hooks`: rmqtt hooks that ask the [`Authorizer`].
//! - `logging`: rmqtt's `log` records into `tracing`, quietly.
//!
//! # Limits measured in rmqtt 0.24
//! - A stopped broker's database stays locked until the process exits: rmqtt-storage keeps each sled
//!   database open from a thread that never ends. A broker restarted in the same process must use
//!   another `data_dir`; restarting on the same one needs a new process ([`BrokerError::Storage`] otherwise).
//! - A socket that never sends CONNECT is held until TCP keepalive notices a dead peer; see [`Config::connect_timeout`].

#![forbid(unsafe_code)]

pub mod auth;
mod engine;
mod hooks;
mod logging;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

pub use auth::{AllowAll, AuthDecision, Authorizer, BoxFuture, DenyReason, Identity, Principal};

/// The standard MQTT port.
pub const DEFAULT_MQTT_PORT: u16 = 1883;
/// The usual port for MQTT over WebSocket (EMQX and others use it too).
pub const DEFAULT_WS_PORT: u16 = 8083;
/// Long enough for a client on a slow link to send CONNECT, short enough that idle sockets do not pile up.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Under the working directory, next to the other `ferrite up` state.
pub const DEFAULT_DATA_DIR: &str = "./.ferrite/broker";

/// The broker's own runtime is given this long to end its tasks after the last connection closed.
/// rmqtt-storage's database threads never end, so the wait always runs out; it stays short.
const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_millis(300);

/// How the broker listens and where it keeps its state.
#[derive(Clone)]
pub struct Config {
    /// MQTT 3.1.1 and 5 on one port.
    pub mqtt_addr: SocketAddr,
    /// MQTT over WebSocket (clients use the path `/mqtt`), both versions; `None` turns it off.
    pub ws_addr: Option<SocketAddr>,
    /// Where retained messages and persistent sessions are kept; they survive a restart.
    pub data_dir: PathBuf,
    /// A WebSocket upgrade, and a CONNECT once the protocol has been recognised, must arrive within this.
    ///
    /// rmqtt reads the first bytes of a connection without any deadline, so a socket that stays
    /// completely silent is only closed when TCP keepalive finds its peer gone. It never delays other clients.
    pub connect_timeout: Duration,
    /// Decides who may connect, publish and subscribe.
    pub authorizer: Arc<dyn Authorizer>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mqtt_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_MQTT_PORT)),
            ws_addr: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_WS_PORT))),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            authorizer: Arc::new(AllowAll),
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
    /// The storage could not be opened; "lock" in the reason means another broker
    /// (possibly a stopped one in this process) still holds the data directory.
    #[error("cannot open broker storage in {path}: {reason}")]
    Storage { path: PathBuf, reason: String },
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
    /// rmqtt and its plugins spawn tasks that loop forever; on their own runtime, shutting that
    /// runtime down ends them and frees their sockets, whatever runtime the caller uses.
    runtime: Option<Runtime>,
    engine: Option<engine::Engine>,
    mqtt_addr: SocketAddr,
    ws_addr: Option<SocketAddr>,
}

impl Broker {
    /// Opens the data directory and binds the listeners (port 0 picks a free port).
    pub async fn bind(config: Config) -> Result<Broker, BrokerError> {
        if config.connect_timeout.is_zero() {
            return Err(BrokerError::InvalidConfig { reason: "connect timeout must be more than zero".into() });
        }
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| BrokerError::DataDir { path: config.data_dir.clone(), source })?;
        let data_dir = std::path::absolute(&config.data_dir)
            .map_err(|source| BrokerError::DataDir { path: config.data_dir.clone(), source })?;
        logging::install();

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("ferrite-broker")
            .build()
            .map_err(BrokerError::Runtime)?;
        let bound = runtime.spawn(async move { engine::Engine::bind(config, &data_dir).await }).await;
        let engine = match bound {
            Ok(Ok(engine)) => engine,
            Ok(Err(e)) => {
                // Not awaited: nothing was served, and a runtime cannot be dropped in async code.
                runtime.shutdown_background();
                return Err(e);
            }
            Err(join) => {
                runtime.shutdown_background();
                return Err(BrokerError::Startup(format!("setup task failed: {join}")));
            }
        };
        tracing::info!(mqtt = %engine.mqtt_addr, ws = ?engine.ws_addr, "mqtt broker bound");
        Ok(Broker {
            mqtt_addr: engine.mqtt_addr,
            ws_addr: engine.ws_addr,
            runtime: Some(runtime),
            engine: Some(engine),
        })
    }

    /// The address of the MQTT listener (TCP).
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// The address of the MQTT-over-WebSocket listener, if enabled.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws_addr
    }

    /// Serves until `shutdown` is cancelled, then stops listening, takes every client offline
    /// (persistent sessions kept, Last Wills published), lets persistence reach the disk, and returns.
    /// The ports are free when it returns.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), BrokerError> {
        let (Some(runtime), Some(engine)) = (self.runtime.take(), self.engine.take()) else {
            // Both are only taken here, and `run` consumes the broker.
            return Err(BrokerError::Stopped("broker was already run".into()));
        };
        let engine::Engine { scx, server, .. } = engine;
        let mut serving = runtime.spawn(server.run());
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
        let closing = runtime.spawn(async move { engine::close_connections(&scx).await });
        if let Err(join) = closing.await {
            tracing::warn!(cause = %join, "closing connections failed");
        }
        // Shutting down blocks, so it happens on a blocking thread of the caller's runtime.
        let stopped = tokio::task::spawn_blocking(move || runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE)).await;
        if let Err(join) = stopped {
            tracing::warn!(cause = %join, "broker runtime shutdown failed");
        }
        tracing::info!("mqtt broker stopped");
        outcome
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // A broker dropped without `run` still has a runtime; it must not block here.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
