//! The rmqtt side: server context, plugins, listeners, and the orderly close of every connection.
//!
//! Everything here runs on the broker's own Tokio runtime (see `lib.rs`), because rmqtt and its
//! plugins spawn endless background tasks that only a runtime shutdown can end.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmqtt::context::ServerContext;
use rmqtt::net::{Builder, Listener};
use rmqtt::server::MqttServer;
use rmqtt::types::{Message, Reason};

use crate::{BrokerError, Config};

/// rmqtt's id for the MQTT-over-TCP listener (it needs one per listener; ports may be 0).
const TCP_LISTENER_ID: u16 = 1;
/// rmqtt's id for the MQTT-over-WebSocket listener.
const WS_LISTENER_ID: u16 = 2;

/// How long a persistent session lives after its client went away (MQTT 3.1.1 has no expiry of its own;
/// a v5 client's Session Expiry Interval is used as sent). A day covers a device that is off overnight.
const SESSION_EXPIRY: Duration = Duration::from_secs(24 * 60 * 60);

/// Messages queued per client (online backlog or offline queue) before new ones are dropped for it alone.
/// Mosquitto's default is 1,000, but here one client, the ingester, takes every reading of the fleet:
/// measured, 1,000 lost 1,700 of 3,000 readings while an ingester restarted. 100,000 holds over a minute of
/// a 1,000-device fleet (a few hundred bytes each, tens of MB at worst, for that one client).
const MAX_QUEUED_MESSAGES: usize = 100_000;

/// QoS 1/2 messages in flight to one client before the broker waits for its acks (rmqtt's default is 16).
/// The ingester acknowledges a whole batch after its commit, so it needs a window as large as its batch:
/// with 16, it was capped at 16 messages per batch interval (measured ~280 readings/s).
const MAX_INFLIGHT: u16 = 4096;

/// How often `$SYS/brokers/{node}/stats` and `.../metrics` are published; Mosquitto's default `sys_interval`.
const SYS_INTERVAL: &str = "10s";

/// Cache of each sled database; sled's own default of 1 GiB is far more than retained values and sessions need.
const SLED_CACHE: &str = "64M";

/// How long connections get to go offline in an orderly way at shutdown before the runtime drops them.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// rmqtt's persistence writes through task queues into sled, and sled makes writes durable
/// from a flusher thread every 500 ms; none of them can be awaited from outside.
/// Waiting this long after the last connection closed lets both finish before the process may exit.
const PERSISTENCE_SETTLE: Duration = Duration::from_millis(1200);

/// A configured rmqtt server, bound but not yet serving.
pub(crate) struct Engine {
    pub(crate) scx: ServerContext,
    pub(crate) server: MqttServer,
    pub(crate) mqtt_addr: SocketAddr,
    pub(crate) ws_addr: Option<SocketAddr>,
    /// Our WebSocket port in front of rmqtt's (see `origin`), and where rmqtt's private WebSocket listener is.
    pub(crate) ws_front: Option<WsFront>,
}

/// The public WebSocket port, not yet serving.
pub(crate) struct WsFront {
    pub(crate) listener: tokio::net::TcpListener,
    pub(crate) backend: SocketAddr,
    pub(crate) policy: Arc<ferrite_core::origin::OriginPolicy>,
    /// The request head must arrive within this (the CONNECT deadline).
    pub(crate) deadline: std::time::Duration,
}

impl Engine {
    /// Binds the listeners, opens the persistence, and registers the plugins and our hooks.
    pub(crate) async fn bind(config: Config, data_dir: &Path) -> Result<Engine, BrokerError> {
        // Ports first: a port already taken then fails before the storage is opened, which could not
        // be released again in this process (see the crate docs).
        let tcp = listener(&config, config.mqtt_addr, "ferrite/mqtt", false)?;
        let mqtt_addr = local_addr(&tcp, config.mqtt_addr)?;
        let (ws, ws_front) = match config.ws_addr {
            Some(addr) => {
                let (ws, front) = ws_listener(&config, addr)?;
                (Some(ws), Some(front))
            }
            None => (None, None),
        };
        let ws_addr =
            match &ws_front {
                Some(front) => Some(front.listener.local_addr().map_err(|source| BrokerError::Bind {
                    addr: config.ws_addr.unwrap_or(config.mqtt_addr),
                    source,
                })?),
                None => None,
            };

        let scx = ServerContext::new()
            // rmqtt refuses connections while the machine's load average is high; a broker on a
            // busy laptop or CI runner must not turn away clients because a compiler is running.
            .busy_check_enable(false)
            .plugins_config_map_add("rmqtt-retainer", retainer_config(&data_dir.join("retained"))?)
            .plugins_config_map_add("rmqtt-session-storage", session_config(&data_dir.join("sessions"))?)
            .plugins_config_map_add("rmqtt-sys-topic", format!("publish_interval = \"{SYS_INTERVAL}\"\n"))
            // Given explicitly (it is the default) so that the plugin does not warn about a missing config.
            .plugins_config_map_add("rmqtt-shared-subscription", "strategy = \"round_robin\"\n")
            .build()
            .await;
        crate::router::install(&scx).await;

        let storage_error = |e: rmqtt::Error| {
            let reason = format!("{e:#}");
            // sled's message for a database another handle already holds.
            if reason.contains("could not acquire lock") {
                BrokerError::DataDirInUse { path: data_dir.to_path_buf() }
            } else {
                BrokerError::Storage { path: data_dir.to_path_buf(), reason }
            }
        };
        rmqtt_retainer::register(&scx, true, false).await.map_err(storage_error)?;
        rmqtt_session_storage::register(&scx, true, false).await.map_err(storage_error)?;
        // Without this plugin `$share/...` subscriptions are accepted but never receive anything.
        rmqtt_shared_subscription::register(&scx, true, false)
            .await
            .map_err(|e| BrokerError::Startup(format!("shared subscriptions: {e:#}")))?;
        rmqtt_sys_topic::register(&scx, true, false)
            .await
            .map_err(|e| BrokerError::Startup(format!("$SYS topics: {e:#}")))?;
        let quotas = crate::hooks::Quotas {
            max_session_expiry: config.max_session_expiry,
            max_retained: config.max_retained_per_client,
        };
        crate::hooks::install(&scx, Arc::clone(&config.authorizer), quotas).await;

        let mut server = MqttServer::new(scx.clone()).listener_by_id(tcp, TCP_LISTENER_ID);
        if let Some(ws) = ws {
            server = server.listener_by_id(ws, WS_LISTENER_ID);
        }
        Ok(Engine { scx, server: server.build(), mqtt_addr, ws_addr, ws_front })
    }
}

/// Binds a listener; a request for port 0 is resolved to a concrete free port first.
///
/// rmqtt keys per-listener state by the *configured* port (its handshake executor is looked up by
/// `cfg.laddr.port()`, and session ids carry `cfg.laddr`), so two listeners configured with port 0 would
/// share one executor built from whichever listener's settings came first. Giving rmqtt the real port keeps
/// them apart; the port is found by binding and releasing it, and taken again at once (a lost race is retried).
fn listener(config: &Config, addr: SocketAddr, name: &str, proxied: bool) -> Result<Listener, BrokerError> {
    if addr.port() != 0 {
        return bind_listener(config, addr, name, proxied);
    }
    let mut last = None;
    for _ in 0..PORT_ATTEMPTS {
        let free = std::net::TcpListener::bind(addr)
            .and_then(|probe| probe.local_addr())
            .map_err(|e| BrokerError::Bind { addr, source: e })?;
        match bind_listener(config, free, name, proxied) {
            Ok(listener) => return Ok(listener),
            Err(error) => last = Some(error),
        }
    }
    Err(last.expect("PORT_ATTEMPTS is above zero, so at least one attempt failed"))
}

/// How many free ports to try when another process takes the one we found before we bind it again.
const PORT_ATTEMPTS: usize = 8;

/// `proxied`: the listener behind our WebSocket front, which learns the client's address from a PROXY line.
fn bind_listener(config: &Config, addr: SocketAddr, name: &str, proxied: bool) -> Result<Listener, BrokerError> {
    Builder::new()
        .proxy_protocol(proxied)
        .proxy_protocol_timeout(crate::origin::PROXY_HEADER_TIMEOUT)
        .name(name)
        .laddr(addr)
        // A restarted broker must get its port back while old connections linger in TIME_WAIT.
        .reuseaddr(Some(true))
        .nodelay(true)
        // rmqtt skips the authentication hook for clients without a username when anonymous
        // clients are allowed; turning that off makes every client pass through our Authorizer.
        .allow_anonymous(false)
        .handshake_timeout(config.connect_timeout)
        .session_expiry_interval(SESSION_EXPIRY.min(config.max_session_expiry))
        .max_session_expiry_interval(config.max_session_expiry)
        // rmqtt's default gives every message a 5 minute expiry, which also expires queued
        // messages and retained values; zero means "no expiry unless the publisher set one".
        .message_expiry_interval(Duration::ZERO)
        .max_mqueue_len(MAX_QUEUED_MESSAGES)
        .max_inflight(std::num::NonZeroU16::new(MAX_INFLIGHT).expect("MAX_INFLIGHT is above zero"))
        .max_packet_size(ferrite_core::limits::MAX_PACKET_SIZE)
        .bind()
        .map_err(|e| bind_error(addr, e))?
        .tcp()
        .map_err(|e| bind_error(addr, e))
}

/// Our public WebSocket port at `addr`, and rmqtt's WebSocket listener behind it on a private loopback port.
fn ws_listener(config: &Config, addr: SocketAddr) -> Result<(Listener, WsFront), BrokerError> {
    let public = std::net::TcpListener::bind(addr)
        .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|source| BrokerError::Bind { addr, source })?;
    let private = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
    let ws = listener(config, private, "ferrite/ws", true)?
        .ws()
        .map_err(|e| BrokerError::Startup(format!("websocket listener: {e:#}")))?;
    let backend = local_addr(&ws, private)?;
    let policy =
        Arc::new(ferrite_core::origin::OriginPolicy::new(config.allowed_origins.clone(), addr.ip().is_loopback()));
    Ok((ws, WsFront { listener: public, backend, policy, deadline: config.connect_timeout }))
}

fn local_addr(listener: &Listener, requested: SocketAddr) -> Result<SocketAddr, BrokerError> {
    listener.local_addr().map_err(|e| bind_error(requested, e))
}

fn bind_error(addr: SocketAddr, e: rmqtt::Error) -> BrokerError {
    let source = match e.downcast::<std::io::Error>() {
        Ok(io) => io,
        Err(other) => std::io::Error::other(format!("{other:#}")),
    };
    BrokerError::Bind { addr, source }
}

fn retainer_config(path: &Path) -> Result<String, BrokerError> {
    // `retained_message_ttl = "0s"` keeps retained values until replaced or cleared; a v5
    // Message Expiry Interval is still honoured, because expired messages are not delivered.
    Ok(format!(
        "retained_message_ttl = \"0s\"\n\
         [storage]\ntype = \"sled\"\n\
         [storage.sled]\npath = {}\ncache_capacity = \"{SLED_CACHE}\"\n",
        toml_string(path)?
    ))
}

fn session_config(path: &Path) -> Result<String, BrokerError> {
    Ok(format!(
        "[storage]\ntype = \"sled\"\n\
         [storage.sled]\npath = {}\ncache_capacity = \"{SLED_CACHE}\"\n",
        toml_string(path)?
    ))
}

/// A path as a TOML basic string.
fn toml_string(path: &Path) -> Result<String, BrokerError> {
    let text = path.to_str().ok_or_else(|| BrokerError::InvalidConfig {
        reason: format!("data directory {} is not valid UTF-8", path.display()),
    })?;
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    Ok(quoted)
}

/// Takes every client offline the way a lost connection would, then lets persistence settle.
///
/// rmqtt's own "kick" would either delete persistent sessions (clean start, or by admin) or
/// hand them to a successor that never comes. Closing the connection with "server shutting down"
/// keeps each persistent session and its queue, publishes Last Wills as the MQTT spec asks
/// when the server ends a connection, and tells v5 clients why (reason code 0x8B).
pub(crate) async fn close_connections(scx: &ServerContext) {
    let senders: Vec<_> = {
        let shared = scx.extends.shared().await;
        let mut senders = Vec::new();
        for entry in shared.iter() {
            if entry.is_connected().await {
                senders.extend(entry.tx());
            }
        }
        senders
    };
    tracing::debug!(connections = senders.len(), "closing client connections");
    for tx in senders {
        // An error means the connection ended on its own meanwhile, which is what we want anyway.
        let _ = tx.unbounded_send(Message::Closed(Reason::ConnectRemoteClose));
    }
    let deadline = Instant::now() + CLOSE_GRACE;
    while scx.connections.count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(PERSISTENCE_SETTLE).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_string_escapes_quotes_and_backslashes() {
        let quoted = toml_string(Path::new("/tmp/a \"b\"\\c")).expect("a UTF-8 path is accepted");
        assert_eq!(quoted, r#""/tmp/a \"b\"\\c""#);
    }
}
