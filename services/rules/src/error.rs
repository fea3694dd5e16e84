//! [`RulesError`]: what rule management and the engine report; REST and gRPC each convert it in one place.

/// What can go wrong with a rule or an alert query.
///
/// Messages are shown to API clients as they are, except for [`RulesError::Database`] and [`RulesError::Internal`],
/// whose details are logged and replaced by a generic message at the edges.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The request itself is wrong (an unknown comparison, an empty metric, a bad duration); retrying will not help.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("rule {0} not found")]
    RuleNotFound(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A task or the MQTT session died: nothing the caller did.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RulesError {
    /// The message for an API client: server-side details stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            RulesError::Database(_) | RulesError::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }

    /// Logs errors that are the server's fault; the caller's mistakes are not worth a log line.
    pub(crate) fn log_if_internal(&self) {
        if matches!(self, RulesError::Database(_) | RulesError::Internal(_)) {
            tracing::error!(cause = %self, "rules request failed");
        }
    }
}
