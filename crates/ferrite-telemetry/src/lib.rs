//! Tracing, OpenTelemetry export and Prometheus metrics, set up in one place for every service.
//!
//! # Layout
//! - [`init`]: the tracing subscriber: compact text locally, JSON with `FERRITE_LOG_FORMAT=json`,
//!   `RUST_LOG` wins over the default filter, spans exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//! - [`metrics_handle`]: the process-wide Prometheus recorder behind the `metrics` facade.
//! - [`MetricsServer`]: `/metrics`, `/healthz` (liveness) and `/readyz` on their own port, for services that serve
//!   no other HTTP.
//! - [`readiness`]: the checks `/readyz` runs (MQTT session subscribed, database reachable), process-wide.
//! - [`propagation`]: W3C trace context in MQTT 5 user properties and HTTP/gRPC headers, so one trace follows
//!   a reading from the fleet through the broker to the ingester and the gateway.
//! - [`recording`]: [`init_recording`], the same subscriber exporting spans into memory, for tests of traces.

pub mod propagation;
pub mod readiness;
pub mod recording;

pub use readiness::{CheckGuard, Readiness, readiness};
pub use recording::{SpanRecorder, init_recording};

use std::net::SocketAddr;
use std::sync::OnceLock;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// What we log when `RUST_LOG` is not set: our own info, and only warnings from chatty libraries.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,rumqttc=warn,h2=warn,tower=warn,hyper=warn";

/// Keeps the OpenTelemetry pipeline alive; dropping it flushes the spans still buffered.
#[must_use = "dropping the guard stops span export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("opentelemetry shutdown failed: {error}");
        }
    }
}

/// Installs the global tracing subscriber and the Prometheus recorder for a process named `service`.
///
/// The recorder goes in first, before any service starts: hot paths take their counter handles once
/// (`metrics::counter!` outside the loop), and a handle taken before a recorder exists stays a no-op.
pub fn init(service: &'static str) -> anyhow::Result<TelemetryGuard> {
    metrics_handle();
    let provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => Some(otlp_provider(service).with_context(|| {
            format!("cannot set up OpenTelemetry export to OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}")
        })?),
        _ => None,
    };
    install(service, provider, Some(fmt_layer()))
}

/// The log output layer, over the filter.
pub(crate) type FmtLayer =
    Box<dyn Layer<tracing_subscriber::layer::Layered<EnvFilter, tracing_subscriber::Registry>> + Send + Sync>;

/// Compact text, or JSON with `FERRITE_LOG_FORMAT=json`.
fn fmt_layer() -> FmtLayer {
    let json = std::env::var("FERRITE_LOG_FORMAT").is_ok_and(|format| format.eq_ignore_ascii_case("json"));
    if json {
        tracing_subscriber::fmt::layer().json().with_current_span(true).boxed()
    } else {
        tracing_subscriber::fmt::layer().compact().with_target(false).boxed()
    }
}

/// Installs the filter, `fmt` (when given) and, with a provider, the OpenTelemetry layer, as the global subscriber.
pub(crate) fn install(
    service: &'static str,
    provider: Option<SdkTracerProvider>,
    fmt: Option<FmtLayer>,
) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let otel = provider.as_ref().map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(service)));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .context("a tracing subscriber is already installed")?;
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        propagation::set_enabled();
    }
    Ok(TelemetryGuard { provider })
}

fn otlp_provider(service: &'static str) -> anyhow::Result<SdkTracerProvider> {
    // The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (and the other standard variables) itself.
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// The process-wide Prometheus recorder, installed on first use.
///
/// One recorder serves every service in the process, so `ferrite up` shows all of them on one page.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only when another recorder was installed first; ours then just stays empty.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// `/metrics` (Prometheus text format), `/healthz` (liveness: always `ok` while the process serves) and `/readyz`
/// (the process-wide [`readiness()`]: 200 or 503 with a JSON report), to merge into a service's router.
pub fn metrics_router() -> Router {
    let handle = metrics_handle();
    Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/healthz", get(|| std::future::ready("ok")))
        .route("/readyz", get(|| readiness::readyz(readiness().clone())))
}

/// A tiny HTTP server with [`metrics_router`], for services with no HTTP of their own.
pub struct MetricsServer {
    listener: tokio::net::TcpListener,
}

impl MetricsServer {
    /// Binds `addr` now, so a bad address fails before anything else starts.
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot bind metrics on {addr}"))?;
        Ok(Self { listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        axum::serve(self.listener, metrics_router())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .context("metrics server failed")
    }
}
