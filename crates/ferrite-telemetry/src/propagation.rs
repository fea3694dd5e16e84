//! W3C trace context across process boundaries: in MQTT 5 user properties and in HTTP/gRPC headers.
//!
//! A reading's trace starts at the publisher's span; its context travels as the user properties
//! `traceparent` (and `tracestate`, when not empty), which brokers pass through unchanged (MQTT 5 requires it),
//! and each consumer continues it with a span whose remote parent is the publisher's span.
//! HTTP and gRPC requests carry the same two names as headers (gRPC metadata is HTTP/2 headers).
//!
//! Everything here is cheap when spans are not exported: [`enabled`] is one atomic load, and
//! [`inject_properties`] returns an empty list without touching the span, so a load generator pays nothing
//! for a trace nobody collects. Only valid contexts are ever injected.
//!
//! W3C trace context is the wire format, whatever global propagator another library sets, so the functions
//! here use [`TraceContextPropagator`] directly; [`crate::init`] also installs it as the global one.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C name of the header (and MQTT user property) holding the parent span.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C name of the header (and MQTT user property) holding vendor trace state.
pub const TRACESTATE: &str = "tracestate";

/// Set once a subscriber with an OpenTelemetry layer is installed ([`crate::init`] with OTLP, or recording).
static ENABLED: AtomicBool = AtomicBool::new(false);

pub(crate) fn set_enabled() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// True when this process exports spans, so trace context is worth creating and carrying.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// True when spans are exported and these MQTT user properties carry a trace context to continue.
///
/// Consumers check this before creating a per-message span: a message without context would only start
/// a one-span trace of its own, and a process without export has no use for the span.
pub fn is_traced(properties: &[(String, String)]) -> bool {
    enabled() && properties.iter().any(|(key, _)| key == TRACEPARENT)
}

/// The trace context of `span` as MQTT user properties; empty when spans are not exported or the span
/// is disabled, so nothing is added to the message.
pub fn inject_properties(span: &Span) -> Vec<(String, String)> {
    let mut properties = Vec::new();
    if enabled() && !span.is_disabled() {
        TraceContextPropagator::new().inject_context(&span.context(), &mut PropertiesInjector(&mut properties));
    }
    properties
}

/// Makes the publisher's span, found in `properties`, the parent of `span`. False when there was no valid
/// context (or `span` is disabled or already started), and `span` stays a root.
pub fn set_parent_from_properties(span: &Span, properties: &[(String, String)]) -> bool {
    set_parent(span, &PropertiesExtractor(properties))
}

/// Writes the trace context of `span` into `headers` (`traceparent`, and `tracestate` when not empty).
pub fn inject_headers(span: &Span, headers: &mut HeaderMap) {
    if enabled() && !span.is_disabled() {
        TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
    }
}

/// Makes the caller's span, found in the request's `traceparent` header, the parent of `span`.
/// False when the request carried no valid context.
pub fn set_parent_from_headers(span: &Span, headers: &HeaderMap) -> bool {
    if !headers.contains_key(TRACEPARENT) {
        return false;
    }
    set_parent(span, &HeaderExtractor(headers))
}

fn set_parent(span: &Span, extractor: &dyn Extractor) -> bool {
    if !enabled() || span.is_disabled() {
        return false;
    }
    let parent = TraceContextPropagator::new().extract_with_context(&Context::new(), extractor);
    parent.has_active_span() && span.set_parent(parent).is_ok()
}

struct PropertiesInjector<'a>(&'a mut Vec<(String, String)>);

impl Injector for PropertiesInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty tracestate says nothing; it would only cost bytes on every message.
        if !value.is_empty() {
            self.0.push((key.to_owned(), value));
        }
    }
}

struct PropertiesExtractor<'a>(&'a [(String, String)]);

impl Extractor for PropertiesExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(name, _)| name == key).map(|(_, value)| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        // Both names and every value the propagator writes are valid header text; a failure would only
        // leave the header out.
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn extracts_a_valid_context_only() {
        let propagator = TraceContextPropagator::new();
        let properties = vec![(TRACEPARENT.to_owned(), PARENT.to_owned()), ("unit".to_owned(), "C".to_owned())];
        let cx = propagator.extract(&PropertiesExtractor(&properties));
        assert_eq!(cx.span().span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(cx.span().span_context().is_remote());
        for broken in ["", "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"] {
            let properties = vec![(TRACEPARENT.to_owned(), broken.to_owned())];
            assert!(!propagator.extract(&PropertiesExtractor(&properties)).has_active_span(), "{broken:?}");
        }
    }

    #[test]
    fn headers_round_trip() {
        let propagator = TraceContextPropagator::new();
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(PARENT));
        let cx = propagator.extract(&HeaderExtractor(&headers));
        let mut out = HeaderMap::new();
        propagator.inject_context(&cx, &mut HeaderInjector(&mut out));
        assert_eq!(out.get(TRACEPARENT).and_then(|v| v.to_str().ok()), Some(PARENT));
        assert!(!out.contains_key(TRACESTATE), "an empty tracestate is left out");
    }

    #[test]
    fn nothing_is_injected_without_a_span_context() {
        // No OpenTelemetry layer in this test process: a span has no context to carry.
        let span = tracing::info_span!("no.layer");
        assert!(inject_properties(&span).is_empty());
        assert!(!set_parent_from_properties(&span, &[(TRACEPARENT.to_owned(), PARENT.to_owned())]));
    }
}
