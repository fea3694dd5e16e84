//! The database: the server named by `DATABASE_URL`, or our own cluster under the data directory.

use std::path::Path;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

/// A migrated pool and, when we started it, the private cluster behind it.
pub struct Database {
    pub pool: PgPool,
    pub cluster: Option<ferrite_db::PgCluster>,
    /// Where it is, for the start-up banner (no password).
    pub description: String,
}

impl Database {
    /// Connects to `url`, or starts (or reuses) the private cluster in `data_dir/postgres`; then migrates.
    pub async fn open(url: Option<&str>, data_dir: &Path) -> anyhow::Result<Database> {
        let (options, cluster, description) = match url {
            Some(url) => {
                let options: PgConnectOptions = url.parse().context("DATABASE_URL is not a valid PostgreSQL URL")?;
                let description = format!(
                    "postgres://{}:{}/{}",
                    options.get_host(),
                    options.get_port(),
                    options.get_database().unwrap_or_default()
                );
                (options, None, description)
            }
            None => {
                let dir = data_dir.join("postgres");
                let cluster = tokio::task::spawn_blocking(move || ferrite_db::PgCluster::start(&dir))
                    .await
                    .context("the PostgreSQL start-up task failed")?
                    .context("cannot start the private PostgreSQL (set DATABASE_URL to use another server)")?;
                let linked = match cluster.linked_from() {
                    Some(link) => format!(", linked from {}", link.display()),
                    None => String::new(),
                };
                let description = format!(
                    "private cluster in {}{linked} (127.0.0.1:{}, password in the cluster directory)",
                    cluster.dir().display(),
                    cluster.port()
                );
                (cluster.connect_options(), Some(cluster), description)
            }
        };
        let pool = ferrite_db::connect(options).await.context("cannot connect to PostgreSQL")?;
        ferrite_db::migrate(&pool).await.context("cannot apply migrations")?;
        Ok(Database { pool, cluster, description })
    }

    /// Closes the pool and stops our own cluster, if we started one.
    pub async fn close(self) {
        self.pool.close().await;
        if let Some(cluster) = self.cluster {
            match tokio::task::spawn_blocking(move || cluster.stop()).await {
                Ok(Ok(())) => tracing::info!("PostgreSQL stopped"),
                Ok(Err(error)) => tracing::warn!(%error, "PostgreSQL did not stop cleanly"),
                Err(error) => tracing::warn!(%error, "the PostgreSQL stop task failed"),
            }
        }
    }
}
