//! A fresh migrated database per test, on `DATABASE_URL`'s server or on a private cluster per test process.

use std::sync::OnceLock;

use anyhow::{Context, bail};
use ferrite_db::PgCluster;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection, PgPool};

use crate::init_test_tracing;

/// The private cluster of this test process, started by the first `TestDb::new` and shared by all later ones.
///
/// A static is never dropped: the cluster's watchdog stops the server and removes its directory when the process exits.
/// A failed start is remembered as text, so that every test reports it without trying again.
static CLUSTER: OnceLock<Result<PgCluster, String>> = OnceLock::new();

/// A database of its own for one test: named `ferrite_test_<uuid>`, with every migration applied.
///
/// With `DATABASE_URL` set, it is created on that server (the URL's user needs CREATEDB) and dropped again
/// when the `TestDb` is dropped, unless the test is panicking, so that a failure can be inspected.
/// Without it, it is created on a private PostgreSQL cluster that this process starts on first use
/// (`PgCluster::start_temporary`, under a second in /dev/shm) and that goes away with the process;
/// there nothing is dropped, since everything goes at once.
/// Under nextest every test is a process of its own, so each such test pays for that start, plus about 0.2 s for its database.
pub struct TestDb {
    pool: PgPool,
    options: PgConnectOptions,
    name: String,
    /// How to reach the server as its admin, to drop the database: only for a server that outlives us.
    shared_server: Option<PgConnectOptions>,
}

impl std::fmt::Debug for TestDb {
    // By hand: the options hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb").field("name", &self.name).finish_non_exhaustive()
    }
}

impl TestDb {
    /// Creates a fresh database and applies the migrations.
    pub async fn new() -> anyhow::Result<TestDb> {
        init_test_tracing();
        let (admin, shared) = match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => {
                let options = url.parse::<PgConnectOptions>().context("DATABASE_URL is not a PostgreSQL URL")?;
                (options, true)
            }
            _ => (private_cluster().await?, false),
        };

        let started = std::time::Instant::now();
        let name = format!("ferrite_test_{}", uuid::Uuid::new_v4().simple());
        let mut connection =
            PgConnection::connect_with(&admin).await.context("cannot connect to the test PostgreSQL server")?;
        // The name is ours (hex from a UUID), so formatting it into the statement is safe.
        sqlx::query(AssertSqlSafe(format!(r#"create database "{name}""#)))
            .execute(&mut connection)
            .await
            .with_context(|| format!("cannot create test database {name}"))?;
        // Best effort: the database exists, and an unclean close only costs the server a log line.
        let _ = connection.close().await;

        tracing::debug!(elapsed = ?started.elapsed(), "test database created");
        let options = admin.clone().database(&name);
        let pool = ferrite_db::connect(options.clone())
            .await
            .with_context(|| format!("cannot connect to test database {name}"))?;
        tracing::debug!(elapsed = ?started.elapsed(), "test database connected");
        ferrite_db::migrate(&pool).await.with_context(|| format!("cannot migrate test database {name}"))?;
        tracing::debug!(database = %name, elapsed = ?started.elapsed(), "test database created and migrated");
        Ok(TestDb { pool, options, name, shared_server: shared.then_some(admin) })
    }

    /// A pool connected to this test's database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Options to connect to this test's database, for code under test that opens its own pool.
    pub fn connect_options(&self) -> PgConnectOptions {
        self.options.clone()
    }

    /// A `DATABASE_URL` for this test's database, for a child process (it holds the password).
    pub fn url(&self) -> String {
        self.options.to_url_lossy().to_string()
    }

    /// The database's name, `ferrite_test_<uuid>`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(admin) = self.shared_server.take() else {
            return;
        };
        if std::thread::panicking() {
            tracing::warn!(database = %self.name, "test failed: keeping its database for inspection");
            return;
        }
        let name = self.name.clone();
        // Drop cannot await, and we may be inside any kind of runtime (or none):
        // a thread with its own small runtime works in all cases.
        let dropped = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let mut connection = PgConnection::connect_with(&admin).await?;
                // FORCE ends this test's pooled sessions too (PostgreSQL 13 and later).
                sqlx::query(AssertSqlSafe(format!(r#"drop database if exists "{name}" with (force)"#)))
                    .execute(&mut connection)
                    .await?;
                Ok(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(database = %self.name, cause = %err, "cannot drop test database");
            }
            Err(_) => tracing::warn!(database = %self.name, "dropping the test database panicked"),
        }
    }
}

/// Connect options for this process's private cluster, starting it on first use.
async fn private_cluster() -> anyhow::Result<PgConnectOptions> {
    // Starting blocks for about a second; spawn_blocking keeps the test's runtime responsive meanwhile.
    let cluster = tokio::task::spawn_blocking(|| {
        CLUSTER.get_or_init(|| PgCluster::start_temporary().map_err(|err| err.to_string()))
    })
    .await
    .context("starting PostgreSQL panicked")?;
    match cluster {
        Ok(cluster) => Ok(cluster.connect_options()),
        Err(err) => bail!("cannot start a private PostgreSQL for tests: {err}"),
    }
}
