//! A span per REST and gRPC request that continues the caller's trace from its `traceparent` header.
//!
//! gRPC metadata travels as HTTP/2 headers, so one extraction serves both faces; a request without
//! a valid `traceparent` (or while spans are not exported) gets a span of its own, which still gives
//! the request's log lines their context.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use ferrite_telemetry::propagation;
use tracing::{Instrument, Span};

/// Axum middleware: runs the request inside an `http.request` span (`axum::middleware::from_fn`).
pub(crate) async fn http_span(request: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        "http.request",
        method = %request.method(),
        path = %request.uri().path(),
        status = tracing::field::Empty
    );
    propagation::set_parent_from_headers(&span, request.headers());
    let response = next.run(request).instrument(span.clone()).await;
    span.record("status", response.status().as_u16());
    response
}

/// For tonic's `Server::trace_fn`: the `grpc.request` span each call runs in (its path names the method).
pub(crate) fn grpc_span(request: &axum::http::Request<()>) -> Span {
    let span = tracing::info_span!("grpc.request", path = %request.uri().path());
    propagation::set_parent_from_headers(&span, request.headers());
    span
}
