//! The MQTT-over-WebSocket port, in front of rmqtt: refuses browsers sent by foreign web pages.
//!
//! A browser lets any web page open a WebSocket to any address, `ws://127.0.0.1:8083/mqtt` included, and says which
//! page asked in the `Origin` header; on a loopback broker such a connection is anonymous. rmqtt 0.24 accepts the upgrade
//! itself and offers no hook to look at its headers (its handshake callback is fixed, and the function that takes an
//! accepted stream is private), so this port is ours: it reads the HTTP request head (bounded in size and time),
//! answers 403 to a foreign `Origin`, and otherwise hands the connection to rmqtt's WebSocket listener on a private
//! loopback port, prefixed with a PROXY protocol v1 line so that rmqtt (and the authorizer, whose per-source budget
//! depends on it) still sees the client's own address. From then on it copies bytes both ways.
//!
//! Allowed: no `Origin` at all (mqtt.js in Node, Paho, every non-browser client), an `Origin` whose host and port are
//! the request's `Host` (a page served from the broker's own address), and the configured allow list.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The longest HTTP request head read before deciding; a browser's upgrade request is well under 2 KiB.
pub(crate) const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// How long rmqtt's private listener waits for our PROXY line; we send it at once.
pub(crate) const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Which `Origin`s may open a WebSocket besides the broker's own (see the module docs).
#[derive(Debug, Clone, Default)]
pub(crate) struct OriginPolicy {
    /// Lower-case, without a trailing `/`; `*` allows every origin.
    allowed: Vec<String>,
}

impl OriginPolicy {
    pub(crate) fn new(allowed: &[String]) -> Self {
        OriginPolicy { allowed: allowed.iter().map(|origin| normalize(origin)).collect() }
    }

    /// Whether a request with these `Origin` and `Host` headers may upgrade.
    pub(crate) fn admits(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        let origin = normalize(origin);
        if self.allowed.iter().any(|allowed| allowed == "*" || *allowed == origin) {
            return true;
        }
        // Same origin: the page came from the address the browser is now connecting to.
        let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
        host.is_some_and(|host| !authority.is_empty() && host.trim().eq_ignore_ascii_case(authority))
    }
}

fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// The value of header `name` in an HTTP request head (the first one).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Accepts browsers and other WebSocket clients on `public` and hands the admitted ones to rmqtt at `backend`.
pub(crate) async fn serve(public: TcpListener, backend: SocketAddr, policy: Arc<OriginPolicy>, deadline: Duration) {
    loop {
        match public.accept().await {
            Ok((client, peer)) => {
                let policy = policy.clone();
                tokio::spawn(async move {
                    if let Err(error) = relay(client, peer, backend, &policy, deadline).await {
                        tracing::debug!(%peer, %error, "websocket connection ended");
                    }
                });
            }
            Err(error) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(%error, "websocket listener cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn relay(
    mut client: TcpStream,
    peer: SocketAddr,
    backend: SocketAddr,
    policy: &OriginPolicy,
    deadline: Duration,
) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let Ok(head) = tokio::time::timeout(deadline, read_head(&mut client)).await else {
        metrics::counter!("ferrite_broker_ws_refused_total", "reason" => "timeout").increment(1);
        return Ok(());
    };
    let Some(head) = head? else {
        metrics::counter!("ferrite_broker_ws_refused_total", "reason" => "bad_request").increment(1);
        client.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await?;
        return Ok(());
    };
    let text = String::from_utf8_lossy(&head);
    let origin = header(&text, "origin");
    if !policy.admits(origin, header(&text, "host")) {
        metrics::counter!("ferrite_broker_ws_refused_total", "reason" => "origin").increment(1);
        tracing::debug!(%peer, origin = origin.unwrap_or_default(), "websocket refused: foreign Origin");
        let body = "this Origin may not open the broker's WebSocket (see --allowed-origins)\n";
        let response = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        client.write_all(response.as_bytes()).await?;
        return Ok(());
    }
    let mut upstream = TcpStream::connect(backend).await?;
    let _ = upstream.set_nodelay(true);
    let mut first = proxy_line(peer, backend).into_bytes();
    first.extend_from_slice(&head);
    upstream.write_all(&first).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// Reads up to the end of the HTTP request head (`\r\n\r\n`); `None` if it is longer than [`MAX_REQUEST_HEAD`]
/// or the client closed first. Whatever follows the head in the same read is kept, for rmqtt.
async fn read_head(client: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let read = client.read(&mut chunk).await?;
        if read == 0 {
            return Ok(None);
        }
        let searched_from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..read]);
        if head[searched_from..].windows(4).any(|window| window == b"\r\n\r\n") {
            return Ok(Some(head));
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Ok(None);
        }
    }
}

/// The PROXY protocol v1 line that tells rmqtt who the client is.
fn proxy_line(peer: SocketAddr, backend: SocketAddr) -> String {
    match (peer, backend) {
        (SocketAddr::V4(peer), SocketAddr::V4(backend)) => {
            format!("PROXY TCP4 {} {} {} {}\r\n", peer.ip(), backend.ip(), peer.port(), backend.port())
        }
        (SocketAddr::V6(peer), SocketAddr::V6(backend)) => {
            format!("PROXY TCP6 {} {} {} {}\r\n", peer.ip(), backend.ip(), peer.port(), backend.port())
        }
        // Mixed families: the client's address as an IPv6 one (v4-mapped), which the line allows.
        (peer, backend) => {
            let as_v6 = |addr: SocketAddr| match addr {
                SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped(),
                SocketAddr::V6(v6) => *v6.ip(),
            };
            format!("PROXY TCP6 {} {} {} {}\r\n", as_v6(peer), as_v6(backend), peer.port(), backend.port())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1:8083\r\nOrigin: https://evil.example\r\n\r\n";

    #[test]
    fn headers_are_found_case_insensitively() {
        assert_eq!(header(HEAD, "origin"), Some("https://evil.example"));
        assert_eq!(header(HEAD, "HOST"), Some("127.0.0.1:8083"));
        assert_eq!(header(HEAD, "sec-websocket-protocol"), None);
        // The request line is not a header, even if it holds a colon.
        assert_eq!(header("GET http://x HTTP/1.1\r\n\r\n", "get http"), None);
    }

    #[test]
    fn origins() {
        let none = OriginPolicy::new(&[]);
        assert!(none.admits(None, Some("127.0.0.1:8083")), "non-browser clients send no Origin");
        assert!(!none.admits(Some("https://evil.example"), Some("127.0.0.1:8083")));
        assert!(none.admits(Some("http://127.0.0.1:8083"), Some("127.0.0.1:8083")), "same origin");
        assert!(none.admits(Some("HTTP://LOCALHOST:8083/"), Some("localhost:8083")), "same origin, any case");
        assert!(!none.admits(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8083")), "another port is another origin");
        assert!(!none.admits(Some("null"), Some("127.0.0.1:8083")), "a sandboxed page");
        assert!(!none.admits(Some("https://evil.example"), None));

        let listed = OriginPolicy::new(&["https://app.example.com/".into()]);
        assert!(listed.admits(Some("https://app.example.com"), Some("broker:8083")));
        assert!(!listed.admits(Some("https://app.example.com.evil.example"), Some("broker:8083")));
        assert!(OriginPolicy::new(&["*".into()]).admits(Some("https://evil.example"), None));
    }

    #[test]
    fn proxy_lines() {
        let v4 = |s: &str| s.parse::<SocketAddr>().expect("an address");
        assert_eq!(
            proxy_line(v4("10.0.0.1:5000"), v4("127.0.0.1:9000")),
            "PROXY TCP4 10.0.0.1 127.0.0.1 5000 9000\r\n"
        );
        assert_eq!(proxy_line(v4("[::1]:5000"), v4("[::1]:9000")), "PROXY TCP6 ::1 ::1 5000 9000\r\n");
        assert_eq!(
            proxy_line(v4("[2001:db8::1]:5000"), v4("127.0.0.1:9000")),
            "PROXY TCP6 2001:db8::1 ::ffff:127.0.0.1 5000 9000\r\n"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5000))]

        /// Any request head a client sends is read without panicking, and an Origin that is neither listed nor the
        /// request's own Host is refused.
        #[test]
        fn any_request_head_is_judged_without_panicking(head in ".{0,300}", origin in "[a-z]{1,12}", host in "[0-9.:]{0,20}") {
            let _ = header(&head, "origin");
            let policy = OriginPolicy::new(&["https://allowed.example".into()]);
            let foreign = format!("https://{origin}.evil.example");
            proptest::prop_assert!(!policy.admits(Some(&foreign), Some(&host)));
            proptest::prop_assert!(policy.admits(None, Some(&host)));
        }
    }
}
