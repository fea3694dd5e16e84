//! The domain: a command, its states, and what a client may ask for.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::CommandError;

/// Where a command stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandState {
    /// The device was offline: the broker holds the command in the device's persistent session until it reconnects.
    Pending,
    /// Published to an online device; no answer yet.
    Sent,
    /// The device answered `"status": "ok"`.
    Ok,
    /// The device answered with anything else (its `result` says why).
    Error,
    /// No answer within the timeout; a late answer still moves it to `ok` or `error`.
    TimedOut,
}

impl CommandState {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandState::Pending => "pending",
            CommandState::Sent => "sent",
            CommandState::Ok => "ok",
            CommandState::Error => "error",
            CommandState::TimedOut => "timed_out",
        }
    }

    /// Whether the device answered or the wait is over.
    pub fn is_complete(self) -> bool {
        matches!(self, CommandState::Ok | CommandState::Error | CommandState::TimedOut)
    }
}

impl FromStr for CommandState {
    type Err = CommandError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(CommandState::Pending),
            "sent" => Ok(CommandState::Sent),
            "ok" => Ok(CommandState::Ok),
            "error" => Ok(CommandState::Error),
            "timed_out" => Ok(CommandState::TimedOut),
            other => Err(CommandError::Internal(format!("unknown command state {other:?} in the database"))),
        }
    }
}

/// A stored command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: Uuid,
    pub device_id: String,
    pub name: String,
    /// Always a JSON object.
    pub params: serde_json::Value,
    pub state: CommandState,
    /// The device's `result`, once it answered.
    pub result: Option<serde_json::Value>,
    pub timeout: Duration,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// What a client asks for; both faces build this.
#[derive(Debug, Clone)]
pub struct SendCommand {
    pub device_id: String,
    pub name: String,
    /// A JSON object, or null for none.
    pub params: serde_json::Value,
    /// The service's default when absent.
    pub timeout: Option<Duration>,
    /// Wait for the answer (when the device is online).
    pub wait: bool,
}

/// The longest command name.
const MAX_NAME: usize = 64;

/// Checks a command name: 1 to 64 printable characters without `/`, `+` or `#` (it travels in JSON, but keeping it
/// topic-safe leaves room to route by name later).
pub(crate) fn check_name(name: &str) -> Result<(), CommandError> {
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(CommandError::InvalidArgument(format!("command name must be 1 to {MAX_NAME} characters")));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace() || matches!(c, '/' | '+' | '#')) {
        return Err(CommandError::InvalidArgument(format!(
            "invalid command name {name:?}: no spaces, control characters, / + or #"
        )));
    }
    Ok(())
}

/// `10s`, `1m`, `500ms`, or a plain number of seconds.
pub fn parse_timeout(text: &str) -> Result<Duration, CommandError> {
    let text = text.trim();
    let parsed = match text.parse::<f64>() {
        Ok(seconds) => Duration::try_from_secs_f64(seconds).map_err(|_| "seconds must be a positive number".to_owned()),
        Err(_) => humantime::parse_duration(text).map_err(|err| err.to_string()),
    };
    parsed.map_err(|reason| {
        CommandError::InvalidArgument(format!("invalid timeout {text:?}: {reason} (expected e.g. 10s)"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timeouts() {
        assert_eq!(parse_timeout("10s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(parse_timeout("1.5").ok(), Some(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("250ms").ok(), Some(Duration::from_millis(250)));
        assert!(parse_timeout("soon").is_err());
        assert!(parse_timeout("-1").is_err());
    }

    #[test]
    fn checks_names() {
        assert!(check_name("set-interval").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name(&"x".repeat(65)).is_err());
    }
}
