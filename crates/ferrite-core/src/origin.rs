//! Which web pages may open our WebSockets (the gateway's `/dashboard`, the broker's `/mqtt`): the `Origin` check
//! made before the upgrade, one rule for both.
//!
//! Browsers attach `Origin` to every WebSocket handshake and let any page open a socket to any host, so without
//! this check every page the user visits could read the live feed and publish (`commands/...`) through a gateway
//! or broker on their machine or network (on loopback, anonymously). Admitted are:
//! - requests without `Origin`: not from a browser (curl, our node and Python tests, `tokio-tungstenite`);
//! - the same origin: `Origin`'s host and port are the request's `Host` (the dashboard served by this gateway).
//!   On a server that listens on loopback only, the host must also be a loopback name (`localhost`,
//!   `*.localhost`, `127.x.y.z`, `[::1]`): a page whose name an attacker re-points at 127.0.0.1 (DNS rebinding)
//!   is "same origin" by `Host`, but is not the user's;
//! - the origins in the allow list (`--allowed-origins`), compared exactly after normalising case and default ports.
//!
//! Refused by default, and admitted only when listed: `Origin: null` (any page can send it from a sandboxed
//! iframe, so admitting it would admit every page) and other ports of localhost (each is another application).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The allow-list entry that admits every origin.
pub const ANY_ORIGIN: &str = "*";

/// One entry of the allow list: `scheme://host[:port]`, `null`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AllowedOrigin {
    /// An origin, normalised (see [`normalize`]).
    Origin(String),
    /// `null`: file:// pages and sandboxed iframes.
    Null,
    /// `*`: every origin (not recommended).
    Any,
}

/// Why an allow-list entry is not an origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid allowed origin {0:?}: expected scheme://host[:port] as a browser sends it \
     (e.g. https://dash.example.com or http://localhost:3000), \"null\" or \"*\""
)]
pub struct OriginError(pub String);

impl FromStr for AllowedOrigin {
    type Err = OriginError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let entry = entry.trim();
        match entry {
            ANY_ORIGIN => Ok(AllowedOrigin::Any),
            "null" => Ok(AllowedOrigin::Null),
            _ => normalize(entry).map(AllowedOrigin::Origin).ok_or_else(|| OriginError(entry.to_owned())),
        }
    }
}

impl fmt::Display for AllowedOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowedOrigin::Origin(origin) => f.write_str(origin),
            AllowedOrigin::Null => f.write_str("null"),
            AllowedOrigin::Any => f.write_str(ANY_ORIGIN),
        }
    }
}

/// `scheme://host[:port]` in lower case, without a default port (80 for http/ws, 443 for https/wss), or `None`
/// when `origin` is not of that form (a path, user info, a query, an empty host or a bad port).
pub fn normalize(origin: &str) -> Option<String> {
    let (scheme, host, port) = split(origin)?;
    Some(match port {
        Some(port) if Some(port) != default_port(&scheme) => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// An origin's scheme, host and explicit port, in lower case.
fn split(origin: &str) -> Option<(String, String, Option<u16>)> {
    let (scheme, authority) = origin.split_once("://")?;
    let valid_scheme = scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid_scheme {
        return None;
    }
    let (host, port) = split_authority(authority)?;
    Some((scheme.to_ascii_lowercase(), host, port))
}

/// `host[:port]` (an IPv6 host in brackets) into the lower-case host and the port, or `None` when malformed.
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    if authority.is_empty()
        || authority.contains(['/', '?', '#', '@', ' ', '\\'])
        || authority.chars().any(char::is_control)
    {
        return None;
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() || (!host.starts_with('[') && host.contains(':')) {
        return None;
    }
    let port = match port {
        Some(port) => Some(port.parse::<u16>().ok()?),
        None => None,
    };
    Some((host.to_ascii_lowercase(), port))
}

/// True for names that always mean this machine: `localhost` and its subdomains, 127.0.0.0/8 and `[::1]`.
fn is_loopback_host(host: &str) -> bool {
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    let bare = host.strip_prefix('[').and_then(|host| host.strip_suffix(']')).unwrap_or(host);
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Why a WebSocket handshake's `Origin` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Another site, or `null`, or a malformed `Origin`.
    Foreign { origin: String },
    /// Same origin by `Host`, but a non-loopback name on a loopback server (DNS rebinding).
    Rebinding { origin: String },
}

impl Refusal {
    /// The origin refused, as sent.
    pub fn origin(&self) -> &str {
        match self {
            Refusal::Foreign { origin } | Refusal::Rebinding { origin } => origin,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = self.origin();
        let allow = match normalize(origin) {
            Some(normalized) => normalized,
            None if origin == "null" => "null".to_owned(),
            None => "<scheme://host:port>".to_owned(),
        };
        match self {
            Refusal::Foreign { .. } => write!(
                f,
                "origin {origin:?} may not open this WebSocket: only pages served from this address and the origins in \
                 --allowed-origins may (to admit it, start ferrite with --allowed-origins {allow} \
                 or FERRITE_ALLOWED_ORIGINS={allow})"
            ),
            Refusal::Rebinding { .. } => write!(
                f,
                "origin {origin:?} may not open this WebSocket: this server listens on loopback, and a page under \
                 another name than localhost may be a DNS-rebinding attack (if it is yours, start ferrite with \
                 --allowed-origins {allow} or FERRITE_ALLOWED_ORIGINS={allow})"
            ),
        }
    }
}

/// The rule for `Origin` of one listener (a WebSocket's handshake, or the REST API's cross-origin requests).
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    allowed: Vec<AllowedOrigin>,
    /// The listener is on loopback only: same-origin pages must be under a loopback name.
    loopback: bool,
    /// Other ports of the request's own host whose pages count as ours: the REST API admits the dashboard
    /// served by the gateway beside it (same machine name, the gateway's port). See [`OriginPolicy::with_sibling_ports`].
    siblings: Vec<u16>,
}

impl OriginPolicy {
    pub fn new(allowed: Vec<AllowedOrigin>, loopback: bool) -> OriginPolicy {
        OriginPolicy { allowed, loopback, siblings: Vec::new() }
    }

    /// Also admits pages served on these ports of the host the request names, under the same rules as the
    /// same origin (on loopback, only under a loopback name): `ferrite up` lets the dashboard on the gateway's
    /// port call the REST API on the registry's, whatever name the browser reached the machine by.
    pub fn with_sibling_ports(mut self, ports: impl IntoIterator<Item = u16>) -> OriginPolicy {
        self.siblings.extend(ports);
        self
    }

    /// True when the allow list holds `*`.
    pub fn admits_any(&self) -> bool {
        self.allowed.contains(&AllowedOrigin::Any)
    }

    /// Decides on a handshake with these `Origin` and `Host` headers (`None` when absent or not text).
    pub fn check(&self, origin: Option<&str>, host: Option<&str>) -> Result<(), Refusal> {
        let Some(origin) = origin else { return Ok(()) };
        if self.admits_any() {
            return Ok(());
        }
        let listed = match normalize(origin) {
            Some(normalized) => {
                self.allowed.iter().any(|allowed| *allowed == AllowedOrigin::Origin(normalized.clone()))
            }
            None => origin.trim() == "null" && self.allowed.contains(&AllowedOrigin::Null),
        };
        if listed {
            return Ok(());
        }
        let foreign = || Refusal::Foreign { origin: origin.to_owned() };
        let (scheme, origin_host, origin_port) = split(origin).ok_or_else(foreign)?;
        let (request_host, request_port) = host.and_then(split_authority).ok_or_else(foreign)?;
        // A browser leaves the default port out of both headers; compare the ports they stand for.
        let origin_port = origin_port.or_else(|| default_port(&scheme));
        let request_port = request_port.or_else(|| default_port(&scheme));
        let sibling = origin_port.is_some_and(|port| self.siblings.contains(&port));
        if origin_host != request_host || (origin_port != request_port && !sibling) {
            return Err(foreign());
        }
        if self.loopback && !is_loopback_host(&request_host) {
            return Err(Refusal::Rebinding { origin: origin.to_owned() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(allowed: &[&str], loopback: bool) -> OriginPolicy {
        let allowed = allowed.iter().map(|entry| entry.parse().expect("a valid entry")).collect();
        OriginPolicy::new(allowed, loopback)
    }

    #[test]
    fn normalizes_origins() {
        assert_eq!(normalize("HTTPS://Dash.Example.com:443").as_deref(), Some("https://dash.example.com"));
        assert_eq!(normalize("http://localhost:3000").as_deref(), Some("http://localhost:3000"));
        assert_eq!(normalize("http://[::1]:80").as_deref(), Some("http://[::1]"));
        for bad in [
            "",
            "null",
            "localhost:3000",
            "http://",
            "http://a/b",
            "http://a:x",
            "http://a:70000",
            "http://u@a",
            "1x://a",
        ] {
            assert_eq!(normalize(bad), None, "{bad:?}");
        }
        assert!("https://a.example/".parse::<AllowedOrigin>().is_err());
        assert_eq!("null".parse::<AllowedOrigin>(), Ok(AllowedOrigin::Null));
        assert_eq!("*".parse::<AllowedOrigin>(), Ok(AllowedOrigin::Any));
    }

    #[test]
    fn admits_no_origin_same_origin_and_the_list() {
        let open = policy(&[], false);
        assert_eq!(open.check(None, Some("dash.example.com")), Ok(()));
        assert_eq!(open.check(Some("https://dash.example.com"), Some("dash.example.com")), Ok(()));
        assert_eq!(open.check(Some("http://dash.example.com:8080"), Some("DASH.example.com:8080")), Ok(()));
        assert!(open.check(Some("https://evil.example"), Some("dash.example.com")).is_err());
        assert!(open.check(Some("http://dash.example.com:8081"), Some("dash.example.com:8080")).is_err());
        assert!(open.check(Some("https://dash.example.com"), None).is_err());

        let local = policy(&["https://app.example.com", "http://localhost:3000"], true);
        assert_eq!(local.check(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")), Ok(()));
        assert_eq!(local.check(Some("http://localhost:8080"), Some("localhost:8080")), Ok(()));
        assert_eq!(local.check(Some("http://[::1]:8080"), Some("[::1]:8080")), Ok(()));
        assert_eq!(local.check(Some("https://APP.example.com:443"), Some("127.0.0.1:8080")), Ok(()));
        assert_eq!(local.check(Some("http://localhost:3000"), Some("127.0.0.1:8080")), Ok(()));
        // Another localhost port is another application.
        assert!(matches!(
            local.check(Some("http://localhost:3001"), Some("localhost:8080")),
            Err(Refusal::Foreign { .. })
        ));
        // DNS rebinding: same origin by Host, but not a loopback name.
        assert!(matches!(
            local.check(Some("http://evil.example:8080"), Some("evil.example:8080")),
            Err(Refusal::Rebinding { .. })
        ));
        assert!(matches!(local.check(Some("null"), Some("127.0.0.1:8080")), Err(Refusal::Foreign { .. })));
        assert_eq!(policy(&["null"], true).check(Some("null"), Some("127.0.0.1:8080")), Ok(()));
        assert_eq!(policy(&["*"], true).check(Some("https://evil.example"), Some("127.0.0.1:8080")), Ok(()));
    }

    #[test]
    fn sibling_ports_admit_the_dashboard_beside_the_api() {
        let api = policy(&[], true).with_sibling_ports([8080]);
        assert_eq!(api.check(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8081")), Ok(()));
        assert_eq!(api.check(Some("http://localhost:8080"), Some("localhost:8081")), Ok(()));
        assert_eq!(api.check(Some("http://127.0.0.1:8081"), Some("127.0.0.1:8081")), Ok(()));
        // Another host, another port, or a rebinding name stays refused.
        assert!(api.check(Some("http://localhost:8080"), Some("127.0.0.1:8081")).is_err());
        assert!(api.check(Some("http://127.0.0.1:3000"), Some("127.0.0.1:8081")).is_err());
        assert!(matches!(
            api.check(Some("http://evil.example:8080"), Some("evil.example:8081")),
            Err(Refusal::Rebinding { .. })
        ));
        let lan = policy(&[], false).with_sibling_ports([8080]);
        assert_eq!(lan.check(Some("http://10.0.0.5:8080"), Some("10.0.0.5:8081")), Ok(()));
        assert!(lan.check(Some("http://10.0.0.6:8080"), Some("10.0.0.5:8081")).is_err());
    }

    #[test]
    fn refusals_name_the_flag() {
        let refusal = policy(&[], true).check(Some("https://evil.example"), Some("127.0.0.1:8080")).unwrap_err();
        let text = refusal.to_string();
        assert!(text.contains("--allowed-origins https://evil.example"), "{text}");
        assert!(text.contains("FERRITE_ALLOWED_ORIGINS"), "{text}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5_000))]

        /// Any header values: never a panic, and an origin that is neither listed nor the request's own host is refused.
        #[test]
        fn arbitrary_headers_never_panic(origin in any::<Option<String>>(), host in any::<Option<String>>(), loopback in any::<bool>()) {
            let policy = policy(&["https://app.example.com"], loopback);
            let decision = policy.check(origin.as_deref(), host.as_deref());
            if let Some(origin) = &origin
                && normalize(origin).as_deref() != Some("https://app.example.com")
                && host.is_none()
            {
                prop_assert!(decision.is_err());
            }
            if origin.is_none() {
                prop_assert!(decision.is_ok());
            }
        }

        /// A listed origin is admitted whatever case or explicit default port the browser sends.
        #[test]
        fn listed_origins_match_after_normalising(host in "[a-z][a-z0-9-]{0,20}(\\.[a-z]{2,5}){0,2}", upper in any::<bool>(), port in prop::option::of(1u16..)) {
            let origin = match port { Some(port) => format!("https://{host}:{port}"), None => format!("https://{host}") };
            let policy = policy(&[origin.as_str()], true);
            let sent = if upper { origin.to_ascii_uppercase().replacen("HTTPS", "https", 1) } else { origin.clone() };
            prop_assert_eq!(policy.check(Some(&sent), Some("127.0.0.1:8080")), Ok(()));
        }
    }
}
