//! [`QueryError`]: what the telemetry service reports; REST and gRPC each convert it in one place.

use ferrite_core::InvalidDeviceId;

/// What can go wrong in a telemetry call.
///
/// The messages are shown to API clients as they are, except for [`QueryError::Database`] and [`QueryError::Internal`],
/// whose details are logged and replaced by a generic message at the edges.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The request itself is wrong (a bad device id, range, bucket, aggregate, limit or cursor).
    #[error("{0}")]
    InvalidArgument(String),
    /// Neither registered nor ever heard from.
    #[error("device {0} not found")]
    DeviceNotFound(String),
    /// The live stream needs a broker, and none is configured.
    #[error("live streams are not available: no mqtt broker is configured")]
    LiveUnavailable,
    /// The broker refused, or did not answer, the subscription a live stream needs.
    #[error("cannot follow the device's readings: {0}")]
    LiveRefused(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<InvalidDeviceId> for QueryError {
    fn from(err: InvalidDeviceId) -> Self {
        QueryError::InvalidArgument(err.to_string())
    }
}

impl QueryError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        QueryError::InvalidArgument(message.into())
    }

    /// The message for an API client: server-side details stay in the log.
    pub(crate) fn public_message(&self) -> String {
        match self {
            QueryError::Database(_) | QueryError::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }

    /// Logs errors that are the server's fault; the caller's mistakes are not worth a log line.
    pub(crate) fn log_if_internal(&self) {
        if matches!(self, QueryError::Database(_) | QueryError::Internal(_)) {
            tracing::error!(cause = %self, "telemetry request failed");
        }
    }
}
