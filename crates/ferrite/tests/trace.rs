//! End-to-end traces with real parts: a reading's one trace from the fleet through the embedded broker to the
//! ingester's commit and to a browser on the gateway; and the registry's REST and gRPC requests continuing
//! the caller's `traceparent`. Spans are exported into memory by the same subscriber set-up as production.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use ferrite_fleet::Fleet;
use ferrite_gateway::Gateway;
use ferrite_ingester::Ingester;
use ferrite_proto::v1::device_registry_client::DeviceRegistryClient;
use ferrite_registry::Registry;
use ferrite_telemetry::recording::{SpanData, SpanId};
use ferrite_telemetry::{SpanRecorder, TelemetryGuard};
use ferrite_testkit::{TestDb, WAIT_DEADLINE, wait_for};
use ferrite_testkit_broker::TestBroker;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// A caller's context, as a client would send it: trace `4bf9...4736`, parent span `00f0...02b7`, sampled.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// One recording subscriber for the whole test process (a subscriber is installed once); tests tell their
/// spans apart by trace id.
fn recorder() -> SpanRecorder {
    static RECORDING: OnceLock<(TelemetryGuard, SpanRecorder)> = OnceLock::new();
    RECORDING
        .get_or_init(|| {
            ferrite_telemetry::init_recording("ferrite-trace-test").expect("no other subscriber is installed")
        })
        .1
        .clone()
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> impl Iterator<Item = &'a SpanData> {
    spans.iter().filter(move |span| span.name == name)
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.as_str().into_owned())
}

/// The spans of one reading's trace: the fleet's publish, the ingester's message and stored spans, the gateway's push.
struct ReadingTrace {
    publish: SpanData,
    message: SpanData,
    stored: SpanData,
    push: SpanData,
}

/// The first reading whose trace has reached both the ingester's commit and the gateway.
fn complete_trace(spans: &[SpanData]) -> Option<ReadingTrace> {
    named(spans, "fleet.publish").find_map(|publish| {
        let trace_id = publish.span_context.trace_id();
        let in_trace = |name: &str| named(spans, name).find(|span| span.span_context.trace_id() == trace_id).cloned();
        Some(ReadingTrace {
            publish: publish.clone(),
            message: in_trace("ingest.message")?,
            stored: in_trace("ingest.stored")?,
            push: in_trace("gateway.push")?,
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_reading_from_the_fleet_to_postgres_and_a_browser() -> anyhow::Result<()> {
    let recorder = recorder();
    let db = TestDb::new().await?;
    let broker = TestBroker::start().await?;
    let stop = CancellationToken::new();

    let mut config = ferrite_ingester::Config::new(broker.url());
    config.client_id = "ingester-trace".into();
    let ingester = Ingester::bind(config, db.pool().clone()).await?;
    let ingested = ingester.stats();
    let ingester = tokio::spawn(ingester.run(stop.clone()));
    wait_for("the ingester to subscribe", || std::future::ready(ingested.subscribed.load(Ordering::Relaxed))).await?;

    let mut config = ferrite_gateway::Config::new(broker.url());
    config.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let gateway = Gateway::bind(config).await?;
    let url = format!("ws://{}/dashboard", gateway.local_addr());
    let gateway = tokio::spawn(gateway.run(stop.clone()));
    let (mut browser, _) =
        tokio_tungstenite::connect_async(&url).await.with_context(|| format!("cannot open {url}"))?;
    let filters = ["sensors/trace-0001/#"];
    browser.send(Message::text(json!({"type": "subscribe", "topics": filters}).to_string())).await?;

    // One device publishing until stopped: its readings reach the browser once the gateway's subscription is live.
    let mut fleet = ferrite_fleet::Config::new(broker.url(), 1);
    fleet.prefix = "trace".into();
    fleet.interval = Duration::from_millis(50);
    let fleet = Fleet::bind(fleet)?;
    let fleet_stop = CancellationToken::new();
    let fleet = tokio::spawn(fleet.run(fleet_stop.clone()));

    let update = tokio::time::timeout(WAIT_DEADLINE, async {
        while let Some(frame) = browser.next().await {
            if let Message::Text(text) = frame? {
                let frame: Value = serde_json::from_str(text.as_str())?;
                if frame["type"] == "sensor-update" {
                    return Ok(frame);
                }
            }
        }
        bail!("the gateway closed the browser's connection")
    })
    .await
    .context("no reading reached the browser")??;
    assert_eq!(update["deviceId"], "trace-0001");

    wait_for("a reading's trace through the ingester and the gateway", || {
        std::future::ready(complete_trace(&recorder.spans()).is_some())
    })
    .await?;
    fleet_stop.cancel();
    fleet.await??;

    let spans = recorder.spans();
    let ReadingTrace { publish, message, stored, push } = complete_trace(&spans).context("checked above")?;
    assert_eq!(attribute(&publish, "device").as_deref(), Some("trace-0001"));
    assert!(publish.parent_span_id == SpanId::INVALID, "each reading starts its own trace");

    // fleet.publish -> (broker, user properties) -> ingest.message -> ingest.stored
    assert_eq!(message.parent_span_id, publish.span_context.span_id(), "the ingester continues the publisher's span");
    assert!(message.parent_span_is_remote, "its parent came over MQTT");
    assert_eq!(stored.span_context.trace_id(), publish.span_context.trace_id());
    assert_eq!(stored.parent_span_id, message.span_context.span_id());
    assert!(attribute(&message, "topic").is_some_and(|topic| topic.starts_with("sensors/trace-0001/")));

    // The commit serves many traces: it is a root of its own, linked both ways with the reading's spans.
    let commit_link = stored.links.links.first().context("ingest.stored links to its commit")?;
    let commit = named(&spans, "ingest.commit")
        .find(|span| span.span_context.span_id() == commit_link.span_context.span_id())
        .context("the linked ingest.commit span was exported")?;
    assert_ne!(commit.span_context.trace_id(), publish.span_context.trace_id());
    assert!(
        commit.links.links.iter().any(|link| link.span_context.span_id() == message.span_context.span_id()),
        "the commit links to the message it stored"
    );
    let stored_rows: u64 = attribute(commit, "stored").context("the commit records its rows")?.parse()?;
    assert!(stored_rows >= 1);

    // fleet.publish -> (broker) -> gateway.push
    assert_eq!(push.span_context.trace_id(), publish.span_context.trace_id());
    assert_eq!(push.parent_span_id, publish.span_context.span_id(), "the gateway continues the publisher's span");
    assert!(push.parent_span_is_remote);
    assert!(push.span_context.is_sampled());

    let readings: i64 =
        sqlx::query_scalar("SELECT count(*) FROM readings WHERE device_id = 'trace-0001'").fetch_one(db.pool()).await?;
    assert!(readings >= 1);

    stop.cancel();
    ingester.await??;
    gateway.await??;
    broker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_requests_continue_the_callers_trace() -> anyhow::Result<()> {
    let recorder = recorder();
    let db = TestDb::new().await?;
    let config = ferrite_registry::Config {
        grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        rest_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..ferrite_registry::Config::default()
    };
    let registry = Registry::bind(config, db.pool().clone()).await?;
    let (grpc, rest) = (registry.grpc_addr(), registry.rest_addr());
    let stop = CancellationToken::new();
    let registry = tokio::spawn(registry.run(stop.clone()));

    // REST, with a plain HTTP/1.1 client.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let request = hyper::Request::get(format!("http://{rest}/api/v1/devices"))
        .header("traceparent", TRACEPARENT)
        .body(http_body_util::Empty::new())?;
    let response = client.request(request).await?;
    assert_eq!(response.status(), 200);

    // gRPC, with the generated tonic client and the context in the call's metadata.
    let mut devices = DeviceRegistryClient::connect(format!("http://{grpc}")).await?;
    let mut request = tonic::Request::new(ferrite_proto::v1::ListDevicesRequest::default());
    request.metadata_mut().insert("traceparent", TRACEPARENT.parse()?);
    devices.list_devices(request).await?;

    // A request without a context starts a trace of its own.
    let response = client
        .request(hyper::Request::get(format!("http://{rest}/healthz")).body(http_body_util::Empty::new())?)
        .await?;
    assert_eq!(response.status(), 200);

    let continued = |name: &'static str| {
        let recorder = recorder.clone();
        move || {
            std::future::ready(
                named(&recorder.spans(), name).any(|span| span.span_context.trace_id().to_string() == TRACE_ID),
            )
        }
    };
    wait_for("the REST request's span", continued("http.request")).await?;
    wait_for("the gRPC call's span", continued("grpc.request")).await?;
    let spans = recorder.spans();
    let in_trace =
        |name: &str| named(&spans, name).find(|span| span.span_context.trace_id().to_string() == TRACE_ID).cloned();
    let http = in_trace("http.request").context("checked above")?;
    assert_eq!(http.parent_span_id.to_string(), PARENT_SPAN_ID);
    assert!(http.parent_span_is_remote);
    assert_eq!(attribute(&http, "path").as_deref(), Some("/api/v1/devices"));
    assert_eq!(attribute(&http, "status").as_deref(), Some("200"));
    let grpc_span = in_trace("grpc.request").context("checked above")?;
    assert_eq!(grpc_span.parent_span_id.to_string(), PARENT_SPAN_ID);
    assert_eq!(attribute(&grpc_span, "path").as_deref(), Some("/ferrite.v1.DeviceRegistry/ListDevices"));
    let health = named(&spans, "http.request")
        .find(|span| attribute(span, "path").as_deref() == Some("/healthz"))
        .context("the health check has a span too")?;
    assert_ne!(health.span_context.trace_id().to_string(), TRACE_ID);
    assert_eq!(health.parent_span_id, SpanId::INVALID);

    stop.cancel();
    tokio::time::timeout(WAIT_DEADLINE, registry).await???;
    Ok(())
}
