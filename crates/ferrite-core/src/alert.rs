//! The alert published on `alerts/{device}` (DESIGN.md): written by the rules engine, read by the gateway (and by
//! anyone else who publishes there, e.g. `mosquitto_pub -t alerts/door -m "door open"`). One type, so the JSON shape is
//! declared once.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An alert's JSON. Every field is optional so that a sparse alert from another publisher still reads;
/// `rule`, `metric`, `value` and `ts` are kept as sent (any JSON), since readers pass them through.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertMessage {
    /// The rule's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Value>,
    /// The reading that fired (or resolved) it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// `firing` or `resolved`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Value>,
    /// RFC 3339 text, or milliseconds since the epoch from other publishers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<Value>,
}

/// Why an `alerts/...` payload is not an alert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlertError {
    #[error("alert payload is not text")]
    NotText,
    #[error("empty alert")]
    Empty,
    #[error("invalid alert JSON: {0}")]
    InvalidJson(String),
}

impl AlertMessage {
    /// Reads a payload: a JSON object, or plain text, which is an alert whose message is that text.
    pub fn parse(payload: &[u8]) -> Result<AlertMessage, AlertError> {
        let text = std::str::from_utf8(payload).map_err(|_| AlertError::NotText)?;
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(AlertError::Empty);
        }
        if trimmed.starts_with('{') {
            serde_json::from_str(trimmed).map_err(|error| AlertError::InvalidJson(error.to_string()))
        } else {
            Ok(AlertMessage { message: Some(trimmed.to_owned()), ..AlertMessage::default() })
        }
    }

    /// The JSON text published.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an alert of JSON values always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_alerts_read_back_and_sparse_ones_still_read() {
        let alert = AlertMessage {
            rule: Some("hot".into()),
            device_id: Some("lamp-1".into()),
            value: Some(31.5.into()),
            state: Some("firing".into()),
            ..AlertMessage::default()
        };
        assert_eq!(AlertMessage::parse(alert.to_json().as_bytes()), Ok(alert));
        assert_eq!(AlertMessage::parse(b" door open ").map(|a| a.message), Ok(Some("door open".into())));
        assert_eq!(AlertMessage::parse(b"  "), Err(AlertError::Empty));
        assert_eq!(AlertMessage::parse(&[0xff]), Err(AlertError::NotText));
        assert!(matches!(AlertMessage::parse(b"{\"rule\":"), Err(AlertError::InvalidJson(_))));
    }
}
