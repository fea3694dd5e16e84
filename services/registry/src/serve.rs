//! The registry's two listeners under bounds, so that no client (slow, silent or greedy) can hold the process's
//! file descriptors or its tasks: the broker in the same process needs them.
//!
//! - Each listener serves at most `max_connections` connections at once. A slot is taken *before* `accept`, so
//!   further clients wait in the kernel's listen backlog, holding no descriptor of ours, until one closes.
//! - REST (HTTP/1.1): the request head must arrive within [`HEADER_READ_TIMEOUT`] (slowloris), and hyper restarts
//!   that clock whenever a kept-alive connection waits for its next request, so it is the idle timeout too;
//!   the body must arrive whole within [`BODY_READ_TIMEOUT`] and be at most [`MAX_BODY_BYTES`];
//!   a panic in a handler becomes a logged 500 with a JSON error instead of a dropped connection.
//! - gRPC (HTTP/2): per-call timeout, concurrent calls per connection and streams, HTTP/2 and TCP keepalive,
//!   message sizes, and a connection that sends no byte for [`GRPC_IDLE_TIMEOUT`] is closed (the keepalive pings
//!   keep every live client talking, so only silent or half-open connections meet it).

use std::any::Any;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::{FutureExt, Stream};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tower::ServiceExt;

use ferrite_api::http::ApiError;

/// Connections each listener (REST, gRPC) serves at once unless `--api-max-connections` says otherwise.
/// Well below the usual descriptor limits, so that a flood of API clients leaves the broker its sockets.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// REST: a client must send a whole request head within this time, and a kept-alive connection is closed when its
/// next request head has not arrived within it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// REST: a request body must arrive whole within this time after its head (a slow upload holds a connection slot).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// REST: the largest request body (every body of this API is a small JSON document; commands' params included).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// gRPC: a call that has not answered (or started its stream) within this time is cancelled with DEADLINE_EXCEEDED.
/// Above the longest a command may wait for its device (`ferrite_commands::MAX_TIMEOUT`, 5 minutes).
pub const GRPC_REQUEST_TIMEOUT: Duration = Duration::from_secs(330);

/// gRPC: calls in progress on one connection; more wait for a slot (a client cannot fan one connection out without bound).
pub const GRPC_CONCURRENCY_PER_CONNECTION: usize = 64;

/// gRPC: HTTP/2 streams a client may open on one connection (open streams include presence watches).
pub const GRPC_MAX_CONCURRENT_STREAMS: u32 = 256;

/// gRPC: a ping goes to a connection that has been quiet this long, and a peer that does not answer within
/// [`HTTP2_KEEPALIVE_TIMEOUT`] is disconnected.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// gRPC: how long the answer to a keepalive ping may take.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// gRPC: TCP keepalive, so that the kernel notices peers that vanished without a FIN.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// gRPC: a connection from which no byte arrives for this long is closed. Three keepalive intervals: a live client
/// answers the pings, so only a silent socket (e.g. one that never finishes the HTTP/2 preface) gets here.
pub const GRPC_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// gRPC: the largest message decoded or encoded (tonic's decoding default, now also bounding what we send);
/// the API host's one limit, shared with the services served beside the registry.
pub use ferrite_api::GRPC_MAX_MESSAGE_BYTES;

/// After a failed `accept` (e.g. out of descriptors) the listener pauses this long instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The listeners' bounds that a user may tune.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections each listener serves at once (at least 1).
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits { max_connections: DEFAULT_MAX_CONNECTIONS }
    }
}

/// Serves `router` on `listener` over HTTP/1.1 until `shutdown`, then lets the requests in flight finish and returns
/// when every connection has closed.
///
/// HTTP/1.1 only: hyper's head timeout starts with the connection, while a protocol sniffer (h2c) would first wait
/// for bytes without any deadline.
pub(crate) async fn serve_rest(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let router = router
        .layer(axum::middleware::from_fn(bounded_body))
        .layer(axum::middleware::from_fn(catch_panic))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    while let Some((stream, permit)) = accept(&listener, &slots, &shutdown, "rest").await {
        let _ = stream.set_nodelay(true);
        let service =
            TowerToHyperService::new(router.clone().map_request(|request: Request<Incoming>| request.map(Body::new)));
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            let outcome = tokio::select! {
                outcome = connection.as_mut() => outcome,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = outcome {
                tracing::debug!(error = %err, "rest connection ended with an error");
            }
            drop(permit);
        });
    }
    // Every connection gives its slot back when it closes: holding them all means all are closed.
    let _all = slots.acquire_many(u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX)).await;
    Ok(())
}

/// Waits for a free slot, then for a connection; `None` once `shutdown` is cancelled.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
    name: &'static str,
) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.ok()?,
            () = shutdown.cancelled() => return None,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return None,
        };
        match accepted {
            Ok((stream, _peer)) => return Some((stream, permit)),
            Err(err) => {
                metrics::counter!("ferrite_registry_accept_errors_total", "listener" => name).increment(1);
                tracing::warn!(listener = name, error = %err, "accepting a connection failed; pausing");
                drop(permit);
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// The connections of the gRPC listener: at most `limits.max_connections` open at once, each with TCP keepalive and
/// closed after [`GRPC_IDLE_TIMEOUT`] without a byte from the client. Ends when `shutdown` is cancelled.
pub(crate) fn grpc_incoming(
    listener: TcpListener,
    limits: ServerLimits,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<Guarded, io::Error>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    futures::stream::unfold((listener, slots, shutdown), |(listener, slots, shutdown)| async move {
        let (stream, permit) = accept(&listener, &slots, &shutdown, "grpc").await?;
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        if let Err(err) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(error = %err, "cannot set TCP keepalive");
        }
        Some((Ok(Guarded::new(stream, permit, GRPC_IDLE_TIMEOUT)), (listener, slots, shutdown)))
    })
}

/// A gRPC connection: holds its listener slot until dropped, and fails its reads once no byte has arrived for
/// `idle` (hyper then closes the connection).
pub(crate) struct Guarded {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    last_read: Instant,
    timer: Pin<Box<Sleep>>,
}

impl Guarded {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, idle: Duration) -> Self {
        let now = Instant::now();
        Guarded { stream, _permit: permit, idle, last_read: now, timer: Box::pin(tokio::time::sleep_until(now + idle)) }
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(outcome) => {
                if buf.filled().len() > before {
                    this.last_read = Instant::now();
                }
                Poll::Ready(outcome)
            }
            Poll::Pending => {
                // The timer is moved only when it fires, not on every read.
                while this.timer.as_mut().poll(cx).is_ready() {
                    let deadline = this.last_read + this.idle;
                    if deadline <= Instant::now() {
                        metrics::counter!("ferrite_registry_idle_closed_total", "listener" => "grpc").increment(1);
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no data from the client for {}s", this.idle.as_secs()),
                        )));
                    }
                    this.timer.as_mut().reset(deadline);
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Reads the whole request body within [`BODY_READ_TIMEOUT`] and [`MAX_BODY_BYTES`] before the handler runs,
/// so a slow or endless upload gets a 408 or 413 instead of holding the connection.
async fn bounded_body(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {}s", BODY_READ_TIMEOUT.as_secs()),
        )
        .into_response(),
        Ok(Err(err)) if is_length_limit(&err) => too_large(),
        Ok(Err(_)) => ApiError::new(StatusCode::BAD_REQUEST, "the request body could not be read").into_response(),
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
    }
}

fn too_large() -> Response {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body larger than {MAX_BODY_BYTES} bytes"))
        .into_response()
}

/// Whether reading a body failed because it exceeded the limit (axum wraps http-body-util's `LengthLimitError`).
fn is_length_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if cause.to_string().contains("length limit exceeded") {
            return true;
        }
        source = cause.source();
    }
    false
}

/// A panic in a handler becomes a 500 with `{"error": "internal error"}`, logged with its cause and counted,
/// instead of an empty reply on a dropped connection.
async fn catch_panic(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            metrics::counter!("ferrite_registry_http_panics_total").increment(1);
            tracing::error!(%method, path, cause = panic_message(panic.as_ref()), "a REST handler panicked");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

#[cfg(test)]
mod tests {
    use axum::routing::get;

    use super::*;

    async fn boom() -> &'static str {
        panic!("boom")
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_json_500() {
        let router = Router::new().route("/boom", get(boom)).layer(axum::middleware::from_fn(catch_panic));
        let response = router
            .oneshot(Request::builder().uri("/boom").body(Body::empty()).expect("a request"))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1024).await.expect("a body");
        assert_eq!(&body[..], br#"{"error":"internal error"}"#);
    }

    #[tokio::test]
    async fn bodies_are_bounded() {
        let router = Router::new()
            .route("/echo", axum::routing::post(|body: axum::body::Bytes| async move { body.len().to_string() }))
            .layer(axum::middleware::from_fn(bounded_body));
        let post = |body: Body| Request::builder().method("POST").uri("/echo").body(body).expect("a request");
        let small = router.clone().oneshot(post(Body::from("hello"))).await.expect("infallible");
        assert_eq!(small.status(), StatusCode::OK);
        let large = vec![b'x'; MAX_BODY_BYTES + 1];
        let unannounced = Body::from_stream(futures::stream::iter([Ok::<_, io::Error>(large)]));
        let refused = router.oneshot(post(unannounced)).await.expect("infallible");
        assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
