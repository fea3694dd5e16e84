//! Property tests over every decoder of `ferrite-core` that a device controls: topics, status payloads, and reading
//! payloads (plain number, JSON reading, JSON batch, protobuf `ferrite.v1.Reading` / `ReadingBatch`).
//!
//! Properties: nothing panics, whatever the bytes; what is accepted is well-formed (a valid device id and metric name,
//! a finite value, a bounded unit: never a garbage value); and what an encoder makes decodes to what it encoded.

use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use ferrite_core::device::is_valid_name;
use ferrite_core::{CONTENT_TYPE_PROTOBUF, DeviceId, Reading, Topic, parse_presence, parse_readings};
use ferrite_proto::prost::Message;
use ferrite_proto::prost_types::Timestamp;
use ferrite_proto::v1;
use proptest::prelude::*;

/// Cases per property: enough to reach odd corners, small enough to run in seconds.
const CASES: u32 = 5_000;

fn config() -> ProptestConfig {
    ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() }
}

fn received_at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).single().expect("a valid date")
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,64}"
}

/// Topic levels as a hostile device writes them: valid names, wildcards, NUL, `$`, empty, too long.
fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => name(),
        1 => Just(String::new()),
        1 => Just("+".to_owned()),
        1 => Just("#".to_owned()),
        1 => Just("\0".to_owned()),
        1 => Just("$SYS".to_owned()),
        1 => "[A-Za-z0-9_.-]{65,80}",
        2 => "\\PC{0,12}",
    ]
}

fn topic() -> impl Strategy<Value = String> {
    let root = prop_oneof![
        Just("sensors".to_owned()),
        Just("devices".to_owned()),
        Just("commands".to_owned()),
        Just("alerts".to_owned()),
        level(),
    ];
    (root, prop::collection::vec(level(), 0..5)).prop_map(|(root, rest)| {
        let mut levels = vec![root];
        levels.extend(rest);
        levels.join("/")
    })
}

/// Payloads as a hostile device sends them: random bytes, numbers in every spelling, JSON of every shape,
/// protobuf of both messages with fields at their edges.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        "\\PC{0,64}".prop_map(String::into_bytes),
        any::<f64>().prop_map(|value| value.to_string().into_bytes()),
        prop_oneof![
            Just("NaN"),
            Just("inf"),
            Just("-infinity"),
            Just("1e309"),
            Just("-0"),
            Just(" 21.5 \n"),
            Just("0x10")
        ]
        .prop_map(|text| text.as_bytes().to_vec()),
        json_value().prop_map(|json| json.to_string().into_bytes()),
        (any::<f64>(), prop::option::of(timestamp()), "\\PC{0,40}")
            .prop_map(|(value, ts, unit)| { v1::Reading { value, ts, unit }.encode_to_vec() }),
        (prop::option::of(timestamp()), prop::collection::hash_map("\\PC{0,70}", any::<f64>(), 0..8))
            .prop_map(|(ts, metrics)| v1::ReadingBatch { ts, metrics }.encode_to_vec()),
        Just(b"{".repeat(10_000)),
        Just(format!("{}1{}", "[".repeat(200), "]".repeat(200)).into_bytes()),
    ]
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        (any::<i64>(), any::<i32>()).prop_map(|(seconds, nanos)| Timestamp { seconds, nanos }),
        (0i64..4_000_000_000, 0i32..1_000_000_000).prop_map(|(seconds, nanos)| Timestamp { seconds, nanos }),
    ]
}

/// JSON readings and batches with hostile fields: wrong types, numbers past i64 and f64, far times, NUL,
/// unknown fields, long units, invalid metric names.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let number = prop_oneof![
        any::<f64>().prop_map(|value| serde_json::json!(value)),
        any::<i64>().prop_map(|value| serde_json::json!(value)),
        any::<u64>().prop_map(|value| serde_json::json!(value)),
        Just(serde_json::json!("21.5")),
        Just(serde_json::Value::Null),
    ];
    let ts = prop_oneof![
        any::<i64>().prop_map(|ms| serde_json::json!(ms)),
        any::<i64>().prop_map(|ms| serde_json::json!(ms.to_string())),
        Just(serde_json::json!("+275760-09-13T00:00:00Z")),
        Just(serde_json::json!("9999-12-31T23:59:59.999999999Z")),
        Just(serde_json::json!("2026-11-25T12:00:00+14:00")),
        Just(serde_json::json!(1.5)),
        "\\PC{0,30}".prop_map(|text| serde_json::json!(text)),
    ];
    let unit = prop_oneof![Just(serde_json::json!("C")), "\\PC{0,40}".prop_map(|text| serde_json::json!(text))];
    let reading = (number.clone(), prop::option::of(ts.clone()), prop::option::of(unit), any::<bool>()).prop_map(
        |(value, ts, unit, extra)| {
            let mut object = serde_json::Map::new();
            object.insert("value".into(), value);
            if let Some(ts) = ts {
                object.insert("ts".into(), ts);
            }
            if let Some(unit) = unit {
                object.insert("unit".into(), unit);
            }
            if extra {
                object.insert("\0".into(), serde_json::json!(0));
            }
            serde_json::Value::Object(object)
        },
    );
    let batch = (prop::option::of(ts), prop::collection::vec((prop_oneof![name(), "\\PC{0,70}"], number), 0..6))
        .prop_map(|(ts, metrics)| {
            let metrics: serde_json::Map<String, serde_json::Value> = metrics.into_iter().collect();
            match ts {
                Some(ts) => serde_json::json!({"ts": ts, "metrics": metrics}),
                None => serde_json::json!({"metrics": metrics}),
            }
        });
    prop_oneof![reading, batch]
}

/// What any accepted reading must be, whatever the payload was.
fn well_formed(topic: &Topic<'_>, readings: &[Reading]) -> Result<(), TestCaseError> {
    prop_assert!(!readings.is_empty(), "accepted without a reading");
    for reading in readings {
        prop_assert!(reading.value.is_finite(), "{:?}", reading);
        prop_assert!(is_valid_name(&reading.metric), "{:?}", reading);
        prop_assert!(reading.unit.as_ref().is_none_or(|unit| unit.len() <= 32 && !unit.is_empty()), "{:?}", reading);
        match topic {
            Topic::Reading { device, metric } => {
                prop_assert_eq!(&reading.device, device);
                prop_assert_eq!(&reading.metric, metric);
            }
            Topic::Batch { device } => prop_assert_eq!(&reading.device, device),
            other => prop_assert!(false, "readings from {:?}", other),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Any text classifies without a panic, and what names a device names a valid one.
    #[test]
    fn any_topic_classifies(topic in topic()) {
        match Topic::parse(&topic) {
            Topic::Reading { device, metric } => {
                prop_assert!(is_valid_name(device.as_str()) && is_valid_name(metric));
                prop_assert_eq!(format!("sensors/{device}/{metric}"), topic);
            }
            Topic::Batch { device } => prop_assert_eq!(format!("sensors/{device}"), topic),
            Topic::Status { device } => prop_assert_eq!(format!("devices/{device}/status"), topic),
            Topic::Command { device } => prop_assert_eq!(format!("commands/{device}"), topic),
            Topic::CommandResponse { device } => prop_assert_eq!(format!("commands/{device}/response"), topic),
            Topic::Alert { device } => prop_assert_eq!(format!("alerts/{device}"), topic),
            Topic::Malformed { reason } => prop_assert!(!reason.is_empty()),
            Topic::Other => prop_assert!(!topic.starts_with("sensors/") && !topic.starts_with("commands/") && !topic.starts_with("alerts/")),
        }
    }

    /// Arbitrary text too, not only our alphabet of levels.
    #[test]
    fn arbitrary_text_classifies(topic in "\\PC{0,100}") {
        let _ = Topic::parse(&topic);
    }

    /// Every topic the contract names parses back to its parts.
    #[test]
    fn contract_topics_round_trip(device in name(), metric in name()) {
        let id = DeviceId::new(device.clone()).expect("a valid id");
        let reading_topic = format!("sensors/{device}/{metric}");
        prop_assert_eq!(Topic::parse(&reading_topic), Topic::Reading { device: id.clone(), metric: &metric });
        let cases = [
            (format!("sensors/{device}"), Topic::Batch { device: id.clone() }),
            (format!("devices/{device}/status"), Topic::Status { device: id.clone() }),
            (format!("commands/{device}"), Topic::Command { device: id.clone() }),
            (format!("commands/{device}/response"), Topic::CommandResponse { device: id.clone() }),
            (format!("alerts/{device}"), Topic::Alert { device: id }),
        ];
        for (topic, expected) in &cases {
            prop_assert_eq!(&Topic::parse(topic), expected);
        }
    }

    /// Any payload on any topic, labelled protobuf or not, is readings that are well-formed or an error.
    #[test]
    fn any_payload_parses_or_is_refused(
        topic in prop_oneof![Just("sensors/d1/temperature".to_owned()), Just("sensors/d1".to_owned()), topic()],
        payload in payload(),
        content_type in prop::option::of(prop_oneof![Just(CONTENT_TYPE_PROTOBUF.to_owned()), Just("APPLICATION/X-PROTOBUF".to_owned()), "\\PC{0,20}"]),
    ) {
        let parsed = Topic::parse(&topic);
        if let Ok(readings) = parse_readings(&parsed, &payload, content_type.as_deref(), received_at()) {
            well_formed(&parsed, &readings)?;
        }
    }

    /// Status payloads: online, offline or an error.
    #[test]
    fn any_status_parses_or_is_refused(payload in payload()) {
        let _ = parse_presence(&payload);
    }

    /// A finite number as text reads back exactly (Rust prints the shortest text that round-trips).
    #[test]
    fn plain_numbers_round_trip(value in any::<f64>().prop_filter("finite", |value| value.is_finite())) {
        let readings = parse_readings(&Topic::parse("sensors/d1/t"), value.to_string().as_bytes(), None, received_at());
        let readings = readings.map_err(|err| TestCaseError::fail(err.to_string()))?;
        prop_assert_eq!(readings.len(), 1);
        prop_assert_eq!(readings[0].value.to_bits(), value.to_bits());
        prop_assert_eq!(readings[0].ts, received_at());
    }

    /// A JSON reading with a time in milliseconds and a unit reads back as written.
    #[test]
    fn json_readings_round_trip(
        value in any::<f64>().prop_filter("finite", |value| value.is_finite()),
        millis in -62_135_596_800_000i64..253_402_300_799_000,
        unit in prop::option::of("[a-zA-Z%°/]{1,8}"),
    ) {
        let json = serde_json::json!({"value": value, "ts": millis, "unit": unit});
        let readings = parse_readings(&Topic::parse("sensors/d1/t"), json.to_string().as_bytes(), None, received_at());
        let readings = readings.map_err(|err| TestCaseError::fail(err.to_string()))?;
        prop_assert_eq!(readings.len(), 1);
        prop_assert_eq!(readings[0].value.to_bits(), value.to_bits());
        prop_assert_eq!(readings[0].ts.timestamp_millis(), millis);
        prop_assert_eq!(&readings[0].unit, &unit);
    }

    /// A JSON batch reads back as one reading per metric, at the batch's time.
    #[test]
    fn json_batches_round_trip(
        metrics in prop::collection::hash_map(name(), any::<f64>().prop_filter("finite", |value| value.is_finite()), 1..10),
        millis in 0i64..4_102_444_800_000,
    ) {
        let json = serde_json::json!({"ts": millis, "metrics": metrics});
        let readings = parse_readings(&Topic::parse("sensors/d1"), json.to_string().as_bytes(), None, received_at());
        let readings = readings.map_err(|err| TestCaseError::fail(err.to_string()))?;
        let back: HashMap<String, u64> = readings.iter().map(|reading| (reading.metric.clone(), reading.value.to_bits())).collect();
        let sent: HashMap<String, u64> = metrics.iter().map(|(metric, value)| (metric.clone(), value.to_bits())).collect();
        prop_assert_eq!(back, sent);
        prop_assert!(readings.iter().all(|reading| reading.ts.timestamp_millis() == millis));
    }

    /// Protobuf `Reading` and `ReadingBatch`, labelled with the content type, read back as encoded.
    #[test]
    fn protobuf_round_trips(
        value in any::<f64>().prop_filter("finite", |value| value.is_finite()),
        seconds in 0i64..4_102_444_800,
        nanos in 0i32..1_000_000_000,
        unit in "[a-zA-Z%]{0,8}",
        metrics in prop::collection::hash_map(name(), any::<f64>().prop_filter("finite", |value| value.is_finite()), 1..10),
    ) {
        let ts = Utc.timestamp_opt(seconds, nanos as u32).single().expect("in range");
        let reading = v1::Reading { value, ts: Some(Timestamp { seconds, nanos }), unit: unit.clone() }.encode_to_vec();
        let readings = parse_readings(&Topic::parse("sensors/d1/t"), &reading, Some(CONTENT_TYPE_PROTOBUF), received_at())
            .map_err(|err| TestCaseError::fail(err.to_string()))?;
        prop_assert_eq!(readings.len(), 1);
        // proto3 leaves a zero out of the message, so -0.0 comes back as 0.0: compare values, not bits.
        prop_assert_eq!(readings[0].value, value);
        prop_assert_eq!(readings[0].ts, ts);
        prop_assert_eq!(readings[0].unit.clone(), (!unit.is_empty()).then_some(unit));

        let batch = v1::ReadingBatch { ts: Some(Timestamp { seconds, nanos }), metrics: metrics.clone() }.encode_to_vec();
        let readings = parse_readings(&Topic::parse("sensors/d1"), &batch, Some(CONTENT_TYPE_PROTOBUF), received_at())
            .map_err(|err| TestCaseError::fail(err.to_string()))?;
        let back: HashMap<String, f64> = readings.iter().map(|reading| (reading.metric.clone(), reading.value)).collect();
        prop_assert_eq!(back, metrics);
        prop_assert!(readings.iter().all(|reading| reading.ts == ts));
    }

    /// A truncated or bit-flipped protobuf is refused or still well-formed, never a panic.
    #[test]
    fn damaged_protobuf_is_refused_or_well_formed(
        metrics in prop::collection::hash_map(name(), any::<f64>(), 0..6),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut bytes = v1::ReadingBatch { ts: Some(Timestamp { seconds: 1, nanos: 2 }), metrics }.encode_to_vec();
        if !bytes.is_empty() {
            let at = flip.index(bytes.len());
            bytes[at] ^= 1 << bit;
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        let topic = Topic::parse("sensors/d1");
        if let Ok(readings) = parse_readings(&topic, &bytes, Some(CONTENT_TYPE_PROTOBUF), received_at()) {
            well_formed(&topic, &readings)?;
        }
    }
}
