//! Micro-benchmarks of the gateway's per-message work: matching a topic against many browsers' MQTT filters
//! (the fan-out scan over `ferrite_core::filter_matches`; one filter at a time is benchmarked in
//! ferrite-core's `parse` bench), and rendering a reading as the JSON frame browsers receive.

use std::hint::black_box;

use chrono::{TimeZone, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferrite_core::filter_matches;
use ferrite_gateway::protocol::render;

fn filters(c: &mut Criterion) {
    let topic = "sensors/sim-0042/temperature";
    // One message against the filters of 100 dashboards, each watching its own device and all statuses.
    let many: Vec<String> =
        (0..100).flat_map(|n| [format!("sensors/sim-{n:04}/#"), "devices/+/status".to_owned()]).collect();
    let mut group = c.benchmark_group("filter_match_200_filters");
    group.throughput(Throughput::Elements(many.len() as u64));
    group.bench_function("scan", |b| {
        b.iter(|| many.iter().filter(|filter| filter_matches(filter, black_box(topic))).count())
    });
    group.finish();
}

fn frames(c: &mut Criterion) {
    let at = Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).single().expect("valid date");
    let mut group = c.benchmark_group("render_frame");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sensor_update_json", |b| {
        b.iter(|| {
            render(
                black_box("sensors/sim-0042/temperature"),
                black_box(br#"{"value": 21.5, "ts": 1764072000123, "unit": "C"}"#),
                None,
                at,
            )
        })
    });
    group.bench_function("mqtt_message_text", |b| {
        b.iter(|| render(black_box("control/lights/living-room"), black_box(b"on"), None, at))
    });
    group.finish();
}

criterion_group!(benches, filters, frames);
criterion_main!(benches);
