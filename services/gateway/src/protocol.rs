//! The live WebSocket protocol of DESIGN.md: requests from browsers, and MQTT messages rendered as JSON frames.
//!
//! Every server message is a JSON text frame with a `type`. Beyond the fields DESIGN.md names, a few optional
//! ones help a dashboard and never change the meaning of the others:
//! - `sensor-update`: `unit` when the reading carries one; `ts` is RFC 3339 UTC with milliseconds.
//! - `status` and `alert`: `topic`, the MQTT topic they came from. `alert` also passes `rule`, `metric` and
//!   `value` through when the alert has them, and `severity` defaults to `"warning"`.
//! - `mqtt-message`: `payload` is the payload as UTF-8 text; a payload that is not valid UTF-8 is sent as
//!   base64 with `"encoding": "base64"`. A payload under `sensors/`, `devices/+/status` or `alerts/` that does
//!   not parse is sent this way too, with `error` saying why, so nothing a browser watches disappears silently.
//!
//! `subscribed` lists the filters the broker has granted: it comes once the broker's SUBACK has (at once for a
//! filter another browser holds already), so a message published after it reaches the browser. The retained
//! values the gateway holds follow it, and those the broker replays for a filter new at the broker come as they
//! arrive. A filter the broker refuses, or does not answer for in time, gets an `error` naming it instead.
//! A `subscribe` or `unsubscribe` carries at most [`crate::client::MAX_TOPICS_PER_REQUEST`] topics.
//!
//! Browsers may not publish with retain under `commands/`, `devices/`, `sensors/` or `alerts/`
//! ([`crate::client::NO_RETAIN_FROM_BROWSERS`]): such a publish is refused with an `error`, not sent without retain.
//!
//! Browsers publish with `{"type": "publish", "topic", "payload", "qos", "retain"}`: `payload` is text,
//! or any other JSON value (sent as its compact JSON text), or base64 with `"encoding": "base64"`;
//! `qos` defaults to 0 and `retain` to false, as in MQTT clients.

use std::borrow::Cow;

use axum::extract::ws::Utf8Bytes;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use ferrite_core::{AlertMessage, Presence, Topic, parse_presence, parse_readings};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One JSON text frame for a browser; cloning it shares the bytes, so one rendering serves every browser.
pub type Frame = Utf8Bytes;

/// What the server sends to a browser.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case", rename_all_fields = "camelCase")]
pub enum ServerMessage<'a> {
    SensorUpdate {
        topic: &'a str,
        device_id: &'a str,
        metric: &'a str,
        value: f64,
        ts: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        unit: Option<&'a str>,
    },
    Status {
        topic: &'a str,
        device_id: &'a str,
        online: bool,
        ts: String,
    },
    Alert {
        topic: &'a str,
        device_id: &'a str,
        message: String,
        severity: String,
        ts: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        metric: Option<Value>,
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<Value>,
        /// `firing` or `resolved`, as the rules engine publishes it.
        #[serde(skip_serializing_if = "Option::is_none")]
        state: Option<Value>,
    },
    MqttMessage {
        topic: &'a str,
        payload: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        encoding: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Subscribed {
        topics: &'a [String],
    },
    Error {
        message: &'a str,
    },
}

impl ServerMessage<'_> {
    /// The message as a frame.
    pub fn frame(&self) -> Frame {
        // Serialising these types cannot fail: every key is a string and every value plain data.
        let text = serde_json::to_string(self).unwrap_or_else(|_| r#"{"type":"error","message":"internal"}"#.into());
        Utf8Bytes::from(text)
    }
}

/// An `error` frame.
pub fn error_frame(message: &str) -> Frame {
    ServerMessage::Error { message }.frame()
}

/// Renders an MQTT message as the frames browsers receive: usually one, one per metric for a batch.
pub fn render(topic: &str, payload: &[u8], content_type: Option<&str>, received_at: DateTime<Utc>) -> Vec<Frame> {
    let parsed = Topic::parse(topic);
    match &parsed {
        Topic::Reading { .. } | Topic::Batch { .. } => {
            match parse_readings(&parsed, payload, content_type, received_at) {
                Ok(readings) => readings
                    .iter()
                    .map(|reading| {
                        ServerMessage::SensorUpdate {
                            topic,
                            device_id: reading.device.as_str(),
                            metric: &reading.metric,
                            value: reading.value,
                            ts: rfc3339(reading.ts),
                            unit: reading.unit.as_deref(),
                        }
                        .frame()
                    })
                    .collect(),
                Err(error) => vec![raw(topic, payload, Some(error.to_string()))],
            }
        }
        Topic::Status { device } => match parse_presence(payload) {
            Ok(presence) => vec![
                ServerMessage::Status {
                    topic,
                    device_id: device.as_str(),
                    online: presence == Presence::Online,
                    ts: rfc3339(received_at),
                }
                .frame(),
            ],
            Err(error) => vec![raw(topic, payload, Some(error.to_string()))],
        },
        Topic::Alert { device } => match alert(topic, device.as_str(), payload, received_at) {
            Ok(frame) => vec![frame],
            Err(error) => vec![raw(topic, payload, Some(error))],
        },
        Topic::Malformed { reason } => vec![raw(topic, payload, Some(reason.clone()))],
        Topic::Command { .. } | Topic::CommandResponse { .. } | Topic::Other => vec![raw(topic, payload, None)],
    }
}

/// An `mqtt-message` frame: the payload as text, or as base64 when it is not UTF-8.
fn raw(topic: &str, payload: &[u8], error: Option<String>) -> Frame {
    let (payload, encoding) = match std::str::from_utf8(payload) {
        Ok(text) => (Cow::Borrowed(text), None),
        Err(_) => (Cow::Owned(BASE64.encode(payload)), Some("base64")),
    };
    ServerMessage::MqttMessage { topic, payload, encoding, error }.frame()
}

/// The severity of an alert that names none.
const DEFAULT_SEVERITY: &str = "warning";

fn alert(topic: &str, device_id: &str, payload: &[u8], received_at: DateTime<Utc>) -> Result<Frame, String> {
    // The one alert shape (`ferrite_core::AlertMessage`); plain text is an alert whose message is that text.
    let alert = AlertMessage::parse(payload).map_err(|error| error.to_string())?;
    let message = alert.message.unwrap_or_else(|| match &alert.rule {
        Some(Value::String(rule)) => format!("rule {rule} fired"),
        _ => "alert".to_owned(),
    });
    let ts = match alert.ts {
        Some(Value::String(ts)) => ts,
        Some(Value::Number(ms)) => ms
            .as_i64()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            .map_or_else(|| rfc3339(received_at), rfc3339),
        _ => rfc3339(received_at),
    };
    Ok(ServerMessage::Alert {
        topic,
        device_id,
        message,
        severity: alert.severity.unwrap_or_else(|| DEFAULT_SEVERITY.to_owned()),
        ts,
        rule: alert.rule,
        metric: alert.metric,
        value: alert.value,
        state: alert.state,
    }
    .frame())
}

fn rfc3339(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A request from a browser.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Subscribe { topics: Vec<String> },
    Unsubscribe { topics: Vec<String> },
    Publish(PublishRequest),
}

/// A browser's publish, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishRequest {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Topics {
    #[serde(rename = "type")]
    _type: String,
    topics: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish {
    #[serde(rename = "type")]
    _type: String,
    topic: String,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    qos: Option<u8>,
    #[serde(default)]
    retain: Option<bool>,
    #[serde(default)]
    encoding: Option<String>,
}

/// Parses one text frame from a browser; the error is the `message` of the `error` reply.
pub fn parse_request(text: &str) -> Result<Request, String> {
    let value: Value = serde_json::from_str(text).map_err(|error| format!("invalid JSON: {error}"))?;
    let kind = match value.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        Some(_) => return Err("\"type\" must be a string".into()),
        None => return Err("missing \"type\": expected subscribe, unsubscribe or publish".into()),
    };
    match kind.as_str() {
        "subscribe" | "unsubscribe" => {
            let Topics { topics, .. } =
                serde_json::from_value(value).map_err(|error| format!("invalid {kind} message: {error}"))?;
            if topics.is_empty() {
                return Err(format!("{kind} needs at least one topic"));
            }
            Ok(if kind == "subscribe" { Request::Subscribe { topics } } else { Request::Unsubscribe { topics } })
        }
        "publish" => {
            let publish: Publish =
                serde_json::from_value(value).map_err(|error| format!("invalid publish message: {error}"))?;
            let qos = publish.qos.unwrap_or(0);
            if qos > 2 {
                return Err(format!("invalid qos {qos}: expected 0, 1 or 2"));
            }
            let payload = match (publish.encoding.as_deref(), publish.payload) {
                (None, Value::String(text)) => text.into_bytes(),
                (None, Value::Null) => Vec::new(),
                (None, other) => other.to_string().into_bytes(),
                (Some("base64"), Value::String(encoded)) => {
                    BASE64.decode(encoded).map_err(|error| format!("invalid base64 payload: {error}"))?
                }
                (Some("base64"), _) => return Err("a base64 payload must be a string".into()),
                (Some(other), _) => return Err(format!("unknown encoding {other:?}: expected \"base64\"")),
            };
            Ok(Request::Publish(PublishRequest {
                topic: publish.topic,
                payload,
                qos,
                retain: publish.retain.unwrap_or(false),
            }))
        }
        other => Err(format!("unknown message type {other:?}: expected subscribe, unsubscribe or publish")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).single().expect("valid date")
    }

    fn check(topic: &str, payload: &[u8], expected: Vec<Value>) {
        let frames = render(topic, payload, None, now());
        let got: Vec<Value> =
            frames.iter().map(|frame| serde_json::from_str(frame.as_str()).expect("frames are JSON")).collect();
        assert_eq!(got, expected, "{topic} {payload:?}");
    }

    #[test]
    fn renders_readings() {
        check(
            "sensors/sim-0001/temperature",
            b"21.5",
            vec![json!({"type": "sensor-update", "topic": "sensors/sim-0001/temperature", "deviceId": "sim-0001",
                "metric": "temperature", "value": 21.5, "ts": "2026-11-25T12:00:00.000Z"})],
        );
        check(
            "sensors/d/t",
            br#"{"value": 3, "ts": 1795600800123, "unit": "C"}"#,
            vec![json!({"type": "sensor-update", "topic": "sensors/d/t", "deviceId": "d", "metric": "t",
                "value": 3.0, "ts": "2026-11-25T10:00:00.123Z", "unit": "C"})],
        );
        check(
            "sensors/d",
            br#"{"metrics": {"temperature": 21.5, "humidity": 40}}"#,
            vec![
                json!({"type": "sensor-update", "topic": "sensors/d", "deviceId": "d", "metric": "humidity",
                    "value": 40.0, "ts": "2026-11-25T12:00:00.000Z"}),
                json!({"type": "sensor-update", "topic": "sensors/d", "deviceId": "d", "metric": "temperature",
                    "value": 21.5, "ts": "2026-11-25T12:00:00.000Z"}),
            ],
        );
        check(
            "sensors/d/t",
            b"warm",
            vec![json!({"type": "mqtt-message", "topic": "sensors/d/t", "payload": "warm",
                "error": "payload is neither a number, JSON nor protobuf: \"warm\""})],
        );
    }

    #[test]
    fn renders_status_alerts_and_the_rest() {
        check(
            "devices/d/status",
            b"online",
            vec![json!({"type": "status", "topic": "devices/d/status", "deviceId": "d", "online": true,
                "ts": "2026-11-25T12:00:00.000Z"})],
        );
        check(
            "devices/d/status",
            b"offline",
            vec![json!({"type": "status", "topic": "devices/d/status", "deviceId": "d", "online": false,
                "ts": "2026-11-25T12:00:00.000Z"})],
        );
        check(
            "alerts/d",
            br#"{"rule": "hot", "deviceId": "d", "metric": "temperature", "value": 41.5, "message": "too hot",
                "severity": "critical", "ts": "2026-11-25T11:59:00Z"}"#,
            vec![json!({"type": "alert", "topic": "alerts/d", "deviceId": "d", "message": "too hot",
                "severity": "critical", "ts": "2026-11-25T11:59:00Z", "rule": "hot", "metric": "temperature",
                "value": 41.5})],
        );
        check(
            "alerts/d",
            b"door open",
            vec![json!({"type": "alert", "topic": "alerts/d", "deviceId": "d", "message": "door open",
                "severity": "warning", "ts": "2026-11-25T12:00:00.000Z"})],
        );
        check(
            "control/lights/living-room",
            br#"{"state":"on"}"#,
            vec![
                json!({"type": "mqtt-message", "topic": "control/lights/living-room", "payload": "{\"state\":\"on\"}"}),
            ],
        );
        check(
            "control/blob",
            &[0xff, 0x00, 0x01],
            vec![json!({"type": "mqtt-message", "topic": "control/blob", "payload": "/wAB", "encoding": "base64"})],
        );
        check(
            "commands/d",
            br#"{"id":"1","name":"restart","params":{}}"#,
            vec![
                json!({"type": "mqtt-message", "topic": "commands/d", "payload": "{\"id\":\"1\",\"name\":\"restart\",\"params\":{}}"}),
            ],
        );
    }

    fn check_request(text: &str, expected: Result<Request, &str>) {
        match (parse_request(text), expected) {
            (Ok(got), Ok(expected)) => assert_eq!(got, expected, "{text}"),
            (Err(got), Err(expected)) => {
                assert!(got.contains(expected), "{text}: {got:?} does not contain {expected:?}")
            }
            (got, expected) => panic!("{text}: got {got:?}, expected {expected:?}"),
        }
    }

    fn publish(topic: &str, payload: &[u8], qos: u8, retain: bool) -> Request {
        Request::Publish(PublishRequest { topic: topic.into(), payload: payload.to_vec(), qos, retain })
    }

    #[test]
    fn parses_requests() {
        check_request(
            r#"{"type": "subscribe", "topics": ["sensors/+/temperature"]}"#,
            Ok(Request::Subscribe { topics: vec!["sensors/+/temperature".into()] }),
        );
        check_request(
            r#"{"type": "unsubscribe", "topics": ["a", "b"]}"#,
            Ok(Request::Unsubscribe { topics: vec!["a".into(), "b".into()] }),
        );
        check_request(
            r#"{"type": "publish", "topic": "control/lights/living-room", "payload": "{\"state\":\"on\"}", "qos": 1, "retain": false}"#,
            Ok(publish("control/lights/living-room", br#"{"state":"on"}"#, 1, false)),
        );
        check_request(
            r#"{"type": "publish", "topic": "t", "payload": {"a": 1}}"#,
            Ok(publish("t", br#"{"a":1}"#, 0, false)),
        );
        check_request(
            r#"{"type": "publish", "topic": "t", "payload": 21.5, "retain": true}"#,
            Ok(publish("t", b"21.5", 0, true)),
        );
        check_request(r#"{"type": "publish", "topic": "t"}"#, Ok(publish("t", b"", 0, false)));
        check_request(
            r#"{"type": "publish", "topic": "t", "payload": "/wAB", "encoding": "base64"}"#,
            Ok(publish("t", &[0xff, 0, 1], 0, false)),
        );
        check_request("{", Err("invalid JSON"));
        check_request("[1]", Err("missing \"type\""));
        check_request(r#"{"type": 7}"#, Err("must be a string"));
        check_request(r#"{"type": "dance"}"#, Err("unknown message type \"dance\""));
        check_request(r#"{"type": "subscribe"}"#, Err("missing field `topics`"));
        check_request(r#"{"type": "subscribe", "topics": "a"}"#, Err("invalid subscribe message"));
        check_request(r#"{"type": "subscribe", "topics": []}"#, Err("at least one topic"));
        check_request(r#"{"type": "subscribe", "topics": ["a"], "extra": 1}"#, Err("unknown field"));
        check_request(r#"{"type": "publish", "payload": "x"}"#, Err("missing field `topic`"));
        check_request(r#"{"type": "publish", "topic": "t", "qos": 3}"#, Err("invalid qos 3"));
        check_request(
            r#"{"type": "publish", "topic": "t", "payload": "!", "encoding": "base64"}"#,
            Err("invalid base64"),
        );
        check_request(r#"{"type": "publish", "topic": "t", "encoding": "rot13"}"#, Err("unknown encoding"));
    }

    #[test]
    fn renders_replies() {
        let topics = vec!["a/#".to_owned()];
        assert_eq!(
            ServerMessage::Subscribed { topics: &topics }.frame().as_str(),
            r#"{"type":"subscribed","topics":["a/#"]}"#
        );
        assert_eq!(error_frame("bad").as_str(), r#"{"type":"error","message":"bad"}"#);
    }

    /// Any JSON value, nested a few levels.
    pub(crate) fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|n| serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// Requests near the real ones: the real keys and types, with any values and sometimes an extra key.
    pub(crate) fn near_request() -> impl Strategy<Value = Value> {
        let kind =
            prop_oneof![Just(json!("subscribe")), Just(json!("unsubscribe")), Just(json!("publish")), json_value(),];
        let topics = prop_oneof![
            prop::collection::vec(prop_oneof![Just("sensors/+/t".to_owned()), "[a-z/+#$]{0,10}", ".{0,6}"], 0..6)
                .prop_map(|topics| json!(topics)),
            json_value(),
        ];
        let topic = prop_oneof!["[a-z/+#$]{0,10}".prop_map(Value::String), json_value()];
        let field = |name: &'static str, value: BoxedStrategy<Value>| {
            prop::option::of(value).prop_map(move |value| value.map(|value| (name.to_owned(), value)))
        };
        (
            kind,
            field("topics", topics.boxed()),
            field("topic", topic.boxed()),
            field("payload", json_value().boxed()),
            field("qos", prop_oneof![(0u64..4).prop_map(Value::from), json_value()].boxed()),
            field("retain", prop_oneof![any::<bool>().prop_map(Value::Bool), json_value()].boxed()),
            field("encoding", prop_oneof![Just(json!("base64")), json_value()].boxed()),
            field("extra", json_value().boxed()),
        )
            .prop_map(|(kind, a, b, c, d, e, f, g)| {
                let mut object = serde_json::Map::new();
                object.insert("type".to_owned(), kind);
                for (name, value) in [a, b, c, d, e, f, g].into_iter().flatten() {
                    object.insert(name, value);
                }
                Value::Object(object)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Any text: a request or an error message, never a panic.
        #[test]
        fn any_text_is_a_request_or_an_error(text in ".{0,64}") {
            if let Err(message) = parse_request(&text) {
                prop_assert!(!message.is_empty());
            }
        }

        /// Any JSON, and near-requests: a decoded request keeps the protocol's rules, anything else is an error.
        #[test]
        fn any_json_is_a_valid_request_or_an_error(value in prop_oneof![json_value(), near_request()]) {
            match parse_request(&value.to_string()) {
                Ok(Request::Subscribe { topics } | Request::Unsubscribe { topics }) => prop_assert!(!topics.is_empty()),
                Ok(Request::Publish(publish)) => prop_assert!(publish.qos <= 2),
                Err(message) => prop_assert!(!message.is_empty()),
            }
        }

        /// Rendering any message from the broker never panics, and every frame is JSON with a type.
        #[test]
        fn any_mqtt_message_renders(topic in "[a-z/+#$]{0,12}|sensors/[a-z]{1,4}(/[a-z]{1,4})?|alerts/d|devices/d/status", payload in prop::collection::vec(any::<u8>(), 0..64)) {
            for frame in render(&topic, &payload, None, now()) {
                let value: Value = serde_json::from_str(frame.as_str()).expect("frames are JSON");
                prop_assert!(value["type"].is_string());
            }
        }
    }
}
