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

/// How far in the past a reading's own time may lie by default: older readings are dead letters (a device
/// whose clock reset to 1970 must not write into partitions retention has dropped).
pub const DEFAULT_MAX_READING_AGE: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);
/// How far ahead of our clock a reading's own time may lie by default: later readings are dead letters
/// (one reading stamped 9999-01-01 would otherwise stay the latest value of its metric forever).
pub const DEFAULT_MAX_READING_SKEW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The times a reading may carry, relative to when it is received: `[now - max_age, now + max_skew]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    pub max_age: std::time::Duration,
    pub max_skew: std::time::Duration,
}

impl Default for TimeWindow {
    fn default() -> Self {
        Self { max_age: DEFAULT_MAX_READING_AGE, max_skew: DEFAULT_MAX_READING_SKEW }
    }
}

impl TimeWindow {
    /// The earliest time accepted at `now`.
    pub fn earliest(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        chrono::Duration::from_std(self.max_age)
            .ok()
            .and_then(|age| now.checked_sub_signed(age))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// The latest time accepted at `now`.
    pub fn latest(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        chrono::Duration::from_std(self.max_skew)
            .ok()
            .and_then(|skew| now.checked_add_signed(skew))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Whether `ts` lies in the window at `now`; the error names the bound it crossed.
    pub fn check(&self, ts: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), PayloadError> {
        if ts < self.earliest(now) {
            return Err(PayloadError::TooOld(ts.to_rfc3339(), format_duration(self.max_age)));
        }
        if ts > self.latest(now) {
            return Err(PayloadError::TooNew(ts.to_rfc3339(), format_duration(self.max_skew)));
        }
        Ok(())
    }
}

/// `90000s` as `1d 1h` and the like, for error texts.
fn format_duration(duration: std::time::Duration) -> String {
    let secs = duration.as_secs();
    let (days, hours, minutes, seconds) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let parts: Vec<String> = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if parts.is_empty() { "0s".into() } else { parts.join(" ") }
}

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
    #[error("unit is longer than 32 bytes or holds control characters")]
    Unit,
    #[error("timestamp {0} is older than the accepted {1}")]
    TooOld(String, String),
    #[error("timestamp {0} is more than {1} ahead of the ingester's clock")]
    TooNew(String, String),
    #[error("payload of {size} bytes is above the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
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
    // Control characters (NUL above all, which PostgreSQL refuses in text) have no place in a unit.
    if unit.as_ref().is_some_and(|u| u.len() > MAX_UNIT_LEN || u.chars().any(char::is_control)) {
        return Err(PayloadError::Unit);
    }
    // An empty unit is no unit, in JSON as in protobuf (where "" is the field's default).
    let unit = unit.filter(|u| !u.is_empty());
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
    fn time_window() {
        let window = TimeWindow::default();
        let day = chrono::Duration::days(1);
        assert_eq!(window.check(now(), now()), Ok(()));
        assert_eq!(window.check(now() + day, now()), Ok(()));
        assert_eq!(window.check(now() - day * 365, now()), Ok(()));
        let far = Utc.with_ymd_and_hms(9999, 1, 1, 0, 0, 0).single().expect("valid date");
        let err = window.check(far, now()).expect_err("9999 is too far ahead");
        assert_eq!(
            err.to_string(),
            "timestamp 9999-01-01T00:00:00+00:00 is more than 1d ahead of the ingester's clock"
        );
        let err = window.check(now() - day * 366, now()).expect_err("older than a year");
        assert!(err.to_string().contains("older than the accepted 365d"), "{err}");
        let open = TimeWindow { max_age: std::time::Duration::MAX, max_skew: std::time::Duration::MAX };
        assert_eq!(open.check(far, now()), Ok(()));
        assert_eq!(open.check(DateTime::<Utc>::MIN_UTC, now()), Ok(()));
    }

    #[test]
    fn an_empty_unit_is_no_unit() {
        let t = now().timestamp_millis();
        check("sensors/d1/temperature", br#"{"unit":"","value":0.0}"#, None, Ok(vec![("temperature", 0.0, t, None)]));
    }

    #[test]
    fn units_without_control_characters() {
        check("sensors/d/t", b"{\"value\": 1, \"unit\": \"\\u0000\"}", None, Err("control characters"));
        check(
            "sensors/d/t",
            "{\"value\": 1, \"unit\": \"\u{b0}C\"}".as_bytes(),
            None,
            Ok(vec![("t", 1.0, now().timestamp_millis(), Some("\u{b0}C"))]),
        );
    }

    #[test]
    fn presence() {
        assert_eq!(parse_presence(b"online"), Ok(Presence::Online));
        assert_eq!(parse_presence(b" OFFLINE\n"), Ok(Presence::Offline));
        assert!(parse_presence(b"maybe").is_err());
        assert_eq!(parse_presence(b""), Err(PayloadError::Empty));
    }
}
