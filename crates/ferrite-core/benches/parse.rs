//! Micro-benchmarks of the per-message hot path shared by the ingester, the gateway and the broker:
//! classifying a topic, parsing a reading payload in each of its three forms, and MQTT topic-filter
//! matching (per message and filter on fan-out) and covering (per subscription, against ACL patterns).

use std::hint::black_box;

use chrono::{TimeZone, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferrite_core::{CONTENT_TYPE_PROTOBUF, Topic, filter_covers, filter_matches, parse_readings};
use ferrite_proto::prost::Message;
use ferrite_proto::v1;

fn topics(c: &mut Criterion) {
    let mut group = c.benchmark_group("topic_parse");
    group.throughput(Throughput::Elements(1));
    for (name, topic) in [
        ("reading", "sensors/sim-0042/temperature"),
        ("batch", "sensors/sim-0042"),
        ("status", "devices/sim-0042/status"),
        ("malformed", "sensors/bad id!/temperature"),
        ("other", "control/lights/living-room"),
    ] {
        group.bench_function(name, |b| b.iter(|| Topic::parse(black_box(topic))));
    }
    group.finish();
}

fn payloads(c: &mut Criterion) {
    let received_at = Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).single().expect("valid date");
    let reading = Topic::parse("sensors/sim-0042/temperature");
    let batch = Topic::parse("sensors/sim-0042");
    let protobuf = v1::Reading {
        value: 21.5,
        ts: Some(ferrite_proto::prost_types::Timestamp { seconds: 1_764_072_000, nanos: 123_000_000 }),
        unit: "C".into(),
    }
    .encode_to_vec();
    let mut group = c.benchmark_group("payload_parse");
    group.throughput(Throughput::Elements(1));
    group
        .bench_function("plain_number", |b| b.iter(|| parse_readings(&reading, black_box(b"21.5"), None, received_at)));
    let json = br#"{"value": 21.5, "ts": 1764072000123, "unit": "C"}"#;
    group.bench_function("json", |b| b.iter(|| parse_readings(&reading, black_box(json), None, received_at)));
    let json_rfc3339 = br#"{"value":21.5,"ts":"2026-11-25T12:00:00.123456Z"}"#;
    group.bench_function("json_rfc3339", |b| {
        b.iter(|| parse_readings(&reading, black_box(json_rfc3339), None, received_at))
    });
    group.bench_function("protobuf", |b| {
        b.iter(|| parse_readings(&reading, black_box(&protobuf), Some(CONTENT_TYPE_PROTOBUF), received_at))
    });
    let json_batch = br#"{"ts": 1764072000123, "metrics": {"temperature": 21.5, "humidity": 40.2, "co2": 612}}"#;
    group.bench_function("json_batch_3_metrics", |b| {
        b.iter(|| parse_readings(&batch, black_box(json_batch), None, received_at))
    });
    group.finish();
}

fn filters(c: &mut Criterion) {
    let topic = "sensors/sim-0042/temperature";
    let mut group = c.benchmark_group("filter_match");
    group.throughput(Throughput::Elements(1));
    for (name, filter) in [
        ("exact", "sensors/sim-0042/temperature"),
        ("plus", "sensors/+/temperature"),
        ("hash", "sensors/#"),
        ("miss_first_level", "devices/+/status"),
        ("miss_last_level", "sensors/+/humidity"),
    ] {
        group.bench_function(name, |b| b.iter(|| filter_matches(black_box(filter), black_box(topic))));
    }
    group.finish();

    let mut group = c.benchmark_group("filter_cover");
    group.throughput(Throughput::Elements(1));
    for (name, pattern, filter) in [
        ("hash_covers_plus", "sensors/#", "sensors/+/temperature"),
        ("plus_covers_literal", "commands/+/response", "commands/sim-0042/response"),
        ("plus_misses_hash", "commands/+/response", "commands/#"),
    ] {
        group.bench_function(name, |b| b.iter(|| filter_covers(black_box(pattern), black_box(filter))));
    }
    group.finish();
}

criterion_group!(benches, topics, payloads, filters);
criterion_main!(benches);
