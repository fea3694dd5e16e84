//! [`CommandError`]: what sending and looking up commands reports; REST and gRPC each convert it in one place.

/// What can go wrong with a command.
///
/// Messages are shown to API clients as they are, except for [`CommandError::Database`] and [`CommandError::Internal`],
/// whose details are logged and replaced by a generic message at the edges.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The request itself is wrong (a bad device id, name or timeout); retrying will not help.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("device {0} not found")]
    DeviceNotFound(String),
    #[error("command {0} not found")]
    CommandNotFound(String),
    /// The MQTT session has stopped (the service is shutting down).
    #[error("the command could not be published: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl CommandError {
    /// The message for an API client: server-side details stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            CommandError::Database(_) | CommandError::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }

    /// Logs errors that are the server's fault; the caller's mistakes are not worth a log line.
    pub(crate) fn log_if_internal(&self) {
        if matches!(self, CommandError::Database(_) | CommandError::Internal(_) | CommandError::Unavailable(_)) {
            tracing::error!(cause = %self, "command request failed");
        }
    }
}

impl From<ferrite_core::InvalidDeviceId> for CommandError {
    fn from(err: ferrite_core::InvalidDeviceId) -> Self {
        CommandError::InvalidArgument(err.to_string())
    }
}
