//! A batch: the messages received since the last commit, already parsed into what will be written.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use ferrite_core::{DeviceId, PayloadError, Presence, Reading, Topic, parse_presence, parse_readings};
use ferrite_mqtt::Message;
use tracing::Span;

/// A payload we could not use, kept with the reason so that nothing is dropped silently.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub topic: String,
    pub payload: Bytes,
    pub reason: String,
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
    messages: Vec<Message>,
    pub readings: Vec<Reading>,
    pub dead_letters: Vec<DeadLetter>,
    pub presence: Vec<PresenceChange>,
    /// The `ingest.message` spans of the messages that carried a trace context, open until their batch is
    /// acknowledged (see [`crate::trace`]).
    traces: Vec<Span>,
}

impl Batch {
    /// Adds a message, parsing it now so a bad payload is found before the write.
    pub fn push(&mut self, message: Message) {
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
        let topic = Topic::parse(topic_text);
        match &topic {
            Topic::Reading { .. } | Topic::Batch { .. } | Topic::Malformed { .. } => {
                // A retained reading arrives again on every (re)subscription; it was stored when it was
                // first published live, so the replay is skipped rather than stored twice.
                if retained && !matches!(topic, Topic::Malformed { .. }) {
                    return;
                }
                match parse_readings(&topic, payload, content_type, received_at) {
                    Ok(readings) => self.readings.extend(readings),
                    Err(error) => self.dead_letter(topic_text, payload, &error),
                }
            }
            Topic::Status { device } => match parse_presence(payload) {
                Ok(presence) => {
                    self.presence.push(PresenceChange { device: device.clone(), presence, at: received_at })
                }
                // An empty retained status is a client clearing it, not a malformed message.
                Err(PayloadError::Empty) => {}
                Err(error) => self.dead_letter(topic_text, payload, &error),
            },
            _ => {}
        }
    }

    fn dead_letter(&mut self, topic: &str, payload: &Bytes, error: &PayloadError) {
        self.dead_letters.push(DeadLetter {
            topic: topic.to_owned(),
            payload: payload.clone(),
            reason: error.to_string(),
        });
    }

    /// Messages received, whether or not they produced rows.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
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
}
