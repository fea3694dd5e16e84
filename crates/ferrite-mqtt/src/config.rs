//! Session configuration and broker URLs (`mqtt://host:port`, `ws://host:port/mqtt`).

use std::fmt;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::LastWill;

/// Keep-alive for our own clients: short enough that a dead peer is noticed within a minute.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// How many of our QoS 1/2 publishes may wait for their acknowledgement at once; bounds memory
/// while the broker is away, and is far above what one connection needs at full speed.
pub const DEFAULT_MAX_UNACKED: usize = 10_000;

/// Where a broker listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerUrl {
    /// `mqtt://host:port` (port defaults to 1883).
    Tcp { host: String, port: u16 },
    /// `ws://host:port/path` (port defaults to 8083, path to `/mqtt`).
    Ws { url: String, port: u16 },
}

/// Why a broker URL was not understood.
#[derive(Debug, thiserror::Error)]
#[error("invalid broker url {url:?}: {reason} (expected mqtt://host:port or ws://host:port/mqtt)")]
pub struct UrlError {
    url: String,
    reason: &'static str,
}

impl std::str::FromStr for BrokerUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let error = |reason| UrlError { url: url.to_owned(), reason };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| error("missing scheme"))?;
        let (authority, path) = match rest.find('/') {
            Some(idx) => rest.split_at(idx),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                (host, Some(port.parse::<u16>().map_err(|_| error("bad port"))?))
            }
            _ => (authority, None),
        };
        if host.is_empty() {
            return Err(error("missing host"));
        }
        match scheme {
            "mqtt" | "tcp" => {
                if !path.is_empty() && path != "/" {
                    return Err(error("mqtt:// urls take no path"));
                }
                Ok(BrokerUrl::Tcp { host: host.to_owned(), port: port.unwrap_or(1883) })
            }
            "ws" => {
                let port = port.unwrap_or(8083);
                let path = if path.is_empty() { "/mqtt" } else { path };
                Ok(BrokerUrl::Ws { url: format!("ws://{host}:{port}{path}"), port })
            }
            "mqtts" | "wss" => Err(error("TLS urls are not supported by Ferrite's clients yet")),
            _ => Err(error("unknown scheme")),
        }
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerUrl::Tcp { host, port } => write!(f, "mqtt://{host}:{port}"),
            BrokerUrl::Ws { url, .. } => f.write_str(url),
        }
    }
}

/// What a [`crate::Session`] connects with. `Debug` shows the username, never the password.
#[derive(Clone)]
pub struct SessionConfig {
    pub broker: BrokerUrl,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    /// False keeps the broker-side session (subscriptions and queued messages) across disconnects.
    pub clean_start: bool,
    /// MQTT 5 session expiry in seconds; only meaningful with `clean_start = false`.
    pub session_expiry: Option<u32>,
    pub keep_alive: Duration,
    pub last_will: Option<LastWill>,
    /// Subscribed on connect, and again whenever the broker has no session for us.
    pub subscriptions: Vec<(String, QoS)>,
    /// When true, received QoS 1/2 messages are acknowledged only by [`crate::Session::ack`].
    pub manual_acks: bool,
    pub max_unacked: usize,
    /// The largest packet we accept, announced to the broker in CONNECT so that it drops larger
    /// messages for us instead of sending them. [`SessionConfig::new`] sets
    /// [`ferrite_core::limits::MAX_RECEIVED_PACKET_SIZE`]; `None` keeps rumqttc's own limit (10 KiB), which it
    /// enforces by dropping the connection when a larger packet arrives (and a persistent session then
    /// replays the same message on every reconnect).
    pub max_packet_size: Option<u32>,
    /// MQTT 5 Receive Maximum: how many QoS 1/2 messages the broker may have in flight to us.
    /// A consumer that acknowledges in batches needs at least its batch size.
    pub receive_maximum: Option<u16>,
}

impl std::fmt::Debug for SessionConfig {
    // By hand: the credentials hold a password (`ferrite_core::Credentials` is the type that cannot show it).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("broker", &self.broker)
            .field("client_id", &self.client_id)
            .field("username", &self.credentials.as_ref().map(|(user, _)| user))
            .field("clean_start", &self.clean_start)
            .field("session_expiry", &self.session_expiry)
            .field("keep_alive", &self.keep_alive)
            .field("last_will", &self.last_will)
            .field("subscriptions", &self.subscriptions)
            .field("manual_acks", &self.manual_acks)
            .field("max_unacked", &self.max_unacked)
            .field("max_packet_size", &self.max_packet_size)
            .field("receive_maximum", &self.receive_maximum)
            .finish()
    }
}

impl SessionConfig {
    /// A clean-session client with our defaults.
    pub fn new(broker: BrokerUrl, client_id: impl Into<String>) -> Self {
        Self {
            broker,
            client_id: client_id.into(),
            credentials: None,
            clean_start: true,
            session_expiry: None,
            keep_alive: DEFAULT_KEEP_ALIVE,
            last_will: None,
            subscriptions: Vec::new(),
            manual_acks: false,
            max_unacked: DEFAULT_MAX_UNACKED,
            max_packet_size: Some(ferrite_core::limits::MAX_RECEIVED_PACKET_SIZE),
            receive_maximum: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, expected: Option<BrokerUrl>) {
        assert_eq!(url.parse::<BrokerUrl>().ok(), expected, "{url}");
    }

    #[test]
    fn parses_urls() {
        check("mqtt://127.0.0.1:1883", Some(BrokerUrl::Tcp { host: "127.0.0.1".into(), port: 1883 }));
        check("mqtt://broker", Some(BrokerUrl::Tcp { host: "broker".into(), port: 1883 }));
        check("tcp://broker:1884", Some(BrokerUrl::Tcp { host: "broker".into(), port: 1884 }));
        check("ws://h:8083/mqtt", Some(BrokerUrl::Ws { url: "ws://h:8083/mqtt".into(), port: 8083 }));
        check("ws://h", Some(BrokerUrl::Ws { url: "ws://h:8083/mqtt".into(), port: 8083 }));
        check("h:1883", None);
        check("http://h:1", None);
        check("mqtt://:1883", None);
        check("mqtt://h:port", None);
        check("mqtts://h", None);
    }
}
