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
//! The rule is the gateway's, [`ferrite_core::origin::OriginPolicy`]: no `Origin` at all (mqtt.js in Node, Paho, every
//! non-browser client), an `Origin` whose host and port are the request's `Host` (a page served from the broker's own
//! address; under a loopback name when the broker listens on loopback), and the configured allow list.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrite_core::origin::OriginPolicy;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The longest HTTP request head read before deciding; a browser's upgrade request is well under 2 KiB.
pub(crate) const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// How long rmqtt's private listener waits for our PROXY line; we send it at once.
pub(crate) const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

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
    if let Err(refusal) = policy.check(origin, header(&text, "host")) {
        metrics::counter!("ferrite_broker_ws_refused_total", "reason" => "origin").increment(1);
        tracing::debug!(%peer, origin = refusal.origin(), "websocket refused: {refusal}");
        let body = format!("{refusal}\n");
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
            let policy = OriginPolicy::new(vec!["https://allowed.example".parse().expect("an origin")], true);
            let foreign = format!("https://{origin}.evil.example");
            proptest::prop_assert!(policy.check(Some(&foreign), Some(&host)).is_err());
            proptest::prop_assert!(policy.check(None, Some(&host)).is_ok());
        }
    }
}
