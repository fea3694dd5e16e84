//! How a reading's trace continues through the ingester, across a batch commit shared by many traces.
//!
//! A publisher (the fleet) sends each reading with its span's W3C trace context in the MQTT 5 user properties.
//! A batch commit then serves up to thousands of readings, each in a trace of its own, and one span cannot be
//! the child of all of them. So:
//!
//! - `ingest.message`: one span per message that carries a trace context, a child of the publisher's span.
//!   It opens when the message arrives (the payload is parsed inside it) and ends once the message is
//!   acknowledged after the commit, so its length is how long the reading waited for its batch and the commit.
//! - `ingest.commit`: one span per batch, the root of its own trace, around the transaction and its retries,
//!   with the rows it wrote, and links to the `ingest.message` spans of the batch (up to [`MAX_COMMIT_LINKS`]).
//! - `ingest.stored`: after the commit, a short child of each `ingest.message`, linked to the `ingest.commit`.
//!
//! One reading's trace then reads `fleet.publish -> ingest.message -> ingest.stored`, and the links lead from
//! it to the commit (its duration and row counts) and from the commit to every reading it stored.
//! The alternatives were worse: making the commit a child of one reading's span hides it from every other
//! trace, and a copy of it in each trace multiplies the spans by the batch size.
//!
//! A message without a trace context, or any message while spans are not exported, gets no span at all:
//! a one-span trace per reading would bury the useful ones, and the ingester's hot path stays as it was.

use ferrite_mqtt::Message;
use ferrite_telemetry::propagation;
use tracing::Span;
use tracing::field::Empty;

use crate::outcome::Outcome;

/// Links from one `ingest.commit` to its messages' spans: the OpenTelemetry SDK's default limit of links
/// per span (`OTEL_SPAN_LINK_COUNT_LIMIT`), beyond which it would drop them anyway.
pub const MAX_COMMIT_LINKS: usize = 128;

/// The `ingest.message` span of a traced message, a child of its publisher's span; a disabled span otherwise.
pub fn message_span(message: &Message) -> Span {
    let properties = message.user_properties();
    if !propagation::is_traced(properties) {
        return Span::none();
    }
    let span = tracing::info_span!("ingest.message", topic = %message.topic());
    propagation::set_parent_from_properties(&span, properties);
    span
}

/// The `ingest.commit` span of a batch of `messages`, linked to the spans of its traced messages.
pub fn commit_span(messages: usize, traces: &[Span]) -> Span {
    let span = tracing::info_span!(
        "ingest.commit",
        messages,
        traced = traces.len(),
        stored = Empty,
        duplicates = Empty,
        dead_lettered = Empty
    );
    for message in traces.iter().take(MAX_COMMIT_LINKS) {
        span.follows_from(message);
    }
    span
}

/// Records the commit's outcome on its span, and ends each traced message with an `ingest.stored` child
/// linked to the commit.
pub fn committed(commit: &Span, outcome: &Outcome, traces: Vec<Span>) {
    commit.record("stored", outcome.stored);
    commit.record("duplicates", outcome.duplicates);
    commit.record("dead_lettered", outcome.dead_lettered);
    for message in traces {
        let stored = tracing::info_span!(parent: &message, "ingest.stored");
        stored.follows_from(commit);
    }
}
