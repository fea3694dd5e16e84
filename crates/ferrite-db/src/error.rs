//! The one error type of this crate.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Everything that can go wrong in `ferrite-db`, from finding the PostgreSQL binaries to running a query.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Neither PATH nor the usual install locations have `initdb` and `postgres`.
    #[error(
        "PostgreSQL server binaries not found: apt install postgresql (or put initdb and postgres on PATH, or set DATABASE_URL)"
    )]
    BinariesNotFound,

    /// PostgreSQL refuses to run as root, and there is no account to run it as instead.
    #[error(
        "running as root, but there is no `postgres` system user to run PostgreSQL as: apt install postgresql creates one, or set DATABASE_URL"
    )]
    NoServerUser,

    /// Running as root, the data directory sits below a directory the `postgres` user cannot enter.
    #[error(
        "the postgres system user cannot reach {data_dir}: {blocker} (mode {mode:o}) is not searchable by it; set DATABASE_URL or choose a data directory outside {blocker}"
    )]
    NotTraversable { data_dir: PathBuf, blocker: PathBuf, mode: u32 },

    /// Another live server already owns the data directory.
    #[error("a PostgreSQL server (pid {pid}) is already running on {data_dir}")]
    AlreadyRunning { data_dir: PathBuf, pid: u32 },

    /// The data directory holds a cluster, but the password file beside it is gone.
    #[error(
        "cannot use the PostgreSQL cluster in {data_dir}: its password file is missing (delete the directory to start afresh)"
    )]
    MissingPassword { data_dir: PathBuf },

    /// `initdb` exited with an error.
    #[error("initdb failed ({status}): {output}")]
    Initdb { status: ExitStatus, output: String },

    /// `postgres` exited before it accepted connections.
    #[error("postgres exited during startup ({status}); its log ends with: {log}")]
    Startup { status: ExitStatus, log: String },

    /// `postgres` kept running but never reported that it accepts connections.
    #[error("postgres did not accept connections within {timeout:?}; its log ends with: {log}")]
    StartTimeout { timeout: Duration, log: String },

    /// A fast shutdown did not finish in time.
    #[error("postgres did not stop within {0:?}")]
    StopTimeout(Duration),

    /// A file or process operation failed; `context` says which.
    #[error("{context}: {cause}")]
    Io { context: String, cause: std::io::Error },

    /// A query or connection failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),

    /// Applying the embedded migrations failed.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl DbError {
    /// Wraps an I/O error with what we were doing, since a bare "permission denied" names no file.
    pub(crate) fn io(context: impl Into<String>, cause: std::io::Error) -> Self {
        DbError::Io { context: context.into(), cause }
    }
}
