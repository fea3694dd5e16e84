//! What trace propagation adds to each fleet publish, without span export and with it.
//!
//! `cargo run --release -p ferrite-telemetry --example propagation_cost [iterations]`
//!
//! Each iteration does what the fleet does per reading besides the MQTT publish itself: format the topic
//! and payload (the baseline), then, in the traced variant, the `fleet.publish` span, its context as user
//! properties, and entering the span. The first runs happen before any subscriber is installed (spans not
//! exported, as in a deployment without `OTEL_EXPORTER_OTLP_ENDPOINT`); the last with spans exported into memory.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ferrite_telemetry::propagation;
use tracing::Span;

fn baseline(n: u64) -> (String, String) {
    let topic = format!("sensors/sim-{:04}/temperature", n % 1000);
    let payload = format!(r#"{{"value":{},"ts":{},"unit":"C"}}"#, n as f64 * 0.1, 1_700_000_000_000 + n);
    (topic, payload)
}

fn traced(n: u64) -> (String, String, Vec<(String, String)>) {
    let (topic, payload) = baseline(n);
    let span = if propagation::enabled() {
        tracing::info_span!("fleet.publish", device = "sim-0001", metric = "temperature")
    } else {
        Span::none()
    };
    let properties = propagation::inject_properties(&span);
    let _entered = span.enter();
    (topic, payload, properties)
}

fn time<T>(iterations: u64, mut f: impl FnMut(u64) -> T) -> Duration {
    let started = Instant::now();
    for n in 0..iterations {
        black_box(f(n));
    }
    started.elapsed()
}

fn per_op(total: Duration, iterations: u64) -> f64 {
    total.as_nanos() as f64 / iterations as f64
}

fn main() -> anyhow::Result<()> {
    let iterations: u64 = std::env::args().nth(1).map(|n| n.parse()).transpose()?.unwrap_or(200_000);
    // Warm up the allocator and caches, then take the best of alternating rounds, so that other work on the
    // machine inflates neither side alone.
    time(iterations / 10, baseline);
    let (mut base, mut off) = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        base = base.min(per_op(time(iterations, baseline), iterations));
        off = off.min(per_op(time(iterations, traced), iterations));
    }
    println!("baseline (topic + payload):           {base:8.1} ns/reading");
    println!("traced, spans not exported:           {off:8.1} ns/reading (+{:.1} ns)", off - base);

    let (_guard, recorder) = ferrite_telemetry::init_recording("propagation-cost")?;
    let exported = iterations.min(50_000);
    let on = per_op(time(exported, traced), exported);
    let spans = recorder.spans();
    let carried = traced(0).2;
    println!("traced, spans exported into memory:   {on:8.1} ns/reading (+{:.1} ns)", on - base);
    println!("spans exported: {}, user properties per reading: {carried:?}", spans.len());
    Ok(())
}
