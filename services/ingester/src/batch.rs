//! A batch: the messages received since the last commit, already parsed into what will be written.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use ferrite_core::{DeviceId, PayloadError, Presence, Reading, Topic, parse_presence, parse_readings};
use ferrite_mqtt::Message;
use tracing::Span;

use crate::Limits;

/// Bytes of a dead letter's payload that are kept: enough to see what a device sent, while a flood of
/// large poison messages cannot fill the database.
pub const DEAD_LETTER_SAMPLE: usize = 4096;
/// Characters of a dead letter's topic that are kept (an MQTT topic may be 64 KiB long).
const DEAD_LETTER_TOPIC_CHARS: usize = 512;
/// Characters of a dead letter's reason that are kept (a reason may quote the payload).
const DEAD_LETTER_REASON_CHARS: usize = 1024;

/// A payload we could not use, kept with the reason so that nothing is dropped silently.
///
/// Built only by [`DeadLetter::new`], which makes it storable whatever arrived: text without NUL (which
/// PostgreSQL refuses in `text`), bounded in size.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub topic: String,
    /// The payload, or its first [`DEAD_LETTER_SAMPLE`] bytes.
    pub payload: Bytes,
    pub reason: String,
    /// A short, fixed name of the reason, the `reason` label of `ferrite_ingester_dead_letters_total`.
    pub kind: &'static str,
}

impl DeadLetter {
    pub fn new(topic: &str, payload: &Bytes, reason: &str, kind: &'static str) -> DeadLetter {
        let mut reason = storable_text(reason, DEAD_LETTER_REASON_CHARS);
        let payload = if payload.len() > DEAD_LETTER_SAMPLE {
            reason.push_str(&format!(" (payload of {} bytes; its first {DEAD_LETTER_SAMPLE} are kept)", payload.len()));
            payload.slice(..DEAD_LETTER_SAMPLE)
        } else {
            payload.clone()
        };
        DeadLetter { topic: storable_text(topic, DEAD_LETTER_TOPIC_CHARS), payload, reason, kind }
    }

    /// A dead letter for a payload that could not be parsed.
    fn refused(topic: &str, payload: &Bytes, error: &PayloadError) -> DeadLetter {
        DeadLetter::new(topic, payload, &error.to_string(), kind(error))
    }
}

/// `text` as PostgreSQL stores it: NUL written as `\0`, at most `max_chars` characters (marked with `...`).
pub fn storable_text(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars * 4));
    for (count, c) in text.chars().enumerate() {
        if count == max_chars {
            out.push_str("...");
            break;
        }
        match c {
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out
}

/// The `reason` label of a parse failure.
fn kind(error: &PayloadError) -> &'static str {
    match error {
        PayloadError::TooLarge { .. } => "too_large",
        PayloadError::TooOld(..) | PayloadError::TooNew(..) => "timestamp_window",
        PayloadError::Topic(_) => "topic",
        _ => "payload",
    }
}

/// A device's announced presence.
#[derive(Debug, Clone)]
pub struct PresenceChange {
    pub device: DeviceId,
    pub presence: Presence,
    pub at: DateTime<Utc>,
}

/// Messages and what they parsed into, in arrival order.
#[derive(Default)]
pub struct Batch {
    limits: Limits,
    messages: Vec<Message>,
    /// Payload bytes of `messages`, held until they are acknowledged.
    bytes: usize,
    pub readings: Vec<Reading>,
    pub dead_letters: Vec<DeadLetter>,
    pub presence: Vec<PresenceChange>,
    /// The `ingest.message` spans of the messages that carried a trace context, open until their batch is
    /// acknowledged (see [`crate::trace`]).
    traces: Vec<Span>,
}

impl Batch {
    /// An empty batch that applies `limits` to what it parses.
    pub fn new(limits: Limits) -> Batch {
        Batch { limits, ..Batch::default() }
    }

    /// Adds a message, parsing it now so a bad payload is found before the write.
    pub fn push(&mut self, message: Message) {
        self.bytes += message.payload().len();
        let span = crate::trace::message_span(&message);
        span.in_scope(|| {
            self.classify(
                &message.topic(),
                message.payload(),
                message.content_type(),
                message.publish.retain,
                Utc::now(),
            )
        });
        if !span.is_none() {
            self.traces.push(span);
        }
        self.messages.push(message);
    }

    /// Sorts one payload into readings, presence or dead letters.
    pub fn classify(
        &mut self,
        topic_text: &str,
        payload: &Bytes,
        content_type: Option<&str>,
        retained: bool,
        received_at: DateTime<Utc>,
    ) {
        if payload.len() > self.limits.max_payload {
            let error = PayloadError::TooLarge { size: payload.len(), limit: self.limits.max_payload };
            // Whatever the topic: a client-controlled size must not decide whether it is looked at further.
            if !retained {
                self.dead_letters.push(DeadLetter::refused(topic_text, payload, &error));
            }
            return;
        }
        let topic = Topic::parse(topic_text);
        match &topic {
            Topic::Reading { .. } | Topic::Batch { .. } | Topic::Malformed { .. } => {
                // A retained reading arrives again on every (re)subscription; it was stored when it was
                // first published live, so the replay is skipped rather than stored twice.
                if retained && !matches!(topic, Topic::Malformed { .. }) {
                    return;
                }
                let window = self.limits.window;
                let parsed = parse_readings(&topic, payload, content_type, received_at).and_then(|readings| {
                    // One payload carries one time, so its readings are in the window or out of it together.
                    readings.iter().try_for_each(|reading| window.check(reading.ts, received_at))?;
                    Ok(readings)
                });
                match parsed {
                    Ok(readings) => self.readings.extend(readings),
                    Err(error) => self.dead_letters.push(DeadLetter::refused(topic_text, payload, &error)),
                }
            }
            Topic::Status { device } => match parse_presence(payload) {
                Ok(presence) => {
                    self.presence.push(PresenceChange { device: device.clone(), presence, at: received_at })
                }
                // An empty retained status is a client clearing it, not a malformed message.
                Err(PayloadError::Empty) => {}
                Err(error) => self.dead_letters.push(DeadLetter::refused(topic_text, payload, &error)),
            },
            _ => {}
        }
    }

    /// Messages received, whether or not they produced rows.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Payload bytes of the messages held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the batch should be written now: [`crate::Config::batch_size`] messages, or as many readings or
    /// payload bytes as one commit may hold ([`Limits::max_commit_readings`], [`Limits::max_batch_bytes`]).
    pub fn is_full(&self, batch_size: usize) -> bool {
        self.messages.len() >= batch_size
            || self.readings.len() >= self.limits.max_commit_readings
            || self.bytes >= self.limits.max_batch_bytes
    }

    /// The limits it was made with.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The spans of the traced messages; they end when the caller drops them.
    pub fn traces(&self) -> &[Span] {
        &self.traces
    }

    /// Empties the batch, handing back its messages for acknowledgement.
    pub fn take_messages(&mut self) -> Vec<Message> {
        self.readings.clear();
        self.dead_letters.clear();
        self.presence.clear();
        self.traces.clear();
        self.bytes = 0;
        std::mem::take(&mut self.messages)
    }

    /// Moves the parsed rows of `other` after this batch's own, so that one transaction writes several batches;
    /// `other` keeps its messages and spans for its acknowledgements.
    pub fn take_rows_from(&mut self, other: &mut Batch) {
        self.readings.append(&mut other.readings);
        self.dead_letters.append(&mut other.dead_letters);
        self.presence.append(&mut other.presence);
    }

    /// Takes the spans of the traced messages out of the batch (before [`Batch::take_messages`]).
    pub fn take_traces(&mut self) -> Vec<Span> {
        std::mem::take(&mut self.traces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(topic: &str, payload: &'static [u8], retained: bool) -> Batch {
        let mut batch = Batch::default();
        batch.classify(topic, &Bytes::from_static(payload), None, retained, Utc::now());
        batch
    }

    fn parsed_nothing(batch: &Batch) -> bool {
        batch.readings.is_empty() && batch.dead_letters.is_empty() && batch.presence.is_empty()
    }

    #[test]
    fn sorts_payloads() {
        let b = classify("sensors/d1/temperature", b"21.5", false);
        assert_eq!((b.readings.len(), b.dead_letters.len()), (1, 0));
        let b = classify("sensors/d1/temperature", b"21.5", true);
        assert_eq!((b.readings.len(), b.dead_letters.len()), (0, 0), "retained replays are skipped");
        let b = classify("sensors/d1/temperature", b"garbage", false);
        assert_eq!(b.dead_letters.len(), 1);
        assert!(b.dead_letters[0].reason.contains("neither a number"), "{}", b.dead_letters[0].reason);
        let b = classify("sensors/bad id/t", b"1", false);
        assert_eq!(b.dead_letters.len(), 1);
        let b = classify("devices/d1/status", b"offline", true);
        assert_eq!(b.presence.len(), 1);
        assert_eq!(b.presence[0].presence, Presence::Offline);
        let b = classify("devices/d1/status", b"", true);
        assert!(parsed_nothing(&b));
        let b = classify("devices/d1/status", b"sleepy", false);
        assert_eq!(b.dead_letters.len(), 1);
        let b = classify("control/lights", b"on", false);
        assert!(parsed_nothing(&b));
    }

    #[test]
    fn poison_becomes_one_storable_dead_letter() {
        let mut batch = Batch::new(Limits { max_payload: 64, ..Limits::default() });
        let big = Bytes::from(vec![b'1'; 65]);
        batch.classify("sensors/d1/t", &big, None, false, Utc::now());
        assert_eq!(batch.dead_letters.len(), 1);
        assert_eq!(batch.dead_letters[0].kind, "too_large");
        assert!(
            batch.dead_letters[0].reason.contains("65 bytes is above the limit of 64"),
            "{}",
            batch.dead_letters[0].reason
        );

        let b = classify("sensors/probe/t", b"{\"value\":1,\"\\u0000\":0}", false);
        assert_eq!((b.readings.len(), b.dead_letters.len()), (0, 1));
        assert!(!b.dead_letters[0].reason.contains('\0'), "{:?}", b.dead_letters[0].reason);
        let b = classify("sensors/probe/t\0x", b"1", false);
        assert_eq!(b.dead_letters.len(), 1);
        assert_eq!(b.dead_letters[0].topic, "sensors/probe/t\\0x");

        let b = classify("sensors/probe/t", br#"{"value": 1, "ts": "9999-01-01T00:00:00Z"}"#, false);
        assert_eq!((b.readings.len(), b.dead_letters.len()), (0, 1));
        assert_eq!(b.dead_letters[0].kind, "timestamp_window");

        let huge = Bytes::from(vec![0u8; DEAD_LETTER_SAMPLE * 3]);
        let letter = DeadLetter::new(&"t".repeat(100_000), &huge, &"r".repeat(100_000), "payload");
        assert_eq!(letter.payload.len(), DEAD_LETTER_SAMPLE);
        assert!(letter.topic.chars().count() <= DEAD_LETTER_TOPIC_CHARS + 3);
        assert!(letter.reason.contains("its first 4096 are kept"), "{}", &letter.reason[letter.reason.len() - 80..]);
    }

    /// A JSON batch carries many readings: a batch is full by readings (one commit's bound) before it is by messages.
    #[test]
    fn full_by_readings_as_well_as_messages() {
        let limits = Limits { max_commit_readings: 10, ..Limits::default() };
        let mut batch = Batch::new(limits);
        let metrics: Vec<String> = (0..6).map(|n| format!(r#""m{n}": {n}"#)).collect();
        let payload = Bytes::from(format!(r#"{{"metrics": {{{}}}}}"#, metrics.join(",")));
        batch.classify("sensors/d1", &payload, None, false, Utc::now());
        assert!(!batch.is_full(2000));
        batch.classify("sensors/d1", &payload, None, false, Utc::now());
        assert_eq!(batch.readings.len(), 12);
        assert!(batch.is_full(2000), "12 readings are above the bound of 10");
        assert!(Batch::new(limits).is_full(0), "and by messages as before");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Limits small enough that generated payloads cross them.
        fn limits() -> Limits {
            Limits { max_payload: 512, ..Limits::default() }
        }

        /// Topic levels: valid names, empty, wildcards, NUL, non-ASCII and the like.
        fn level() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("d1".to_owned()),
                Just("temperature".to_owned()),
                Just(String::new()),
                Just("\0".to_owned()),
                Just("a\0b".to_owned()),
                Just("+".to_owned()),
                Just("#".to_owned()),
                Just("\u{fffd}\u{1F600}".to_owned()),
                Just("x".repeat(70)),
                any::<String>(),
            ]
        }

        fn topic() -> impl Strategy<Value = String> {
            let root = prop_oneof![Just("sensors"), Just("devices"), Just("control"), Just(""), Just("$share")];
            (root, prop::collection::vec(level(), 0..4), any::<bool>()).prop_map(|(root, levels, status)| {
                let mut parts = vec![root.to_owned()];
                parts.extend(levels);
                if status {
                    parts.push("status".into());
                }
                parts.join("/")
            })
        }

        /// Times around the window's edges and far outside it, as JSON would carry them.
        fn ts() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<i64>().prop_map(|ms| ms.to_string()),
                (-400i64..400)
                    .prop_map(|days| (Utc::now() + chrono::Duration::days(days)).timestamp_millis().to_string()),
                Just("\"9999-01-01T00:00:00Z\"".to_owned()),
                Just("\"1970-01-01T00:00:00Z\"".to_owned()),
                any::<String>().prop_map(|text| serde_json_string(&text)),
            ]
        }

        fn serde_json_string(text: &str) -> String {
            let escaped: String = text
                .chars()
                .flat_map(|c| match c {
                    '"' => "\\\"".chars().collect::<Vec<_>>(),
                    '\\' => "\\\\".chars().collect(),
                    c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32).chars().collect(),
                    c => vec![c],
                })
                .collect();
            format!("\"{escaped}\"")
        }

        fn payload() -> impl Strategy<Value = Vec<u8>> {
            let key = prop_oneof![
                Just("t".to_owned()),
                Just("\\u0000".to_owned()),
                any::<String>().prop_map(|k| k.replace(['"', '\\'], ""))
            ];
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..700),
                any::<f64>().prop_map(|v| v.to_string().into_bytes()),
                (any::<f64>(), ts(), prop::option::of(any::<String>())).prop_map(|(v, ts, unit)| {
                    let unit = unit.map(|u| format!(r#","unit":{}"#, serde_json_string(&u))).unwrap_or_default();
                    format!(r#"{{"value":{v},"ts":{ts}{unit}}}"#).into_bytes()
                }),
                (ts(), prop::collection::vec((key, -1e6f64..1e6), 0..5)).prop_map(|(ts, metrics)| {
                    let metrics: Vec<String> = metrics.iter().map(|(k, v)| format!(r#""{k}":{v}"#)).collect();
                    format!(r#"{{"ts":{ts},"metrics":{{{}}}}}"#, metrics.join(",")).into_bytes()
                }),
                Just(b"online".to_vec()),
                Just(b"  \n".to_vec()),
            ]
        }

        fn storable(text: &str) -> bool {
            !text.contains('\0')
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            /// Whatever arrives: no panic; a message becomes rows, a presence change or exactly one dead letter (or
            /// nothing, for topics the ingester does not read and empty statuses); rows and dead letters hold
            /// nothing PostgreSQL refuses, and rows only times inside the window.
            #[test]
            fn every_message_ends_as_rows_presence_or_one_dead_letter(topic in topic(), payload in payload(), protobuf in any::<bool>()) {
                let mut batch = Batch::new(limits());
                let now = Utc::now();
                let content_type = protobuf.then_some(ferrite_core::CONTENT_TYPE_PROTOBUF);
                batch.classify(&topic, &Bytes::from(payload.clone()), content_type, false, now);
                let outcomes = [!batch.readings.is_empty(), !batch.presence.is_empty(), !batch.dead_letters.is_empty()];
                prop_assert!(outcomes.iter().filter(|o| **o).count() <= 1, "{:?}", outcomes);
                prop_assert!(batch.dead_letters.len() <= 1);
                prop_assert!(batch.presence.len() <= 1);
                let ignored = !matches!(Topic::parse(&topic), Topic::Reading { .. } | Topic::Batch { .. } | Topic::Malformed { .. } | Topic::Status { .. });
                let empty_status = matches!(Topic::parse(&topic), Topic::Status { .. })
                    && std::str::from_utf8(&payload).is_ok_and(|text| text.trim().is_empty());
                if payload.len() > limits().max_payload {
                    prop_assert_eq!(batch.dead_letters.len(), 1);
                    prop_assert_eq!(batch.dead_letters[0].kind, "too_large");
                } else if ignored || empty_status {
                    prop_assert_eq!(outcomes, [false, false, false]);
                } else {
                    prop_assert!(outcomes.contains(&true), "{:?} {:?} was dropped", topic, payload);
                }
                let window = limits().window;
                for reading in &batch.readings {
                    prop_assert!(storable(reading.device.as_str()) && storable(&reading.metric));
                    prop_assert!(reading.unit.as_deref().is_none_or(|u| !u.chars().any(char::is_control)));
                    prop_assert!(reading.value.is_finite());
                    prop_assert!(window.earliest(now) <= reading.ts && reading.ts <= window.latest(now), "{}", reading.ts);
                }
                for letter in &batch.dead_letters {
                    prop_assert!(storable(&letter.topic) && storable(&letter.reason), "{:?}", letter);
                    prop_assert!(letter.payload.len() <= DEAD_LETTER_SAMPLE);
                    prop_assert!(letter.reason.chars().count() <= DEAD_LETTER_REASON_CHARS + 100);
                }
            }
        }
    }
}
