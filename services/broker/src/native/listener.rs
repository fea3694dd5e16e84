//! The accept loops: MQTT over TCP, and MQTT over WebSocket (with the Origin rule of [`ferrite_core::origin`]).

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

pub(crate) async fn serve_tcp(core: Arc<Core>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = core.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let core_for_task = core.clone();
                core.tasks.spawn(connection::serve(core_for_task, Transport::Tcp(stream), peer));
            }
            Err(error) => {
                tracing::warn!(%error, "mqtt listener cannot accept");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

pub(crate) async fn serve_ws(core: Arc<Core>, listener: TcpListener, policy: Arc<OriginPolicy>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = core.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let core_for_task = core.clone();
                let policy = policy.clone();
                core.tasks.spawn(async move { upgrade(core_for_task, stream, peer, &policy).await });
            }
            Err(error) => {
                tracing::warn!(%error, "websocket listener cannot accept");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
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
