//! The HTTP/1 server under the gateway's routes, with the bounds `axum::serve` has no settings for.
//!
//! - A header-read timeout: a connection must send a whole request head within [`HEADER_READ_TIMEOUT`], and an
//!   idle keep-alive connection its next one (hyper runs the same timer between requests), or it is closed.
//!   A slowloris client trickling header bytes, or a socket opened and left silent, holds its file descriptor
//!   for that long at most.
//! - A cap on open connections, WebSockets included (the permit lives in the connection's I/O, which an upgraded
//!   WebSocket keeps): at the cap the accept loop stops accepting, so further connections wait in the kernel's
//!   listen queue, costing the process no file descriptor, until one closes. The file descriptors the broker
//!   and PostgreSQL need in `ferrite up` stay free. The cap is the browsers' (`--max-browsers`) plus
//!   [`HTTP_HEADROOM`] for pages, assets, `/metrics` and connections still sending their request.
//!
//! HTTP/1 only: browsers speak HTTP/2 only over TLS, which the gateway leaves to a proxy in front of it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How long a connection may take to send a request's head, and how long an idle keep-alive connection is kept.
/// Browsers send a head in one packet; ten seconds covers a slow mobile link, and bounds how long a silent
/// socket holds a file descriptor.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections beyond the browsers' cap: the dashboard page and its assets, `/metrics` scrapes, and sockets
/// still within their [`HEADER_READ_TIMEOUT`].
pub const HTTP_HEADROOM: usize = 128;

/// How long connections get to finish their requests at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Pause after a failed accept (out of file descriptors, say) before trying again, rather than spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The least time between two warnings that the connection cap was reached.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Serves `router` on `listener` until `signal` completes, with at most `max_connections` connections open.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    max_connections: usize,
    signal: impl Future<Output = ()>,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(max_connections));
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    let limited = metrics::counter!("ferrite_gateway_http_connection_limit_total");
    let mut last_warning: Option<Instant> = None;
    let mut signal = pin!(signal);
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                limited.increment(1);
                if last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(
                        max_connections,
                        "the gateway has the most HTTP connections it keeps open; new ones wait until one closes \
                         (raise --max-browsers if these are real browsers)"
                    );
                }
                tokio::select! {
                    () = &mut signal => break,
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            () = &mut signal => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::select! {
                        () = &mut signal => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        // Frames are small and written as soon as they are due: with Nagle's algorithm on, a write behind an
        // unacknowledged one waits for the browser's delayed ACK (40 ms on Linux), which was most of the p99.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a browser connection");
        }
        let io = Permitted { tcp, _permit: permit };
        connections.spawn(serve_connection(io, peer, router.clone(), stop.clone()));
    }
    stop.cancel();
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait()).await.is_err() {
        tracing::debug!(left = connections.len(), "some http connections did not finish in time");
    }
    Ok(())
}

async fn serve_connection(io: Permitted, peer: SocketAddr, router: Router, stop: CancellationToken) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request)
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let mut connection = pin!(builder.serve_connection(TokioIo::new(io), service).with_upgrades());
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = served {
        tracing::debug!(%peer, %error, "http connection ended with an error");
    }
}

/// A connection's socket with its place under the cap, released when the socket is dropped (for a WebSocket,
/// when the browser leaves: hyper hands this same I/O to the upgraded connection).
struct Permitted {
    tcp: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Permitted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Permitted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
