//! Micro-benchmark of the ingester's per-batch CPU work before the database: classifying a full batch
//! (the default 2,000 messages) of fleet readings into rows.

use std::hint::black_box;

use bytes::Bytes;
use chrono::Utc;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ferrite_ingester::batch::Batch;

/// The ingester's default batch size.
const MESSAGES: usize = 2_000;

fn classify(c: &mut Criterion) {
    let messages: Vec<(String, Bytes)> = (0..MESSAGES)
        .map(|n| {
            let topic = format!("sensors/sim-{:04}/temperature", n % 100);
            let payload = format!(r#"{{"value":{}.5,"ts":{}}}"#, n % 40, 1_764_072_000_000u64 + n as u64);
            (topic, Bytes::from(payload))
        })
        .collect();
    let now = Utc::now();
    let mut group = c.benchmark_group("ingest_batch");
    group.throughput(Throughput::Elements(MESSAGES as u64));
    group.bench_function("classify_2000_json_readings", |b| {
        b.iter_batched(
            Batch::default,
            |mut batch| {
                for (topic, payload) in &messages {
                    batch.classify(black_box(topic), payload, None, false, now);
                }
                batch
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, classify);
criterion_main!(benches);
