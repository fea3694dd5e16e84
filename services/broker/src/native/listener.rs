//! The accept loops: MQTT over TCP, over TLS, and over WebSocket (with the Origin rule of [`ferrite_core::origin`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrite_core::origin::OriginPolicy;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::connection;
use super::core::Core;
use super::transport::Transport;

/// After a failed `accept` (out of file descriptors, typically) the loop waits this long rather than spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// WebSocket subprotocols MQTT clients offer, in our order of preference (`mqttv3.1` is what old clients send).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Accepts on `listener` until shutdown and hands each connection (TCP_NODELAY set) to `serve` as a tracked task.
async fn accept_loop<F, Fut>(core: Arc<Core>, listener: TcpListener, name: &'static str, serve: F)
where
    F: Fn(Arc<Core>, TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = core.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                core.tasks.spawn(serve(core.clone(), stream, peer));
            }
            Err(error) => {
                tracing::warn!(%error, listener = name, "cannot accept");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

pub(crate) async fn serve_tcp(core: Arc<Core>, listener: TcpListener) {
    accept_loop(core, listener, "mqtt", |core, stream, peer| connection::serve(core, Transport::Tcp(stream), peer))
        .await;
}

pub(crate) async fn serve_tls(core: Arc<Core>, listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor) {
    accept_loop(core, listener, "mqtts", move |core, stream, peer| {
        let acceptor = acceptor.clone();
        async move {
            // The handshake counts against the connect deadline, like a WebSocket upgrade.
            match tokio::time::timeout(core.limits.connect_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => connection::serve(core, Transport::Tls(Box::new(tls)), peer).await,
                Ok(Err(error)) => {
                    metrics::counter!("ferrite_broker_tls_refused_total", "reason" => "handshake").increment(1);
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                }
                Err(_) => {
                    metrics::counter!("ferrite_broker_tls_refused_total", "reason" => "timeout").increment(1);
                }
            }
        }
    })
    .await;
}

/// The TLS server configuration from PEM files: the certificate chain and its private key.
pub(crate) fn tls_acceptor(config: &crate::TlsConfig) -> Result<tokio_rustls::TlsAcceptor, crate::BrokerError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls_error = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        crate::BrokerError::Tls(format!("{what} {}: {e}", path.display()))
    };
    let chain = CertificateDer::pem_file_iter(&config.cert_chain)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_error("certificate chain", &config.cert_chain, &e))?;
    if chain.is_empty() {
        return Err(tls_error("certificate chain", &config.cert_chain, &"no CERTIFICATE in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| tls_error("private key", &config.key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| tls_error("certificate and key", &config.cert_chain, &e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

pub(crate) async fn serve_ws(core: Arc<Core>, listener: TcpListener, policy: Arc<OriginPolicy>) {
    accept_loop(core, listener, "websocket", move |core, stream, peer| {
        let policy = policy.clone();
        async move { upgrade(core, stream, peer, &policy).await }
    })
    .await;
}

/// The WebSocket handshake within the connect deadline (a foreign `Origin` gets 403), then MQTT over it.
async fn upgrade(core: Arc<Core>, stream: TcpStream, peer: SocketAddr, policy: &OriginPolicy) {
    let max = core.limits.max_packet_size as usize;
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(max + 16);
    config.max_frame_size = Some(max + 16);
    // The callback's signature is tungstenite's: its error is a whole HTTP response.
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        let header = |name: &str| request.headers().get(name).and_then(|value| value.to_str().ok());
        if let Err(refusal) = policy.check(header("origin"), header("host")) {
            metrics::counter!("ferrite_broker_ws_refused_total", "reason" => "origin").increment(1);
            tracing::debug!(%peer, origin = refusal.origin(), "websocket refused: {refusal}");
            let mut forbidden = ErrorResponse::new(Some(format!("{refusal}\n")));
            *forbidden.status_mut() = StatusCode::FORBIDDEN;
            return Err(forbidden);
        }
        let offered = header("sec-websocket-protocol").unwrap_or_default();
        let chosen = SUBPROTOCOLS.iter().find(|wanted| offered.split(',').any(|offer| offer.trim() == **wanted));
        if let Some(chosen) = chosen {
            response.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(chosen));
        }
        Ok(response)
    };
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config));
    match tokio::time::timeout(core.limits.connect_timeout, handshake).await {
        Ok(Ok(ws)) => connection::serve(core, Transport::Ws(Box::new(ws)), peer).await,
        Ok(Err(error)) => tracing::debug!(%peer, %error, "websocket handshake failed"),
        Err(_) => {
            metrics::counter!("ferrite_broker_ws_refused_total", "reason" => "timeout").increment(1);
        }
    }
}
