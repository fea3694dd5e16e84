//! A private PostgreSQL cluster run from the server binaries installed on this machine.

mod account;
mod install;
mod location;
mod pidfile;

pub use self::location::SHARED_BASE;

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use self::account::ServerAccount;
use self::install::Installation;
use self::pidfile::{Holder, PidFile};
use crate::DbError;

/// The superuser `initdb` creates; the name every PostgreSQL user expects.
const SUPERUSER: &str = "postgres";

/// The database `connect_options` and `url` point at: the private cluster holds nothing else.
const DATABASE: &str = "postgres";

/// Only loopback: the cluster is private to this machine, and a password still guards it from other local users.
const LISTEN_ADDRESS: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// How long postgres may take to accept connections; crash recovery of a laptop-sized cluster fits easily.
/// Same as `pg_ctl --wait`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a fast shutdown may take: it only rolls back transactions and writes one checkpoint.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// How often we look at `postmaster.pid` while waiting; startup takes hundreds of milliseconds.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The least free space in `/dev/shm` for a temporary cluster to go there: an empty cluster takes 40 MB,
/// each test database about 8 MB more, and Docker gives containers only 64 MB by default.
const SHM_MIN_AVAILABLE_KIB: u64 = 1024 * 1024;

/// How many ports to try when another process takes the free port we picked before postgres binds it.
const PORT_ATTEMPTS: usize = 8;

/// Server settings for laptops and tests, passed on the command line so that they never go stale in postgresql.conf.
/// Durability is kept: `fsync` stays on and `synchronous_commit` keeps its default (on),
/// because the platform acknowledges QoS 1 and 2 readings only after their rows are committed.
const SERVER_SETTINGS: &[&str] = &[
    // Default is 128MB; a dev cluster of a few devices needs far less, and tests start many clusters.
    "shared_buffers=32MB",
    "fsync=on",
    // Default is 1GB of WAL before a checkpoint; a laptop cluster should not grow that large.
    "max_wal_size=256MB",
    "min_wal_size=32MB",
    "listen_addresses=127.0.0.1",
    // No unix socket: the distribution's default directory (/var/run/postgresql) may not exist or be writable,
    // and TCP on loopback works for every client, including containers on the host network.
    "unix_socket_directories=",
];

/// Starts postgres and stops it when our end of its standard input closes; see the script's comments.
const WATCHDOG_SCRIPT: &str = include_str!("cluster/watchdog.sh");

/// A private PostgreSQL cluster in a directory of ours, started from the installed server binaries.
///
/// The directory holds `data/` (the cluster itself), `password`, `postgres.log` (with the previous run's log beside it), `watchdog.sh`
/// and `port` (the last port, reused when free so that a saved psql URL keeps working).
///
/// # Authentication
///
/// The server listens on 127.0.0.1 only, and `initdb` sets up scram-sha-256 for every connection
/// with a random password kept in the 0600 file `password` beside the data.
/// We chose that over `--auth=trust` on a private unix socket because a TCP URL works for every client
/// (psql, GUI tools, a child process, a container on the host network) and has no socket path length limit,
/// while other local users still cannot get in: they can neither read the password nor the data directory.
///
/// # Lifetime
///
/// postgres runs under a small `sh` watchdog whose standard input is a pipe from this process.
/// When this process exits for any reason, SIGKILL and panics included, the kernel closes the pipe,
/// and the watchdog asks postgres for a fast shutdown; a temporary cluster's directory is then removed too.
/// The watchdog runs in its own process group, so a Ctrl-C in the terminal reaches only us,
/// and we can drain our writes before stopping the database.
///
/// # Running as root
///
/// `initdb` and `postgres` refuse to run as root, so as root they run as the `postgres` system user,
/// which then owns the directory; every directory above it must be searchable by that user.
/// When one is not (a clone in `/root`, mode 0700), a new cluster goes to `/var/lib/ferrite/postgres/<hash of the path>`
/// and the named directory becomes a symbolic link to it, so its files are found under the same name.
///
/// Starting blocks: one to two seconds when `initdb` runs first, tens of milliseconds otherwise;
/// async code should call it through `tokio::task::spawn_blocking`.
pub struct PgCluster {
    /// Canonical path of our directory.
    root: PathBuf,
    /// The directory the caller named, when it is a symbolic link to `root` (see `location`).
    linked_from: Option<PathBuf>,
    port: u16,
    password: String,
    /// The postmaster's pid.
    pid: u32,
    /// `None` once stopped.
    watchdog: Option<Watchdog>,
    /// A temporary cluster's directory is removed when the cluster stops.
    temporary: bool,
}

impl std::fmt::Debug for PgCluster {
    // Hand-written so that the password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCluster")
            .field("root", &self.root)
            .field("port", &self.port)
            .field("pid", &self.pid)
            .field("running", &self.watchdog.is_some())
            .field("temporary", &self.temporary)
            .finish_non_exhaustive()
    }
}

impl PgCluster {
    /// Starts the cluster in `data_dir`, creating it first when the directory is new or empty.
    ///
    /// A second start on the same directory reuses its data, and a `postmaster.pid` left by a crash is cleared.
    pub fn start(data_dir: &Path) -> Result<PgCluster, DbError> {
        PgCluster::launch(data_dir, false)
    }

    /// Starts a new cluster in a fresh temporary directory that is removed when the cluster stops,
    /// including when this process dies without dropping it.
    ///
    /// The directory goes in memory-backed `/dev/shm` when that has room and `TMPDIR` is not set, else in the temporary directory:
    /// a throwaway cluster gains nothing from a disk, and on a slow one `initdb` and `CREATE DATABASE` took twice as long.
    /// Its `initdb` skips the final fsync too, since the directory does not outlive the process, let alone the machine.
    pub fn start_temporary() -> Result<PgCluster, DbError> {
        let dir = tempfile::Builder::new()
            .prefix("ferrite-postgres-")
            .tempdir_in(temporary_base())
            .map_err(|err| DbError::io("cannot create a temporary directory", err))?
            // From here on the cluster (or its watchdog) owns the directory's removal.
            .keep();
        let cluster = PgCluster::launch(&dir, true);
        if cluster.is_err() {
            // Best effort: a failed start leaves nothing worth keeping, and the error matters more.
            let _ = fs::remove_dir_all(&dir);
        }
        cluster
    }

    /// Options to connect to the cluster's `postgres` database as the superuser.
    pub fn connect_options(&self) -> PgConnectOptions {
        PgConnectOptions::new_without_pgpass()
            .host(&LISTEN_ADDRESS.to_string())
            .port(self.port)
            .username(SUPERUSER)
            .password(&self.password)
            .database(DATABASE)
            // Loopback only; and a PGSSLMODE=require in the environment must not break a private cluster.
            .ssl_mode(PgSslMode::Disable)
    }

    /// A `DATABASE_URL` for the cluster's `postgres` database, for child processes and psql.
    /// It holds the password: do not log it.
    pub fn url(&self) -> String {
        format!("postgres://{SUPERUSER}:{}@{LISTEN_ADDRESS}:{}/{DATABASE}?sslmode=disable", self.password, self.port)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The cluster's directory (canonical), which holds `data/`, `password` and the server log.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The directory the caller named, when it is a symbolic link to [`PgCluster::dir`]: as root, a cluster whose
    /// directory the `postgres` user cannot reach is kept under [`SHARED_BASE`] instead.
    pub fn linked_from(&self) -> Option<&Path> {
        self.linked_from.as_deref()
    }

    /// Stops the server with a fast shutdown (open transactions roll back) and waits until it has exited.
    pub fn stop(mut self) -> Result<(), DbError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), DbError> {
        let Some(mut watchdog) = self.watchdog.take() else {
            return Ok(());
        };
        tracing::info!(pid = self.pid, "stopping PostgreSQL in {}", self.root.display());
        let started = Instant::now();
        watchdog.stop(STOP_TIMEOUT)?;
        if self.temporary {
            // The watchdog removes it already; this covers a watchdog that could not (say, an odd TMPDIR).
            match fs::remove_dir_all(&self.root) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(DbError::io(format!("cannot remove {}", self.root.display()), err));
                }
                _ => {}
            }
        }
        tracing::info!(elapsed = ?started.elapsed(), "PostgreSQL stopped");
        Ok(())
    }

    fn launch(data_dir: &Path, temporary: bool) -> Result<PgCluster, DbError> {
        let started = Instant::now();
        let account = ServerAccount::current()?;
        let data_dir = &match temporary {
            true => data_dir.to_path_buf(),
            false => location::place(&account, data_dir)?,
        };
        let linked_from = fs::symlink_metadata(data_dir)
            .is_ok_and(|meta| meta.file_type().is_symlink())
            .then(|| data_dir.to_path_buf());
        fs::create_dir_all(data_dir)
            .map_err(|err| DbError::io(format!("cannot create {}", data_dir.display()), err))?;
        account.check_reachable(data_dir)?;
        // Canonical, so that two spellings of one directory are recognised as the same cluster.
        let root = data_dir
            .canonicalize()
            .map_err(|err| DbError::io(format!("cannot resolve {}", data_dir.display()), err))?;
        account.hand_over(&root, 0o700)?;
        let data = root.join("data");

        let existing_major = read_major(&data);
        let installation = Installation::find(existing_major.as_deref())?;
        let password = match existing_major {
            Some(_) => read_password(&root)?,
            None => initialize(&root, &installation, &account, temporary)?,
        };
        let major = read_major(&data).unwrap_or_else(|| "?".to_owned());
        tracing::info!("starting PostgreSQL {major} in {}", data_dir.display());

        clear_stale_lock(&data)?;
        let log = root.join("postgres.log");
        rotate(&log, &root.join("postgres.previous.log"))?;
        let remove_on_exit = if temporary { root.clone() } else { PathBuf::new() };
        let launch = Launch {
            installation: &installation,
            account: &account,
            root: &root,
            data: &data,
            log: &log,
            remove_on_exit: &remove_on_exit,
        };

        let port_file = root.join("port");
        let mut port = previous_port(&port_file).map_or_else(free_port, Ok)?;
        let mut attempt = 1;
        let (watchdog, pid) = loop {
            match launch.run(port)? {
                Some(running) => break running,
                None if attempt < PORT_ATTEMPTS => {
                    tracing::debug!(port, "port taken before postgres could bind it; trying another");
                    attempt += 1;
                    port = free_port()?;
                }
                None => {
                    return Err(DbError::io(
                        "cannot find a free port for postgres",
                        std::io::Error::from(std::io::ErrorKind::AddrInUse),
                    ));
                }
            }
        };
        // Only a convenience for the next start, so a failure to save it is not worth failing this one.
        if let Err(err) = account.write_file(&port_file, port.to_string().as_bytes(), 0o600) {
            tracing::debug!(cause = %err, "cannot save the port for the next start");
        }
        tracing::info!(
            port,
            pid,
            elapsed = ?started.elapsed(),
            "PostgreSQL {major} accepts connections on {LISTEN_ADDRESS}:{port}"
        );
        Ok(PgCluster { root, linked_from, port, password, pid, watchdog: Some(watchdog), temporary })
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Err(err) = self.shutdown() {
            tracing::warn!(cause = %err, "stopping PostgreSQL failed");
        }
    }
}

/// The watchdog shell and our end of its lifeline pipe.
struct Watchdog {
    child: Child,
    /// Closing it (dropping it, or our process dying) makes the watchdog stop postgres.
    lifeline: Option<ChildStdin>,
}

impl Watchdog {
    fn stop(&mut self, timeout: Duration) -> Result<ExitStatus, DbError> {
        drop(self.lifeline.take());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(DbError::StopTimeout(timeout));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>, DbError> {
        self.child.try_wait().map_err(|err| DbError::io("cannot wait for the postgres watchdog", err))
    }
}

/// Everything one attempt to start postgres needs.
struct Launch<'a> {
    installation: &'a Installation,
    account: &'a ServerAccount,
    root: &'a Path,
    data: &'a Path,
    log: &'a Path,
    /// Empty for a persistent cluster.
    remove_on_exit: &'a Path,
}

impl Launch<'_> {
    /// Starts postgres on `port` and waits until it accepts connections.
    /// `Ok(None)` means the port was taken in the meantime and another should be tried.
    fn run(&self, port: u16) -> Result<Option<(Watchdog, u32)>, DbError> {
        let log_offset = fs::metadata(self.log).map_or(0, |meta| meta.len());
        // From a file rather than `sh -c`, so that `ps` shows a readable command line.
        let script = self.root.join("watchdog.sh");
        self.account.write_file(&script, WATCHDOG_SCRIPT.as_bytes(), 0o600)?;
        let mut command = Command::new("/bin/sh");
        command
            .arg(&script)
            .arg(self.log)
            .arg(self.remove_on_exit)
            .arg(self.installation.postgres())
            .arg("-D")
            .arg(self.data)
            .arg("-p")
            .arg(port.to_string());
        for setting in SERVER_SETTINGS {
            command.arg("-c").arg(setting);
        }
        command
            .current_dir(self.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Keeps terminal signals (Ctrl-C) away from postgres: we stop it ourselves, after draining.
            .process_group(0);
        self.account.apply(&mut command);
        let mut child =
            command.spawn().map_err(|err| DbError::io("cannot start the postgres watchdog (/bin/sh)", err))?;
        let lifeline = child.stdin.take();
        let mut watchdog = Watchdog { child, lifeline };

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = watchdog.try_wait()? {
                let log = log_tail(self.log, log_offset);
                if log.contains("could not bind") || log.contains("Address already in use") {
                    return Ok(None);
                }
                return Err(DbError::Startup { status, log });
            }
            if let Some(pid_file) = PidFile::read(self.data)
                && pid_file.is_ready()
                && pid_file.port == Some(port)
            {
                return Ok(Some((watchdog, pid_file.pid)));
            }
            if Instant::now() >= deadline {
                // Best effort: the timeout is the error worth reporting.
                let _ = watchdog.stop(STOP_TIMEOUT);
                return Err(DbError::StartTimeout { timeout: READY_TIMEOUT, log: log_tail(self.log, log_offset) });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

/// Where temporary clusters go; see `PgCluster::start_temporary`.
fn temporary_base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if std::env::var_os("TMPDIR").is_none() && available_kib(shm).is_some_and(|kib| kib >= SHM_MIN_AVAILABLE_KIB) {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Free space on the file system of `dir`, through `df` because statvfs would need unsafe code here.
fn available_kib(dir: &Path) -> Option<u64> {
    if !dir.is_dir() {
        return None;
    }
    let output = Command::new("df").arg("-Pk").arg(dir).stderr(Stdio::null()).output().ok()?;
    // POSIX format: a header line, then "filesystem 1024-blocks used available capacity mount".
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()
}

/// The major version in `data/PG_VERSION`, or `None` when there is no cluster yet.
fn read_major(data: &Path) -> Option<String> {
    fs::read_to_string(data.join("PG_VERSION")).ok().map(|text| text.trim().to_owned())
}

fn read_password(root: &Path) -> Result<String, DbError> {
    match fs::read_to_string(root.join("password")) {
        Ok(password) => Ok(password.trim().to_owned()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            Err(DbError::MissingPassword { data_dir: root.to_path_buf() })
        }
        Err(err) => Err(DbError::io("cannot read the PostgreSQL password file", err)),
    }
}

/// Runs `initdb` with a new random password and returns that password.
///
/// `initdb` writes into a staging directory that is renamed into place only when complete,
/// so a start interrupted during `initdb` (which writes `PG_VERSION` early) is simply redone.
fn initialize(
    root: &Path,
    installation: &Installation,
    account: &ServerAccount,
    temporary: bool,
) -> Result<String, DbError> {
    let staging = root.join("data.initdb");
    let data = root.join("data");
    for leftover in [&staging, &data] {
        if leftover.exists() {
            fs::remove_dir_all(leftover)
                .map_err(|err| DbError::io(format!("cannot remove {}", leftover.display()), err))?;
        }
    }

    // 122 random bits from the OS, and hex never needs escaping in a URL.
    let password = uuid::Uuid::new_v4().simple().to_string();
    let password_file = root.join("password");
    // initdb, running as the server account, reads it.
    account.write_file(&password_file, password.as_bytes(), 0o600)?;

    tracing::info!("initializing a new PostgreSQL cluster in {}", data.display());
    let started = Instant::now();
    let mut command = Command::new(installation.initdb());
    command
        .arg("--pgdata")
        .arg(&staging)
        .arg(format!("--username={SUPERUSER}"))
        .arg("--auth=scram-sha-256")
        .arg("--pwfile")
        .arg(&password_file)
        .arg("--encoding=UTF8")
        // The C locale sorts bytewise: fast, identical on every machine,
        // and immune to the index corruption that glibc collation updates cause.
        .arg("--locale=C")
        .current_dir(root)
        .stdin(Stdio::null());
    if temporary {
        command.arg("--no-sync");
    }
    account.apply(&mut command);
    let output =
        command.output().map_err(|err| DbError::io(format!("cannot run {}", installation.initdb().display()), err))?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(DbError::Initdb { status: output.status, output: last_lines(&text, 10) });
    }
    fs::rename(&staging, &data).map_err(|err| DbError::io(format!("cannot rename {}", staging.display()), err))?;
    tracing::debug!(elapsed = ?started.elapsed(), "initdb done");
    Ok(password)
}

/// Removes a `postmaster.pid` that no live server owns, and refuses to start next to one that is live.
fn clear_stale_lock(data: &Path) -> Result<(), DbError> {
    let path = data.join("postmaster.pid");
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        if !path.exists() {
            return Ok(());
        }
        let Some(pid_file) = PidFile::read(data) else {
            // Empty or torn: written by a server that crashed while starting. postgres would refuse it as bogus.
            tracing::warn!("removing an unreadable postmaster.pid");
            return remove_lock(&path);
        };
        match pidfile::holder(pid_file.pid, data) {
            Holder::Stale => {
                tracing::warn!(pid = pid_file.pid, "removing a stale postmaster.pid left by a crash");
                return remove_lock(&path);
            }
            // Let postgres judge for itself; it refuses only when the pid is alive.
            Holder::Unknown => return Ok(()),
            // A server that is shutting down (say, the watchdog of a process that just died) is waited for.
            Holder::Postgres if pid_file.is_stopping() && Instant::now() < deadline => {
                std::thread::sleep(POLL_INTERVAL);
            }
            Holder::Postgres => {
                return Err(DbError::AlreadyRunning { data_dir: data.to_path_buf(), pid: pid_file.pid });
            }
        }
    }
}

fn remove_lock(path: &Path) -> Result<(), DbError> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(DbError::io(format!("cannot remove {}", path.display()), err))
        }
        _ => Ok(()),
    }
}

/// Keeps one previous log, so that the reason for a crash survives the restart after it.
fn rotate(log: &Path, previous: &Path) -> Result<(), DbError> {
    match fs::rename(log, previous) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(DbError::io(format!("cannot rotate {}", log.display()), err))
        }
        _ => Ok(()),
    }
}

/// The port of the last run, if it is free now.
fn previous_port(port_file: &Path) -> Option<u16> {
    let port: u16 = fs::read_to_string(port_file).ok()?.trim().parse().ok()?;
    TcpListener::bind((LISTEN_ADDRESS, port)).ok().map(|_| port)
}

/// A port the kernel considers free now. Another process may take it before postgres binds it,
/// which `Launch::run` detects, and the caller retries.
fn free_port() -> Result<u16, DbError> {
    TcpListener::bind((LISTEN_ADDRESS, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|err| DbError::io("cannot find a free port for postgres", err))
}

/// What the server logged since `offset`: the reason a start failed.
fn log_tail(log: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(log)
        && file.seek(SeekFrom::Start(offset)).is_ok()
    {
        // Best effort: a missing log just makes the error message shorter.
        let _ = file.read_to_string(&mut text);
    }
    last_lines(&text, 10)
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}
