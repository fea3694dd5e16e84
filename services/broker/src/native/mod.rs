//! Ferrite's own MQTT engine (issue 13), over `ferrite-mqtt-codec`.
//!
//! # Layout
//! - [`Engine`] (this file): bind the listeners and open the store, serve, stop in order.
//! - `listener`: accept loops for TCP, TLS and WebSocket; `transport`: the three byte streams.
//! - `connection`: one task per connection (handshake, packets in, queued messages out, keep-alive, Last Will).
//! - `session`: what outlives a connection, behind one short lock; `message`: a message shared by its deliveries.
//! - `core`: sessions by client id, the subscription table and retained messages (`topics`), routing, the store.
//! - `store`: persistent sessions, their queued QoS 1/2 messages, and retained messages on disk.

mod connection;
mod core;
mod listener;
mod message;
mod session;
mod store;
mod topics;
mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::core::{Core, Limits};
use self::session::QueueBounds;
use crate::{BrokerError, Config};

/// The Topic Alias Maximum announced to clients unless configured otherwise: enough for a device's metrics.
pub const DEFAULT_TOPIC_ALIAS_MAXIMUM: u16 = 64;

/// When a QoS 1/2 message counts as received, that is when the broker sends PUBACK (or PUBREC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Once what it changed (queued for persistent sessions, retained) is on disk: writes of every client that
    /// arrive while one flush runs share the next one (group commit). Survives a SIGKILL or a power cut.
    #[default]
    Sync,
    /// At once; the store flushes to disk every interval, so a crash loses at most that much.
    Periodic(Duration),
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "sync" {
            return Ok(Durability::Sync);
        }
        let interval = s.strip_prefix("periodic").map(|rest| rest.trim_start_matches(':'));
        match interval {
            Some("") => Ok(Durability::Periodic(Duration::from_millis(500))),
            Some(every) => match humantime::parse_duration(every) {
                Ok(interval) if !interval.is_zero() => Ok(Durability::Periodic(interval)),
                Ok(_) => Err("the flush interval must be more than zero".into()),
                Err(e) => Err(format!("invalid flush interval {every:?}: {e}")),
            },
            None => {
                Err(format!("unknown durability {s:?}: expected \"sync\" or \"periodic[:<interval, e.g. 500ms>]\""))
            }
        }
    }
}

/// Messages queued for one session (online backlog or offline queue) before new ones are dropped for it alone.
/// One client, the ingester, takes every reading of the fleet: 100,000 hold over a minute of a 1,000-device fleet.
const MAX_QUEUED_MESSAGES: usize = 100_000;

/// Subscriptions one client may hold (platform services are not limited): each costs trie nodes and a place in its
/// session, so a client subscribing to a million distinct filters must be refused (0x97 / 0x80 in the SUBACK).
/// A device subscribes to its own `commands/{id}`; a dashboard or tool to a handful.
const MAX_SUBSCRIPTIONS_PER_CLIENT: usize = 1000;

/// Bytes queued for one session, whatever the count: a slow subscriber of large messages cannot grow the broker
/// beyond this (four ingester sessions at their bound stay within the 300 MB the engine aims at).
const MAX_QUEUED_BYTES: usize = 32 * 1024 * 1024;

/// QoS 1/2 messages in flight to a 3.1.1 client (v5 clients state their own Receive Maximum): the ingester
/// acknowledges a whole batch after its commit, so it needs a window as large as its batch.
const V311_WINDOW: u16 = 4096;

/// The Receive Maximum announced to v5 clients: QoS 1/2 publishes a client may have unacknowledged at once.
const RECEIVE_MAXIMUM: u16 = 4096;

/// How often `$SYS/broker/...` values are published; Mosquitto's default `sys_interval`.
const SYS_INTERVAL: Duration = Duration::from_secs(10);

/// How long connections get to close in an orderly way at shutdown (Last Wills, DISCONNECT 0x8B).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Ferrite's engine, bound and ready to serve.
pub(crate) struct Engine {
    core: Arc<Core>,
    tcp: TcpListener,
    ws: Option<(TcpListener, Arc<ferrite_core::origin::OriginPolicy>)>,
    tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    pub(crate) mqtt_addr: SocketAddr,
    pub(crate) tls_addr: Option<SocketAddr>,
    pub(crate) ws_addr: Option<SocketAddr>,
}

impl Engine {
    pub(crate) async fn bind(config: Config, data_dir: &std::path::Path) -> Result<Engine, BrokerError> {
        let bind = |addr: SocketAddr| {
            let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() };
            socket
                .and_then(|socket| {
                    // A restarted broker must get its port back while old connections linger in TIME_WAIT.
                    socket.set_reuseaddr(true)?;
                    socket.bind(addr)?;
                    socket.listen(1024)
                })
                .map_err(|source| BrokerError::Bind { addr, source })
        };
        let tcp = bind(config.mqtt_addr)?;
        let mqtt_addr = tcp.local_addr().map_err(|source| BrokerError::Bind { addr: config.mqtt_addr, source })?;
        let ws = match config.ws_addr {
            Some(addr) => {
                let listener = bind(addr)?;
                let policy = Arc::new(ferrite_core::origin::OriginPolicy::new(
                    config.allowed_origins.clone(),
                    addr.ip().is_loopback(),
                ));
                Some((listener, policy))
            }
            None => None,
        };
        let ws_addr = match &ws {
            Some((listener, _)) => Some(
                listener
                    .local_addr()
                    .map_err(|source| BrokerError::Bind { addr: config.ws_addr.unwrap_or(config.mqtt_addr), source })?,
            ),
            None => None,
        };
        let tls = match &config.tls {
            Some(tls) => {
                let acceptor = listener::tls_acceptor(tls)?;
                Some((bind(tls.addr)?, acceptor))
            }
            None => None,
        };
        let tls_addr = match &tls {
            Some((listener, _)) => Some(listener.local_addr().map_err(|source| BrokerError::Bind {
                addr: config.tls.as_ref().map_or(config.mqtt_addr, |tls| tls.addr),
                source,
            })?),
            None => None,
        };
        let (store, recovered) =
            store::Store::open(&data_dir.join("store"), config.durability).map_err(|e| match e {
                store::StoreError::InUse { .. } => BrokerError::DataDirInUse { path: data_dir.to_path_buf() },
                other => BrokerError::Storage { path: data_dir.to_path_buf(), reason: other.to_string() },
            })?;
        let limits = Limits {
            max_packet_size: ferrite_core::limits::MAX_PACKET_SIZE,
            connect_timeout: config.connect_timeout,
            max_session_expiry: config.max_session_expiry,
            max_retained_per_client: config.max_retained_per_client,
            max_subscriptions_per_client: MAX_SUBSCRIPTIONS_PER_CLIENT,
            server_keep_alive: config
                .server_keep_alive
                .map(|keep_alive| u16::try_from(keep_alive.as_secs()).unwrap_or(u16::MAX)),
            topic_alias_maximum: config.topic_alias_maximum,
            queue: QueueBounds { messages: MAX_QUEUED_MESSAGES, bytes: MAX_QUEUED_BYTES },
            v311_window: V311_WINDOW,
            receive_maximum: RECEIVE_MAXIMUM,
        };
        let core = Arc::new(Core::new(limits, config.authorizer.clone(), store));
        core.recover(recovered);
        Ok(Engine { core, tcp, ws, tls, mqtt_addr, ws_addr, tls_addr })
    }

    pub(crate) fn clients(&self) -> NativeClients {
        NativeClients { core: self.core.clone() }
    }

    /// Serves until `shutdown`, then closes every connection in order (Last Wills published, persistent sessions
    /// kept) and closes the store.
    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<(), BrokerError> {
        let Engine { core, tcp, ws, tls, .. } = self;
        let mut accepting = vec![tokio::spawn(listener::serve_tcp(core.clone(), tcp))];
        if let Some((listener, acceptor)) = tls {
            accepting.push(tokio::spawn(listener::serve_tls(core.clone(), listener, acceptor)));
        }
        if let Some((listener, policy)) = ws {
            accepting.push(tokio::spawn(listener::serve_ws(core.clone(), listener, policy)));
        }
        let sys = tokio::spawn(publish_sys(core.clone()));
        shutdown.cancelled().await;
        tracing::info!("mqtt broker stopping");
        core.shutdown.cancel();
        sys.abort();
        for task in accepting {
            // The listeners drop with their tasks, which frees the ports.
            let _ = task.await;
        }
        core.tasks.close();
        if tokio::time::timeout(CLOSE_GRACE, core.tasks.wait()).await.is_err() {
            tracing::warn!("some connections did not close in time");
        }
        let store = core.store.clone();
        drop(core);
        store.close().await.map_err(|e| BrokerError::Stopped(format!("closing the store: {e}")))?;
        tracing::info!("mqtt broker stopped");
        Ok(())
    }
}

/// `$SYS/broker/...`: retained values a subscriber gets at once, refreshed every [`SYS_INTERVAL`].
async fn publish_sys(core: Arc<Core>) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut tick = tokio::time::interval(SYS_INTERVAL);
    loop {
        tick.tick().await;
        let (online, total) = core.session_count();
        let stats = &core.stats;
        core.publish_sys("version", format!("ferrite {}", env!("CARGO_PKG_VERSION")));
        core.publish_sys("uptime", format!("{} seconds", core.started.elapsed().as_secs()));
        core.publish_sys("clients/connected", online.to_string());
        core.publish_sys("clients/total", total.to_string());
        core.publish_sys("subscriptions/count", core.subscription_count().to_string());
        core.publish_sys("retained messages/count", core.retained_count().to_string());
        core.publish_sys("messages/received", stats.received.load(Relaxed).to_string());
        core.publish_sys("messages/sent", stats.sent.load(Relaxed).to_string());
        core.publish_sys("messages/dropped", stats.dropped.load(Relaxed).to_string());
        core.publish_sys("bytes/received", stats.bytes_received.load(Relaxed).to_string());
        core.publish_sys("bytes/sent", stats.bytes_sent.load(Relaxed).to_string());
        core.publish_sys("connections/total", stats.connections.load(Relaxed).to_string());
        metrics::gauge!("ferrite_broker_clients_connected").set(online as f64);
        metrics::gauge!("ferrite_broker_sessions").set(total as f64);
    }
}

/// [`crate::Clients`] for this engine.
#[derive(Clone)]
pub(crate) struct NativeClients {
    core: Arc<Core>,
}

impl NativeClients {
    pub(crate) fn is_connected(&self, client_id: &str) -> bool {
        self.core.is_connected(client_id)
    }

    pub(crate) fn disconnect_where(&self, matches: &dyn Fn(&str) -> bool) -> usize {
        self.core.disconnect_where(matches, ferrite_mqtt_codec::ReasonCode::NotAuthorized)
    }
}
