//! [`RegistryError`]: what the domain service reports; REST and gRPC each convert it in one place.

use ferrite_core::InvalidDeviceId;

/// What can go wrong in a registry operation.
///
/// The messages are shown to API clients as they are, except for [`RegistryError::Database`]
/// and [`RegistryError::Internal`], whose details are logged and replaced by a generic message at the edges.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The request itself is wrong (a bad device id, tag or cursor); retrying it will not help.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("device {0} not found")]
    DeviceNotFound(String),
    #[error("device {0} already exists")]
    DeviceExists(String),
    #[error("api token {0} not found")]
    TokenNotFound(String),
    /// No API token, or one that is unknown or revoked.
    #[error("missing or invalid api token")]
    Unauthenticated,
    /// A presence watcher could not keep up and missed changes; it should watch again.
    #[error("presence watch fell behind and missed {0} changes; watch again")]
    Lagged(u64),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The configuration cannot work; reported before anything binds.
    #[error("invalid registry configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    /// Hashing, random numbers or a task that died: nothing the caller did.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<InvalidDeviceId> for RegistryError {
    fn from(err: InvalidDeviceId) -> Self {
        RegistryError::InvalidArgument(err.to_string())
    }
}

impl RegistryError {
    /// The message for an API client: server-side details stay in the log.
    pub(crate) fn public_message(&self) -> String {
        match self {
            RegistryError::Database(_)
            | RegistryError::Internal(_)
            | RegistryError::Bind { .. }
            | RegistryError::InvalidConfig(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }

    /// Logs errors that are the server's fault; the caller's mistakes are not worth a log line.
    pub(crate) fn log_if_internal(&self) {
        if matches!(self, RegistryError::Database(_) | RegistryError::Internal(_) | RegistryError::Bind { .. }) {
            tracing::error!(cause = %self, "registry request failed");
        }
    }
}
