//! Starts, stops, restarts and kills real private PostgreSQL clusters.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use ferrite_db::{DbError, PgCluster};
use ferrite_testkit::init_test_tracing;

/// Set for the child process of `the_server_dies_with_its_process`: the directory to start a cluster in.
const CHILD_DIR_ENV: &str = "FERRITE_DB_TEST_CHILD_DIR";

/// Written by the child into the cluster directory once `PgCluster::start` has returned.
const CHILD_READY_FILE: &str = "child-ready";

/// Generous bounds for polling: they only decide when a test gives up, never how fast it passes.
const PATIENCE: Duration = Duration::from_secs(60);

// PgCluster::start blocks; in these single-threaded tests nothing else needs the runtime meanwhile.

#[tokio::test]
async fn data_survives_a_restart() -> anyhow::Result<()> {
    init_test_tracing();
    let dir = tempfile::tempdir()?;

    let started = Instant::now();
    let cluster = PgCluster::start(dir.path())?;
    tracing::info!(elapsed = ?started.elapsed(), "first start, with initdb");
    let pool = ferrite_db::connect(cluster.connect_options()).await?;
    sqlx::query("create table kept (note text)").execute(&pool).await?;
    sqlx::query("insert into kept values ('before the restart')").execute(&pool).await?;
    pool.close().await;
    let first_port = cluster.port();
    cluster.stop()?;

    let started = Instant::now();
    let cluster = PgCluster::start(dir.path())?;
    tracing::info!(elapsed = ?started.elapsed(), "second start, reusing the data");
    assert_eq!(cluster.port(), first_port, "a free previous port is reused, so saved URLs keep working");
    // The URL is what a child process or psql gets; it must carry everything needed to log in.
    let pool = ferrite_db::connect(cluster.url().parse()?).await?;
    let note: String = sqlx::query_scalar("select note from kept").fetch_one(&pool).await?;
    assert_eq!(note, "before the restart");
    pool.close().await;
    cluster.stop()?;
    Ok(())
}

#[tokio::test]
async fn a_stale_lock_file_does_not_block_a_restart() -> anyhow::Result<()> {
    init_test_tracing();
    let dir = tempfile::tempdir()?;
    let cluster = PgCluster::start(dir.path())?;
    let lock = cluster.dir().join("data").join("postmaster.pid");
    let contents = std::fs::read_to_string(&lock)?;
    cluster.stop()?;

    // As after a crash and reboot, where the pid in the lock file now belongs to some other live process:
    // here our own, which postgres alone would take for a running server.
    let (_, rest) = contents.split_once('\n').context("postmaster.pid has several lines")?;
    std::fs::write(&lock, format!("{}\n{rest}", std::process::id()))?;
    let cluster = PgCluster::start(dir.path())?;
    cluster.stop()?;

    // As after a crash while postgres was writing it.
    std::fs::write(&lock, "")?;
    let cluster = PgCluster::start(dir.path())?;
    let pool = ferrite_db::connect(cluster.connect_options()).await?;
    let one: i32 = sqlx::query_scalar("select 1").fetch_one(&pool).await?;
    assert_eq!(one, 1);
    pool.close().await;
    cluster.stop()?;
    Ok(())
}

#[test]
fn a_second_server_on_the_same_directory_is_refused() -> anyhow::Result<()> {
    init_test_tracing();
    let dir = tempfile::tempdir()?;
    let cluster = PgCluster::start(dir.path())?;
    match PgCluster::start(dir.path()) {
        Err(DbError::AlreadyRunning { pid, .. }) => assert_eq!(pid, cluster.pid()),
        other => bail!("expected AlreadyRunning, got {other:?}"),
    }
    cluster.stop()?;
    Ok(())
}

#[test]
fn a_temporary_cluster_removes_its_directory() -> anyhow::Result<()> {
    init_test_tracing();
    let cluster = PgCluster::start_temporary()?;
    let dir = cluster.dir().to_path_buf();
    assert!(dir.join("data").join("PG_VERSION").exists());
    cluster.stop()?;
    assert!(!dir.exists(), "{} is left behind", dir.display());
    Ok(())
}

#[test]
fn an_unreachable_directory_is_moved_when_running_as_root() -> anyhow::Result<()> {
    init_test_tracing();
    // Like /root: only its owner may enter it, so a cluster nested inside is out of the postgres user's reach.
    let outer = tempfile::tempdir()?;
    std::fs::set_permissions(outer.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let data_dir = outer.path().join("postgres");
    let we_are_root = std::fs::metadata("/proc/self")
        .map(|meta| std::os::unix::fs::MetadataExt::uid(&meta) == 0)
        .context("this test reads our uid from /proc (Linux)")?;
    let cluster = PgCluster::start(&data_dir)?;
    if we_are_root {
        // The cluster went where the postgres user can reach it, and the named directory links to it.
        assert!(cluster.dir().starts_with(ferrite_db::SHARED_BASE), "{:?}", cluster.dir());
        assert_eq!(cluster.linked_from(), Some(data_dir.as_path()));
        assert_eq!(std::fs::read_link(&data_dir)?, cluster.dir());
        let password = std::fs::read_to_string(data_dir.join("password"))?;
        assert!(cluster.url().contains(password.trim()), "the password file is found under the named directory");
    } else {
        // Not root: postgres runs as ourselves, who own the directory.
        assert_eq!(cluster.linked_from(), None);
    }
    let moved = cluster.linked_from().map(|_| cluster.dir().to_path_buf());
    cluster.stop()?;
    if let Some(moved) = moved {
        std::fs::remove_dir_all(moved)?;
    }

    // A directory that already holds something is never moved behind the user's back: the error says what to do.
    let occupied = outer.path().join("occupied");
    std::fs::create_dir(&occupied)?;
    std::fs::write(occupied.join("something"), "kept")?;
    match PgCluster::start(&occupied) {
        Err(DbError::NotTraversable { blocker, .. }) if we_are_root => {
            assert_eq!(blocker, outer.path().canonicalize()?);
            let message = DbError::NotTraversable { data_dir: occupied.clone(), blocker, mode: 0o700 }.to_string();
            assert!(message.contains("DATABASE_URL"), "{message}");
        }
        Ok(cluster) if !we_are_root => cluster.stop()?,
        other => bail!("unexpected outcome (root: {we_are_root}): {other:?}"),
    }
    Ok(())
}

#[test]
fn the_server_dies_with_its_process() -> anyhow::Result<()> {
    init_test_tracing();
    let dir = tempfile::tempdir()?;
    // Re-run this test binary, selecting only the helper below, which starts a cluster and waits to be killed.
    let mut child = Command::new(std::env::current_exe()?)
        .args(["child_process_that_starts_a_cluster", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;

    let ready_file = dir.path().join(CHILD_READY_FILE);
    let deadline = Instant::now() + PATIENCE;
    let server_pid: u32 = loop {
        if let Ok(text) = std::fs::read_to_string(&ready_file)
            && let Ok(pid) = text.trim().parse()
        {
            break pid;
        }
        if let Some(status) = child.try_wait()? {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                pipe.read_to_string(&mut stderr)?;
            }
            bail!("the child exited ({status}) before its cluster was ready: {stderr}");
        }
        if Instant::now() > deadline {
            child.kill()?;
            bail!("the child's cluster was not ready within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    ensure!(process_exists(server_pid), "postgres runs before the kill");

    // SIGKILL: no destructor, no signal handler, nothing of ours runs.
    child.kill()?;
    child.wait()?;

    let deadline = Instant::now() + PATIENCE;
    while process_exists(server_pid) {
        ensure!(Instant::now() < deadline, "postgres (pid {server_pid}) outlived its process by {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A fast shutdown, not a crash: postgres removes its lock file only when it stops cleanly.
    let lock = dir.path().join("data").join("postmaster.pid");
    ensure!(!lock.exists(), "postgres did not shut down cleanly");

    // And the directory is as good as before.
    let cluster = PgCluster::start(dir.path())?;
    cluster.stop()?;
    Ok(())
}

/// Not a test of its own: the child process of `the_server_dies_with_its_process`.
/// Run without its environment variable (as every test runner does), it returns at once.
#[test]
fn child_process_that_starts_a_cluster() -> anyhow::Result<()> {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return Ok(());
    };
    let dir = Path::new(&dir);
    let cluster = PgCluster::start(dir)?;
    std::fs::write(dir.join(CHILD_READY_FILE), cluster.pid().to_string())?;
    // The parent kills us long before this ends; should it not, the cluster still stops when we return.
    std::thread::sleep(PATIENCE);
    cluster.stop()?;
    Ok(())
}

/// Whether the process exists and is not a zombie (a zombie has exited; only its parent has not looked yet).
fn process_exists(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the command name, which is in parentheses and may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
