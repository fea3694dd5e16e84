//! `TestDb` against a real PostgreSQL: fresh databases, usable URLs, and `DATABASE_URL` mode.

use std::process::Command;

use anyhow::{Context, ensure};
use ferrite_db::PgCluster;
use ferrite_testkit::TestDb;
use sqlx::{Connection, PgConnection};

/// Set for the child process of `database_url_mode_creates_and_drops_databases`.
const CHILD_ENV: &str = "FERRITE_TESTKIT_TEST_CHILD";

#[tokio::test]
async fn every_test_db_is_fresh_and_migrated() -> anyhow::Result<()> {
    let first = TestDb::new().await?;
    let second = TestDb::new().await?;
    assert_ne!(first.name(), second.name());

    sqlx::query("insert into devices (id) values ('only-in-first')").execute(first.pool()).await?;
    let in_second: i64 = sqlx::query_scalar("select count(*) from devices").fetch_one(second.pool()).await?;
    assert_eq!(in_second, 0, "databases are independent");

    // The URL is what a child process gets: it must reach the same database, password included.
    let mut connection = PgConnection::connect(&first.url()).await?;
    let name: String = sqlx::query_scalar("select current_database()").fetch_one(&mut connection).await?;
    assert_eq!(name, first.name());
    connection.close().await?;
    Ok(())
}

#[tokio::test]
async fn database_url_mode_creates_and_drops_databases() -> anyhow::Result<()> {
    ferrite_testkit::init_test_tracing();
    // A server that outlives the child, standing in for the one CI or a developer names in DATABASE_URL.
    let cluster = tokio::task::spawn_blocking(PgCluster::start_temporary).await??;
    let output = Command::new(std::env::current_exe()?)
        .args(["child_uses_database_url", "--exact", "--test-threads=1", "--nocapture"])
        .env("DATABASE_URL", cluster.url())
        .env(CHILD_ENV, "1")
        .output()?;
    ensure!(
        output.status.success(),
        "the child failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let pool = ferrite_db::connect(cluster.connect_options()).await?;
    let left: Vec<String> = sqlx::query_scalar("select datname from pg_database where datname like 'ferrite_test_%'")
        .fetch_all(&pool)
        .await?;
    assert!(left.is_empty(), "test databases left behind: {left:?}");
    pool.close().await;
    tokio::task::spawn_blocking(move || cluster.stop()).await??;
    Ok(())
}

/// Not a test of its own: the child process of `database_url_mode_creates_and_drops_databases`.
/// Run without its environment variable (as every test runner does), it returns at once.
#[tokio::test]
async fn child_uses_database_url() -> anyhow::Result<()> {
    if std::env::var_os(CHILD_ENV).is_none() {
        return Ok(());
    }
    let url = std::env::var("DATABASE_URL").context("the parent sets DATABASE_URL")?;
    let db = TestDb::new().await?;
    let migrated: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations").fetch_one(db.pool()).await?;
    ensure!(migrated > 0, "migrations were applied");
    ensure!(db.url().contains(db.name()), "the URL names the test database");

    // The database lives on DATABASE_URL's server, not on a private cluster of ours.
    let mut admin = PgConnection::connect(&url).await?;
    let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(db.name())
        .fetch_one(&mut admin)
        .await?;
    ensure!(exists, "{} is on the DATABASE_URL server", db.name());
    admin.close().await?;
    // Dropping it here drops the database on the server, which the parent checks.
    drop(db);
    Ok(())
}
