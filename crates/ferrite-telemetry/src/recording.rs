//! Spans exported into memory, for tests that check what a trace looks like.
//!
//! [`init_recording`] installs the same subscriber as [`crate::init`] (filter from `RUST_LOG`, the
//! OpenTelemetry layer, trace context propagation on) but exports every finished span into a
//! [`SpanRecorder`] at once, instead of over OTLP. Log lines go through the test harness only with `TEST_LOG`.

use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};

pub use opentelemetry::trace::{SpanId, TraceId};
pub use opentelemetry_sdk::trace::SpanData;

use crate::TelemetryGuard;

/// Finished spans, in the order they ended. Cheap to clone; clones share the spans.
#[derive(Clone, Debug, Default)]
pub struct SpanRecorder {
    spans: Arc<Mutex<Vec<SpanData>>>,
}

impl SpanRecorder {
    /// Every span finished so far.
    pub fn spans(&self) -> Vec<SpanData> {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl SpanExporter for SpanRecorder {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner).extend(batch);
        Ok(())
    }
}

/// Installs the global subscriber with spans exported into the returned recorder.
///
/// Spans are exported as each one ends (no batching), so a test sees a span as soon as its work is done.
pub fn init_recording(service: &'static str) -> anyhow::Result<(TelemetryGuard, SpanRecorder)> {
    let recorder = SpanRecorder::default();
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    let provider = SdkTracerProvider::builder().with_simple_exporter(recorder.clone()).with_resource(resource).build();
    let fmt = std::env::var_os("TEST_LOG").map(|_| {
        use tracing_subscriber::Layer;
        tracing_subscriber::fmt::layer().compact().with_test_writer().boxed()
    });
    let guard = crate::install(service, Some(provider), fmt)?;
    Ok((guard, recorder))
}
