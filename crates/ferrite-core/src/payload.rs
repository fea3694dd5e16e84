//! Reading payloads: plain number text, JSON, or protobuf `ferrite.v1.Reading` / `ReadingBatch`.

use chrono::{DateTime, TimeZone, Utc};
use ferrite_proto::prost::Message;
use ferrite_proto::v1;
use serde::Deserialize;
use std::collections::BTreeMap;

use crate::device::{DeviceId, is_valid_name};
use crate::topic::Topic;

/// The MQTT 5 content type that marks a protobuf payload.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";

/// The largest unit string we keep; longer ones are a sign of a confused device.
const MAX_UNIT_LEN: usize = 32;

/// One measured value.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device: DeviceId,
    pub metric: String,
    pub ts: DateTime<Utc>,
    pub value: f64,
    pub unit: Option<String>,
}

/// Why a payload was not accepted; the text goes into the dead-letter table.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PayloadError {
    #[error("empty payload")]
    Empty,
    #[error("not a reading topic: {0}")]
    Topic(String),
    #[error("payload is neither a number, JSON nor protobuf: {0}")]
    Unrecognised(String),
    #[error("invalid JSON reading: {0}")]
    Json(String),
    #[error("invalid protobuf reading: {0}")]
    Protobuf(String),
    #[error("value is not a finite number")]
    NotFinite,
    #[error("invalid timestamp: {0}")]
    Timestamp(String),
    #[error("invalid metric name {0:?}: expected 1 to 64 of A-Z a-z 0-9 _ . -")]
    Metric(String),
    #[error("batch has no metrics")]
    EmptyBatch,
    #[error("unit is longer than 32 characters")]
    Unit,
}

/// A device's presence as published on `devices/{id}/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Online,
    Offline,
}

/// Parses a status payload: `online` or `offline` (any case, surrounding space ignored).
pub fn parse_presence(payload: &[u8]) -> Result<Presence, PayloadError> {
    let text = std::str::from_utf8(payload).map_err(|_| PayloadError::Unrecognised("status is not text".into()))?;
    match text.trim().to_ascii_lowercase().as_str() {
        "online" => Ok(Presence::Online),
        "offline" => Ok(Presence::Offline),
        "" => Err(PayloadError::Empty),
        other => Err(PayloadError::Unrecognised(format!(
            "status must be \"online\" or \"offline\", got {:?}",
            truncate(other, 40)
        ))),
    }
}

/// Parses the payload published on `topic` into readings.
///
/// `received_at` stamps readings that carry no time of their own.
/// `content_type` is the MQTT 5 content type, when the publisher set one.
pub fn parse_readings(
    topic: &Topic<'_>,
    payload: &[u8],
    content_type: Option<&str>,
    received_at: DateTime<Utc>,
) -> Result<Vec<Reading>, PayloadError> {
    if payload.is_empty() {
        return Err(PayloadError::Empty);
    }
    let protobuf = content_type.is_some_and(|ct| ct.eq_ignore_ascii_case(CONTENT_TYPE_PROTOBUF));
    match topic {
        Topic::Reading { device, metric } => {
            let one = if protobuf {
                from_proto_reading(payload, received_at)?
            } else {
                match std::str::from_utf8(payload) {
                    Ok(text) => from_text_reading(text, received_at)?,
                    // Not text and not labelled: a v3.1.1 device cannot set a content type, so try protobuf.
                    Err(_) => from_proto_reading(payload, received_at)?,
                }
            };
            Ok(vec![Reading { device: device.clone(), metric: (*metric).to_owned(), ..one }])
        }
        Topic::Batch { device } => {
            let (ts, metrics) = if protobuf {
                from_proto_batch(payload, received_at)?
            } else {
                match std::str::from_utf8(payload) {
                    Ok(text) => from_json_batch(text, received_at)?,
                    Err(_) => from_proto_batch(payload, received_at)?,
                }
            };
            if metrics.is_empty() {
                return Err(PayloadError::EmptyBatch);
            }
            metrics
                .into_iter()
                .map(|(metric, value)| {
                    if !is_valid_name(&metric) {
                        return Err(PayloadError::Metric(truncate(&metric, 80).to_owned()));
                    }
                    Ok(Reading { device: device.clone(), metric, ts, value: finite(value)?, unit: None })
                })
                .collect()
        }
        Topic::Malformed { reason } => Err(PayloadError::Topic(reason.clone())),
        _ => Err(PayloadError::Topic("only sensors/{device_id}[/{metric}] carry readings".into())),
    }
}

/// A reading before its device and metric are known (they come from the topic).
fn partial(value: f64, ts: DateTime<Utc>, unit: Option<String>) -> Result<Reading, PayloadError> {
    if unit.as_ref().is_some_and(|u| u.len() > MAX_UNIT_LEN) {
        return Err(PayloadError::Unit);
    }
    Ok(Reading {
        device: DeviceId::new("_").expect("\"_\" is a valid id"),
        metric: String::new(),
        ts,
        value: finite(value)?,
        unit,
    })
}

fn finite(value: f64) -> Result<f64, PayloadError> {
    if value.is_finite() { Ok(value) } else { Err(PayloadError::NotFinite) }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((idx, _)) => &s[..idx],
        None => s,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonReading {
    value: f64,
    #[serde(default)]
    ts: Option<JsonTs>,
    #[serde(default)]
    unit: Option<String>,
}

#[derive(Deserialize)]
struct JsonBatch {
    #[serde(default)]
    ts: Option<JsonTs>,
    metrics: BTreeMap<String, f64>,
}

/// A timestamp as JSON carries it: RFC 3339 text or epoch milliseconds.
#[derive(Deserialize)]
#[serde(untagged)]
enum JsonTs {
    Millis(i64),
    Text(String),
}

impl JsonTs {
    fn resolve(self) -> Result<DateTime<Utc>, PayloadError> {
        match self {
            JsonTs::Millis(ms) => Utc
                .timestamp_millis_opt(ms)
                .single()
                .ok_or_else(|| PayloadError::Timestamp(format!("{ms} ms is out of range"))),
            JsonTs::Text(text) => {
                if let Ok(ms) = text.parse::<i64>() {
                    return JsonTs::Millis(ms).resolve();
                }
                DateTime::parse_from_rfc3339(&text)
                    .map(|ts| ts.with_timezone(&Utc))
                    .map_err(|err| PayloadError::Timestamp(format!("{:?}: {err}", truncate(&text, 40))))
            }
        }
    }
}

fn resolve_ts(ts: Option<JsonTs>, received_at: DateTime<Utc>) -> Result<DateTime<Utc>, PayloadError> {
    ts.map_or(Ok(received_at), JsonTs::resolve)
}

fn from_text_reading(text: &str, received_at: DateTime<Utc>) -> Result<Reading, PayloadError> {
    let trimmed = text.trim();
    if let Ok(value) = trimmed.parse::<f64>() {
        return partial(value, received_at, None);
    }
    if trimmed.starts_with('{') {
        let json: JsonReading = serde_json::from_str(trimmed).map_err(|err| PayloadError::Json(err.to_string()))?;
        return partial(json.value, resolve_ts(json.ts, received_at)?, json.unit);
    }
    Err(PayloadError::Unrecognised(format!("{:?}", truncate(trimmed, 40))))
}

fn from_json_batch(
    text: &str,
    received_at: DateTime<Utc>,
) -> Result<(DateTime<Utc>, BTreeMap<String, f64>), PayloadError> {
    let json: JsonBatch = serde_json::from_str(text.trim()).map_err(|err| PayloadError::Json(err.to_string()))?;
    Ok((resolve_ts(json.ts, received_at)?, json.metrics))
}

fn proto_ts(
    ts: Option<ferrite_proto::prost_types::Timestamp>,
    received_at: DateTime<Utc>,
) -> Result<DateTime<Utc>, PayloadError> {
    match ts {
        None => Ok(received_at),
        Some(ts) => u32::try_from(ts.nanos)
            .ok()
            .and_then(|nanos| Utc.timestamp_opt(ts.seconds, nanos).single())
            .ok_or_else(|| PayloadError::Timestamp(format!("{}s {}ns is out of range", ts.seconds, ts.nanos))),
    }
}

fn from_proto_reading(payload: &[u8], received_at: DateTime<Utc>) -> Result<Reading, PayloadError> {
    let msg = v1::Reading::decode(payload).map_err(|err| PayloadError::Protobuf(err.to_string()))?;
    let unit = (!msg.unit.is_empty()).then_some(msg.unit);
    partial(msg.value, proto_ts(msg.ts, received_at)?, unit)
}

fn from_proto_batch(
    payload: &[u8],
    received_at: DateTime<Utc>,
) -> Result<(DateTime<Utc>, BTreeMap<String, f64>), PayloadError> {
    let msg = v1::ReadingBatch::decode(payload).map_err(|err| PayloadError::Protobuf(err.to_string()))?;
    Ok((proto_ts(msg.ts, received_at)?, msg.metrics.into_iter().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).single().expect("valid date")
    }

    /// `(metric, value, ts millis, unit)` of one expected reading.
    type Expected<'a> = (&'a str, f64, i64, Option<&'a str>);

    /// Parses `payload` on `topic` and compares `(metric, value, ts millis, unit)` or the error text.
    fn check(topic: &str, payload: &[u8], content_type: Option<&str>, expected: Result<Vec<Expected<'_>>, &str>) {
        let got = parse_readings(&Topic::parse(topic), payload, content_type, now());
        match (got, expected) {
            (Ok(readings), Ok(expected)) => {
                let got: Vec<_> = readings
                    .iter()
                    .map(|r| (r.metric.as_str(), r.value, r.ts.timestamp_millis(), r.unit.as_deref()))
                    .collect();
                assert_eq!(got, expected, "{topic} {payload:?}");
            }
            (Err(err), Err(expected)) => {
                assert!(err.to_string().contains(expected), "{topic} {payload:?}: {err} does not contain {expected}")
            }
            (got, expected) => panic!("{topic} {payload:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn plain_numbers() {
        let t = now().timestamp_millis();
        check("sensors/d/temperature", b"21.5", None, Ok(vec![("temperature", 21.5, t, None)]));
        check("sensors/d/temperature", b" -3 \n", None, Ok(vec![("temperature", -3.0, t, None)]));
        check("sensors/d/temperature", b"1e3", None, Ok(vec![("temperature", 1000.0, t, None)]));
        check("sensors/d/temperature", b"NaN", None, Err("finite"));
        check("sensors/d/temperature", b"inf", None, Err("finite"));
        check("sensors/d/temperature", b"hot", None, Err("neither a number"));
        check("sensors/d/temperature", b"", None, Err("empty payload"));
    }

    #[test]
    fn json_readings() {
        check(
            "sensors/d/temperature",
            br#"{"value": 21.5, "ts": "2026-11-25T10:00:00Z", "unit": "C"}"#,
            None,
            Ok(vec![("temperature", 21.5, 1_795_600_800_000, Some("C"))]),
        );
        check(
            "sensors/d/t",
            br#"{"value": 1, "ts": 1795600800123}"#,
            None,
            Ok(vec![("t", 1.0, 1_795_600_800_123, None)]),
        );
        check(
            "sensors/d/t",
            br#"{"value": 1, "ts": "1795600800123"}"#,
            None,
            Ok(vec![("t", 1.0, 1_795_600_800_123, None)]),
        );
        check("sensors/d/t", br#"{"value": 2}"#, None, Ok(vec![("t", 2.0, now().timestamp_millis(), None)]));
        check("sensors/d/t", br#"{"value": "x"}"#, None, Err("invalid JSON"));
        check("sensors/d/t", br#"{"ts": 1}"#, None, Err("missing field `value`"));
        check("sensors/d/t", br#"{"value": 1, "ts": "yesterday"}"#, None, Err("invalid timestamp"));
        check("sensors/d/t", br#"{"value": 1, "colour": 2}"#, None, Err("unknown field"));
        check("sensors/d/t", br#"{"value": 1"#, None, Err("invalid JSON"));
    }

    #[test]
    fn json_batches() {
        check(
            "sensors/d",
            br#"{"ts": 1795600800000, "metrics": {"temperature": 21.5, "humidity": 40}}"#,
            None,
            Ok(vec![("humidity", 40.0, 1_795_600_800_000, None), ("temperature", 21.5, 1_795_600_800_000, None)]),
        );
        check("sensors/d", br#"{"metrics": {}}"#, None, Err("no metrics"));
        check("sensors/d", br#"{"metrics": {"a/b": 1}}"#, None, Err("invalid metric"));
        check("sensors/d", b"21.5", None, Err("invalid JSON"));
    }

    #[test]
    fn protobuf_readings() {
        let reading = v1::Reading {
            value: 7.25,
            ts: Some(ferrite_proto::prost_types::Timestamp { seconds: 1_795_600_800, nanos: 5_000_000 }),
            unit: "V".into(),
        };
        let bytes = reading.encode_to_vec();
        check(
            "sensors/d/battery",
            &bytes,
            Some(CONTENT_TYPE_PROTOBUF),
            Ok(vec![("battery", 7.25, 1_795_600_800_005, Some("V"))]),
        );
        // A v3.1.1 device cannot label its payload; binary that is not UTF-8 is tried as protobuf.
        check("sensors/d/battery", &bytes, None, Ok(vec![("battery", 7.25, 1_795_600_800_005, Some("V"))]));
        check("sensors/d/battery", &[0xff, 0xff, 0xff], Some(CONTENT_TYPE_PROTOBUF), Err("invalid protobuf"));

        let batch = v1::ReadingBatch { ts: None, metrics: [("temperature".to_owned(), 20.0)].into_iter().collect() };
        check(
            "sensors/d",
            &batch.encode_to_vec(),
            Some(CONTENT_TYPE_PROTOBUF),
            Ok(vec![("temperature", 20.0, now().timestamp_millis(), None)]),
        );
    }

    #[test]
    fn bad_topics() {
        check("sensors/bad id/t", b"1", None, Err("invalid device id"));
        check("sensors/d/t/u", b"1", None, Err("does not match"));
        check("control/x", b"1", None, Err("not a reading topic"));
    }

    #[test]
    fn presence() {
        assert_eq!(parse_presence(b"online"), Ok(Presence::Online));
        assert_eq!(parse_presence(b" OFFLINE\n"), Ok(Presence::Offline));
        assert!(parse_presence(b"maybe").is_err());
        assert_eq!(parse_presence(b""), Err(PayloadError::Empty));
    }
}
