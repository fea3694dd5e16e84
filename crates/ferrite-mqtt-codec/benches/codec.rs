//! Decode and encode of MQTT 5 PUBLISH packets by this codec, with rumqttc's v5 `mqttbytes` codec on the same
//! packets as the reference in the same run: a small PUBLISH (50-byte topic, 64-byte payload) at QoS 0 and 1, a
//! 64 KiB one, and the fan-out of one message to 1,000 subscribers (each with its own packet identifier and output
//! buffer). Compare the `ferrite` and `rumqttc` lines of each group.

use std::hint::black_box;
use std::num::NonZeroU16;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ferrite_mqtt_codec::{
    Delivery, MAX_PACKET_SIZE, MqttStr, Packet, Properties, ProtocolVersion, Publish, PublishFrame, QoS, SharedPublish,
    decode,
};
use rumqttc::v5::mqttbytes::QoS as RQoS;
use rumqttc::v5::mqttbytes::v5::{Packet as RPacket, Publish as RPublish};

const V5: ProtocolVersion = ProtocolVersion::V5;
const SUBSCRIBERS: u16 = 1_000;

/// A 50-byte topic.
const TOPIC: &str = "sensors/building-07/floor-3/room-12/sim-0042/tempC";

struct Case {
    name: &'static str,
    ours: Publish,
    theirs: RPublish,
    bytes: Bytes,
}

fn case(name: &'static str, qos: QoS, payload_len: usize) -> Case {
    assert_eq!(TOPIC.len(), 50);
    let payload = Bytes::from((0..payload_len).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let packet_id = (qos != QoS::AtMostOnce).then(|| NonZeroU16::new(42).expect("non-zero"));
    let ours = Publish {
        dup: false,
        qos,
        retain: false,
        topic: MqttStr::from_static(TOPIC),
        packet_id,
        properties: Properties::default(),
        payload: payload.clone(),
    };
    let rqos = match qos {
        QoS::AtMostOnce => RQoS::AtMostOnce,
        QoS::AtLeastOnce => RQoS::AtLeastOnce,
        QoS::ExactlyOnce => RQoS::ExactlyOnce,
    };
    let mut theirs = RPublish::new(TOPIC, rqos, payload, None);
    theirs.pkid = packet_id.map_or(0, NonZeroU16::get);
    let mut bytes = BytesMut::new();
    Packet::Publish(ours.clone()).encode(V5, &mut bytes).expect("encodable");
    // Both codecs write the same bytes for these packets, so both decode the same input.
    let mut reference = BytesMut::new();
    RPacket::Publish(theirs.clone()).write(&mut reference, None).expect("encodable");
    assert_eq!(bytes, reference, "{name}: the two encoders agree");
    Case { name, ours, theirs, bytes: bytes.freeze() }
}

fn cases() -> Vec<Case> {
    vec![
        case("small_qos0", QoS::AtMostOnce, 64),
        case("small_qos1", QoS::AtLeastOnce, 64),
        case("64KiB_qos1", QoS::AtLeastOnce, 64 * 1024),
    ]
}

fn decoding(c: &mut Criterion) {
    for case in cases() {
        let mut group = c.benchmark_group(format!("decode/{}", case.name));
        group.throughput(Throughput::Bytes(case.bytes.len() as u64));
        group.bench_function("ferrite", |b| {
            b.iter_batched(
                || BytesMut::from(&case.bytes[..]),
                |mut buf| decode(&mut buf, V5, MAX_PACKET_SIZE).expect("valid").expect("complete"),
                BatchSize::SmallInput,
            )
        });
        group.bench_function("rumqttc", |b| {
            b.iter_batched(
                || BytesMut::from(&case.bytes[..]),
                |mut buf| RPacket::read(&mut buf, None).expect("valid"),
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

fn encoding(c: &mut Criterion) {
    for case in cases() {
        let mut group = c.benchmark_group(format!("encode/{}", case.name));
        group.throughput(Throughput::Bytes(case.bytes.len() as u64));
        let ours = Packet::Publish(case.ours.clone());
        let mut buf = BytesMut::new();
        group.bench_function("ferrite", |b| {
            b.iter(|| {
                buf.clear();
                ours.encode(V5, &mut buf).expect("encodable");
                black_box(&buf);
            })
        });
        let theirs = RPacket::Publish(case.theirs.clone());
        group.bench_function("rumqttc", |b| {
            b.iter(|| {
                buf.clear();
                theirs.write(&mut buf, None).expect("encodable");
                black_box(&buf);
            })
        });
        group.finish();
    }
}

/// One received message delivered at QoS 1 to 1,000 subscribers, each with its own packet identifier and its own
/// connection output buffer: ours encodes once and builds a frame per subscriber (vectored-write ready), or also
/// copies each frame into the subscriber's buffer; rumqttc clones the packet and writes it whole per subscriber.
fn fan_out(c: &mut Criterion) {
    for case in cases().into_iter().filter(|case| case.name != "small_qos0") {
        let mut group = c.benchmark_group(format!("fan_out_1000/{}", case.name));
        group.throughput(Throughput::Elements(u64::from(SUBSCRIBERS)));
        if case.bytes.len() > 1024 {
            group.sample_size(10);
        }
        let mut frames: Vec<PublishFrame> = Vec::with_capacity(usize::from(SUBSCRIBERS));
        group.bench_function("ferrite_frames", |b| {
            b.iter(|| {
                frames.clear();
                let shared = SharedPublish::from_publish(V5, &case.ours).expect("encodable");
                for id in 1..=SUBSCRIBERS {
                    let delivery =
                        Delivery { qos: QoS::AtLeastOnce, packet_id: NonZeroU16::new(id), ..Default::default() };
                    frames.push(shared.frame(&delivery).expect("encodable"));
                }
                black_box(&frames);
            })
        });
        let mut outputs: Vec<BytesMut> = (0..SUBSCRIBERS).map(|_| BytesMut::new()).collect();
        group.bench_function("ferrite_copied", |b| {
            b.iter(|| {
                let shared = SharedPublish::from_publish(V5, &case.ours).expect("encodable");
                for (id, out) in (1..=SUBSCRIBERS).zip(outputs.iter_mut()) {
                    out.clear();
                    let delivery =
                        Delivery { qos: QoS::AtLeastOnce, packet_id: NonZeroU16::new(id), ..Default::default() };
                    shared.frame(&delivery).expect("encodable").write_to(out);
                }
                black_box(&outputs);
            })
        });
        group.bench_function("rumqttc", |b| {
            b.iter(|| {
                for (id, out) in (1..=SUBSCRIBERS).zip(outputs.iter_mut()) {
                    out.clear();
                    let mut publish = case.theirs.clone();
                    publish.pkid = id;
                    RPacket::Publish(publish).write(out, None).expect("encodable");
                }
                black_box(&outputs);
            })
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = decoding, encoding, fan_out
}
criterion_main!(benches);
