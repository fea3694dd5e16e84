//! The chaos test: every reading of a QoS 1 stream is stored exactly once although, during the stream,
//! the ingester is killed with SIGKILL three times (and restarted with the same client id, so it takes its
//! persistent sessions over) and PostgreSQL is restarted once.
//!
//! Everything runs as real processes: a private PostgreSQL (`PgCluster`), `ferrite migrate`, `ferrite broker`,
//! `ferrite ingester`, and one `mosquitto_pub` per device (a third-party client) fed a line per reading.
//! What happened (when each fault landed, how many rows were stored then) is printed, so a failure explains itself;
//! the processes' own logs (`RUST_LOG` from `TEST_LOG`, default `warn`; the ingester's own info lines are always on,
//! since the test reads them) are printed when the test fails.
//! With `CHAOS_KEEP=1` the directory with every log (broker, each ingester, PostgreSQL) is kept and its path printed.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use ferrite_db::PgCluster;
use sqlx::PgPool;

/// Devices in the stream, each its own `mosquitto_pub` connection.
const DEVICES: usize = 20;
/// Readings per device: 20 × 1,000 = 20,000 readings.
const PER_DEVICE: usize = 1_000;
/// One reading per device every this often: the stream lasts about 16 s, long enough for every fault to land in it
/// (and for the ingester to come back from the PostgreSQL restart on its own before it is killed again).
const STEP: Duration = Duration::from_millis(16);
/// The ingester is killed once this many readings per device have been handed to the publishers...
const KILLS_AT: [usize; 3] = [100, 700, 875];
/// ...and PostgreSQL restarted once this many have.
const PG_RESTART_AT: usize = 200;
/// How long the ingester may take to store readings again after PostgreSQL came back: its retries back off to 5 s.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(60);
/// How many readings per device the stream may run past a planned fault before that fault is done (about 1.6 s):
/// enough to keep publishing through a fault on a normal machine, and below the end of the stream after the last one.
const LEAD: usize = 100;
/// How long a killed ingester stays down, so that the broker queues a backlog for its sessions.
const DOWNTIME: Duration = Duration::from_millis(700);
/// How long PostgreSQL stays down, so that the ingester's commits fail and are retried.
const PG_DOWNTIME: Duration = Duration::from_millis(1_000);
/// How long the stored rows may take to reach the expected count after the stream ended. Generous: a loaded
/// CI machine, an ingester retrying with backoff after the database came back. Reaching it means readings were lost.
const SETTLE_DEADLINE: Duration = Duration::from_secs(120);
/// How long a process may take to log what the test waits for (its address, its sessions connected).
const LOG_DEADLINE: Duration = Duration::from_secs(60);
/// How often the stored rows are counted for the timeline.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// Device ids are `chaos-01` ... `chaos-20`; nothing else in the database starts with this.
const PREFIX: &str = "chaos-";
const METRIC: &str = "level";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_ingesters_and_a_restarted_database_lose_and_double_nothing() -> anyhow::Result<()> {
    require("mosquitto_pub", "mosquitto-clients")?;
    let dir = tempfile::tempdir()?;
    let started = Chaos::start(dir.path()).await;
    let result = match started {
        Ok(mut chaos) => {
            let result = chaos.run().await;
            if let Err(error) = &result {
                eprintln!("chaos test failed: {error:#}\n{}", chaos.logs());
            }
            chaos.stop().await;
            result
        }
        Err(error) => Err(error),
    };
    if std::env::var_os("CHAOS_KEEP").is_some() {
        println!("logs kept in {}", dir.keep().display());
    }
    result
}

/// The processes under test and what happened to them.
struct Chaos {
    dir: PathBuf,
    /// `None` only while PostgreSQL is restarting.
    cluster: Option<PgCluster>,
    cluster_dir: PathBuf,
    pool: PgPool,
    broker: Process,
    broker_url: String,
    ingester: Process,
    /// Ingesters started so far (the n-th writes `ingester-n.log`).
    ingesters: usize,
    started: Instant,
    /// One line per event, printed at the end.
    timeline: Vec<String>,
}

impl Chaos {
    async fn start(dir: &Path) -> anyhow::Result<Chaos> {
        let started = Instant::now();
        // As root the cluster runs as the `postgres` user, who must be able to reach its directory (handed to it).
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
        let cluster_dir = dir.join("postgres");
        let cluster = {
            let cluster_dir = cluster_dir.clone();
            tokio::task::spawn_blocking(move || PgCluster::start(&cluster_dir)).await??
        };
        let url = cluster.url();
        let migrate = ferrite()
            .arg("migrate")
            .env("DATABASE_URL", &url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .context("running ferrite migrate")?;
        anyhow::ensure!(
            migrate.status.success(),
            "ferrite migrate failed: {}",
            String::from_utf8_lossy(&migrate.stderr)
        );
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_with(cluster.connect_options())
            .await
            .context("connecting to the private PostgreSQL")?;

        let broker = Process::spawn(
            "broker",
            ferrite()
                .args(["broker", "--mqtt-addr", "127.0.0.1:0", "--ws-addr", "127.0.0.1:0"])
                .args(["--metrics-addr", "127.0.0.1:0", "--data-dir"])
                .arg(dir.join("broker"))
                // Anonymous clients on loopback: the test is about delivery, not authentication.
                .env_remove("DATABASE_URL")
                .env("RUST_LOG", std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into())),
            &dir.join("broker.log"),
        )?;
        let broker_url = wait_for_line(&dir.join("broker.log"), "mqtt://")
            .await
            .context("the broker did not print its MQTT address")?;
        let broker_url = broker_url.split_whitespace().last().context("an MQTT line")?.to_owned();

        let mut chaos = Chaos {
            dir: dir.to_path_buf(),
            cluster: Some(cluster),
            cluster_dir,
            pool,
            broker,
            broker_url,
            ingester: Process::none(),
            ingesters: 0,
            started,
            timeline: Vec::new(),
        };
        chaos.ingester = chaos.spawn_ingester()?;
        chaos.note(format!("PostgreSQL on port {}, broker on {}, ingester 1 started", chaos.port(), chaos.broker_url));
        chaos.wait_until_ingesting().await?;
        Ok(chaos)
    }

    fn port(&self) -> u16 {
        self.cluster.as_ref().map_or(0, PgCluster::port)
    }

    fn spawn_ingester(&mut self) -> anyhow::Result<Process> {
        self.ingesters += 1;
        let url = self.cluster.as_ref().context("PostgreSQL is running")?.url();
        let log = self.dir.join(format!("ingester-{}.log", self.ingesters));
        Process::spawn(
            "ingester",
            ferrite()
                .args(["ingester", "--metrics-addr", "127.0.0.1:0"])
                // The same client id every time (the default, said out loud): each run takes the sessions over.
                .args(["--ingester-id", "ferrite-ingester"])
                .env("DATABASE_URL", url)
                .env("FERRITE_BROKER_URL", &self.broker_url)
                // Its "connected to the broker" lines tell when it holds its sessions again.
                .env("RUST_LOG", ingester_log_filter()),
            &log,
        )
    }

    /// A probe reading published before the stream is stored once the ingester's shared subscription exists at the broker;
    /// from then on the broker queues the group's messages for its persistent sessions, whether they are connected or not.
    async fn wait_until_ingesting(&mut self) -> anyhow::Result<()> {
        let (host, port) = self.broker_url.trim_start_matches("mqtt://").rsplit_once(':').context("host:port")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = Command::new("mosquitto_pub")
                .args(["-h", host, "-p", port, "-q", "1", "-t", "sensors/probe/level", "-m", "1"])
                .status()?;
            anyhow::ensure!(status.success(), "mosquitto_pub of the probe failed: {status}");
            tokio::time::sleep(Duration::from_millis(200)).await;
            if count(&self.pool, "select count(*) from readings where device_id = 'probe'").await? > 0 {
                self.note("the ingester stores readings; the stream starts".into());
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "the ingester stored no probe reading within 60 s");
        }
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let (host, port) = self.broker_url.trim_start_matches("mqtt://").rsplit_once(':').context("host:port")?;
        let base_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64 - 60_000;
        let mut publishers = Vec::new();
        let mut inputs = Vec::new();
        for device in 1..=DEVICES {
            let mut child = Command::new("mosquitto_pub")
                .args(["-h", host, "-p", port, "-q", "1", "-l"])
                .args(["-i", &format!("chaos-pub-{device:02}")])
                .args(["-t", &format!("sensors/{PREFIX}{device:02}/{METRIC}")])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting mosquitto_pub")?;
            inputs.push(child.stdin.take().context("stdin is piped")?);
            publishers.push(child);
        }
        let progress = Arc::new(AtomicUsize::new(0));
        // The feeder runs at most LEAD readings past the next fault until that fault is done, so that on a slow
        // machine the stream slows down instead of ending before the faults (each still lands mid-stream).
        let allowed = Arc::new(AtomicUsize::new(KILLS_AT[0] + LEAD));
        let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sampler = tokio::spawn(sample_rows(self.pool.clone(), samples.clone()));
        let stream_started = Instant::now();
        let feeder = std::thread::spawn({
            let (progress, allowed) = (progress.clone(), allowed.clone());
            move || feed(inputs, base_ms, &progress, &allowed)
        });

        for (step, &at) in KILLS_AT.iter().enumerate() {
            if step == 1 {
                self.wait_progress(&progress, PG_RESTART_AT).await?;
                self.restart_postgres(&progress).await?;
                allowed.store(at + LEAD, Ordering::SeqCst);
            }
            self.wait_progress(&progress, at).await?;
            self.kill_ingester(&progress).await?;
            let next = if step == 0 { PG_RESTART_AT } else { KILLS_AT.get(step + 1).copied().unwrap_or(PER_DEVICE) };
            allowed.store(next + LEAD, Ordering::SeqCst);
        }

        let fed = tokio::task::spawn_blocking(move || feeder.join()).await?;
        let held = fed.map_err(|_| anyhow::anyhow!("the feeder thread panicked"))??;
        let stream_took = stream_started.elapsed();
        self.note(format!(
            "stream of {} readings handed to the publishers in {stream_took:.1?} (held {held:.1?} for faults to catch up)",
            DEVICES * PER_DEVICE
        ));

        for (device, publisher) in publishers.into_iter().enumerate() {
            let output = tokio::task::spawn_blocking(move || publisher.wait_with_output()).await??;
            anyhow::ensure!(
                output.status.success(),
                "mosquitto_pub of device {} failed ({}): {}",
                device + 1,
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        self.note(format!("every publisher got its PUBACKs and exited ({})", self.rows().await));

        let expected = (DEVICES * PER_DEVICE) as i64;
        let deadline = Instant::now() + SETTLE_DEADLINE;
        let stored = loop {
            let stored =
                count(&self.pool, &format!("select count(*) from readings where device_id like '{PREFIX}%'")).await?;
            if stored >= expected || Instant::now() >= deadline {
                break stored;
            }
            self.ingester.check_alive()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        self.note(format!("{stored} rows stored"));
        self.note_metrics().await;
        sampler.abort();
        let samples = runs(&samples.lock().expect("samples lock"));
        self.note(format!("rows stored every {SAMPLE_EVERY:?} from the stream's start: {samples}"));
        self.verify(base_ms).await?;
        self.ingester.check_alive()?;
        anyhow::ensure!(stored == expected, "{stored} of {expected} readings stored");
        Ok(())
    }

    /// Waits until `at` readings per device were handed over, and checks that the stream has not ended yet:
    /// a fault after the stream would not test what this test claims.
    async fn wait_progress(&self, progress: &AtomicUsize, at: usize) -> anyhow::Result<()> {
        while progress.load(Ordering::SeqCst) < at {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let now = progress.load(Ordering::SeqCst);
        anyhow::ensure!(
            now < PER_DEVICE,
            "the stream ended before the fault planned at reading {at} (machine too slow?)"
        );
        Ok(())
    }

    async fn kill_ingester(&mut self, progress: &AtomicUsize) -> anyhow::Result<()> {
        let rows = self.rows().await;
        self.ingester.check_alive()?;
        let pid = self.ingester.pid();
        self.ingester.kill()?;
        self.note(format!(
            "SIGKILL ingester {} (pid {pid}) at reading {} per device; {rows}",
            self.ingesters,
            progress.load(Ordering::SeqCst)
        ));
        tokio::time::sleep(DOWNTIME).await;
        self.ingester = self.spawn_ingester()?;
        let spawned = Instant::now();
        self.note(format!(
            "ingester {} started at reading {} per device",
            self.ingesters,
            progress.load(Ordering::SeqCst)
        ));
        // The next fault must find an ingester that holds its sessions (it is the takeover that is under test).
        let log = self.dir.join(format!("ingester-{}.log", self.ingesters));
        wait_for_sessions(&log, ferrite_ingester::DEFAULT_SESSIONS).await?;
        self.note(format!(
            "ingester {} took its {} sessions over in {:.1?}, at reading {} per device; {}",
            self.ingesters,
            ferrite_ingester::DEFAULT_SESSIONS,
            spawned.elapsed(),
            progress.load(Ordering::SeqCst),
            self.rows().await
        ));
        Ok(())
    }

    async fn restart_postgres(&mut self, progress: &AtomicUsize) -> anyhow::Result<()> {
        let rows = self.rows().await;
        let port = self.port();
        let cluster = self.cluster.take().context("PostgreSQL is running")?;
        tokio::task::spawn_blocking(move || cluster.stop()).await??;
        self.note(format!(
            "PostgreSQL stopped (fast shutdown) at reading {} per device; {rows}",
            progress.load(Ordering::SeqCst)
        ));
        tokio::time::sleep(PG_DOWNTIME).await;
        let cluster_dir = self.cluster_dir.clone();
        let cluster = tokio::task::spawn_blocking(move || PgCluster::start(&cluster_dir)).await??;
        anyhow::ensure!(
            cluster.port() == port,
            "PostgreSQL came back on port {} instead of {port} (the port was taken meanwhile)",
            cluster.port()
        );
        self.cluster = Some(cluster);
        let back = Instant::now();
        let before = self.stored().await?;
        self.note(format!(
            "PostgreSQL started again at reading {} per device; {before} rows stored",
            progress.load(Ordering::SeqCst)
        ));
        // The same ingester, not restarted, must resume on its own: its failed commits are retried.
        loop {
            self.ingester.check_alive()?;
            let now = self.stored().await?;
            if now > before {
                self.note(format!(
                    "ingester {} stores again {:.1?} after PostgreSQL came back, at reading {} per device; {now} rows stored",
                    self.ingesters,
                    back.elapsed(),
                    progress.load(Ordering::SeqCst)
                ));
                return Ok(());
            }
            anyhow::ensure!(
                back.elapsed() < RECOVERY_DEADLINE,
                "ingester {} stored nothing in the {RECOVERY_DEADLINE:?} after PostgreSQL came back",
                self.ingesters
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the broker dropped and what the last ingester received and stored, from their `/metrics`,
    /// so that a reading that is missing can be told apart: dropped by the broker, or lost after it was delivered.
    async fn note_metrics(&mut self) {
        let ingester_log = self.dir.join(format!("ingester-{}.log", self.ingesters));
        let sources = [("broker", self.dir.join("broker.log"), "Metrics"), ("ingester", ingester_log, "metrics on")];
        for (name, log, marker) in sources {
            let url = std::fs::read_to_string(&log).ok().and_then(|text| {
                let line = text.lines().find(|line| line.contains(marker))?.to_owned();
                line.split_whitespace().find(|word| word.starts_with("http://")).map(str::to_owned)
            });
            let Some(url) = url else { continue };
            let counters = match ferrite_testkit::http_request("GET", &url, None, None).await {
                Ok(response) => String::from_utf8_lossy(&response.body)
                    .lines()
                    .filter(|line| {
                        line.starts_with("ferrite_broker_messages_dropped_total")
                            || ["received", "stored", "duplicates", "dead_letters", "write_errors"]
                                .iter()
                                .any(|counter| line.starts_with(&format!("ferrite_ingester_{counter}_total")))
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                Err(error) => format!("unavailable ({error})"),
            };
            let counters = if counters.is_empty() { "no counters yet".to_owned() } else { counters };
            self.note(format!("{name} metrics: {counters}"));
        }
    }

    /// Rows stored so far under the prefix.
    async fn stored(&self) -> anyhow::Result<i64> {
        count(&self.pool, &format!("select count(*) from readings where device_id like '{PREFIX}%'")).await
    }

    /// Every expected `(device, metric, ts)` is stored with its value, nothing else under the prefix, no dead letters.
    async fn verify(&self, base_ms: i64) -> anyhow::Result<()> {
        let rows: Vec<(String, String, i64, f64)> = sqlx::query_as(
            "select device_id, metric, (extract(epoch from ts) * 1000)::bigint, value \
             from readings where device_id like 'chaos-%'",
        )
        .fetch_all(&self.pool)
        .await?;
        let stored: BTreeSet<(String, String, i64, i64)> =
            rows.into_iter().map(|(device, metric, ts, value)| (device, metric, ts, value as i64)).collect();
        let expected: BTreeSet<(String, String, i64, i64)> = (1..=DEVICES)
            .flat_map(|device| {
                (0..PER_DEVICE)
                    .map(move |i| (format!("{PREFIX}{device:02}"), METRIC.to_owned(), base_ms + i as i64, i as i64))
            })
            .collect();
        let missing: Vec<_> = expected.difference(&stored).collect();
        let unexpected: Vec<_> = stored.difference(&expected).collect();
        let dead_letters = count(&self.pool, "select count(*) from dead_letters").await?;
        anyhow::ensure!(
            missing.is_empty() && unexpected.is_empty() && dead_letters == 0,
            "{} readings missing (first: {:?}), {} unexpected (first: {:?}), {dead_letters} dead letters",
            missing.len(),
            missing.iter().take(10).collect::<Vec<_>>(),
            unexpected.len(),
            unexpected.iter().take(10).collect::<Vec<_>>(),
        );
        Ok(())
    }

    /// Rows stored so far, for the timeline (the database may be down).
    async fn rows(&self) -> String {
        match count(&self.pool, &format!("select count(*) from readings where device_id like '{PREFIX}%'")).await {
            Ok(rows) => format!("{rows} rows stored"),
            Err(error) => format!("rows unknown ({error})"),
        }
    }

    fn note(&mut self, event: String) {
        let line = format!("{:>7.2?}  {event}", self.started.elapsed());
        println!("{line}");
        self.timeline.push(line);
    }

    /// The last lines of every process's log, for a failure.
    fn logs(&self) -> String {
        let mut names = vec!["broker.log".to_owned()];
        names.extend((1..=self.ingesters).map(|n| format!("ingester-{n}.log")));
        let mut text = format!("timeline:\n{}\n", self.timeline.join("\n"));
        for name in names {
            let log = std::fs::read_to_string(self.dir.join(&name)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            text.push_str(&format!("--- {name} (last {} of {} lines)\n{}\n", tail.len(), lines.len(), tail.join("\n")));
        }
        if let Some(cluster) = &self.cluster {
            let log = std::fs::read_to_string(cluster.dir().join("postgres.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            text.push_str(&format!("--- postgres.log\n{}\n", lines[lines.len().saturating_sub(20)..].join("\n")));
        }
        text
    }

    async fn stop(mut self) {
        let _ = self.ingester.terminate().await;
        let _ = self.broker.terminate().await;
        self.pool.close().await;
        if let Some(cluster) = self.cluster.take() {
            let _ = tokio::task::spawn_blocking(move || cluster.stop()).await;
        }
    }
}

/// Counts the stored rows every [`SAMPLE_EVERY`] into `samples` (`-` while the database is down), so that a stall shows.
async fn sample_rows(pool: PgPool, samples: Arc<std::sync::Mutex<Vec<String>>>) {
    let sql = format!("select count(*) from readings where device_id like '{PREFIX}%'");
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    loop {
        ticker.tick().await;
        let rows = match tokio::time::timeout(SAMPLE_EVERY, count(&pool, &sql)).await {
            Ok(Ok(rows)) => rows.to_string(),
            _ => "-".to_owned(),
        };
        samples.lock().expect("samples lock").push(rows);
    }
}

/// The samples with repeats folded (`7832×8`), so that a long wait stays one short line.
fn runs(samples: &[String]) -> String {
    let mut folded: Vec<String> = Vec::new();
    let mut index = 0;
    while index < samples.len() {
        let same = samples[index..].iter().take_while(|sample| **sample == samples[index]).count();
        folded.push(if same > 1 { format!("{}×{same}", samples[index]) } else { samples[index].clone() });
        index += same;
    }
    folded.join(" ")
}

/// Hands reading `i` of every device to its publisher every [`STEP`] (on a fixed schedule, so a slow write does not
/// stretch the stream), then closes the publishers' input: each exits once its last PUBACK came back.
/// It never hands over reading `allowed` or later (see `LEAD`): the schedule then starts again from where it waited.
fn feed(
    mut inputs: Vec<ChildStdin>,
    base_ms: i64,
    progress: &AtomicUsize,
    allowed: &AtomicUsize,
) -> anyhow::Result<Duration> {
    let mut start = Instant::now();
    let mut held = Duration::ZERO;
    for i in 0..PER_DEVICE {
        if i >= allowed.load(Ordering::SeqCst) {
            let waiting = Instant::now();
            while i >= allowed.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            held += waiting.elapsed();
            start += waiting.elapsed();
        }
        let line = format!("{{\"value\":{i},\"ts\":{}}}\n", base_ms + i as i64);
        for input in &mut inputs {
            input.write_all(line.as_bytes()).context("writing to mosquitto_pub")?;
        }
        progress.store(i + 1, Ordering::SeqCst);
        let next = start + STEP * (i as u32 + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(held)
}

/// A child process whose output goes to a log file; killed when dropped.
struct Process {
    name: &'static str,
    child: Option<Child>,
}

impl Process {
    fn none() -> Process {
        Process { name: "nothing", child: None }
    }

    fn spawn(name: &'static str, command: &mut Command, log: &Path) -> anyhow::Result<Process> {
        let stdout = File::create(log)?;
        let stderr = stdout.try_clone()?;
        let child = command
            // Plain text, so that the test can read the log lines it waits for.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting the {name}"))?;
        Ok(Process { name, child: Some(child) })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Fails if the process has exited on its own.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        let child = self.child.as_mut().with_context(|| format!("the {} is not running", self.name))?;
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the {} (pid {}) exited on its own: {status}", self.name, child.id());
        }
        Ok(())
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reaps it.
    fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().with_context(|| format!("the {} is not running", self.name))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// SIGTERM and waits for the exit.
    async fn terminate(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status()?;
            tokio::task::spawn_blocking(move || child.wait()).await??;
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `TEST_LOG` (default `warn`) with the ingester's info lines, unless `TEST_LOG` sets the ingester's level itself.
fn ingester_log_filter() -> String {
    let filter = std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into());
    if filter.contains("ferrite_ingester") { filter } else { format!("{filter},ferrite_ingester=info") }
}

fn ferrite() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferrite"))
}

/// Fails with what to install when a tool the test drives is missing.
fn require(program: &str, package: &str) -> anyhow::Result<()> {
    match Command::new(program).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(_) => Ok(()),
        Err(error) => anyhow::bail!("{program} is needed for this test ({error}): install {package}"),
    }
}

/// Polls a log file until a line containing `needle` appears, and returns it.
async fn wait_for_line(log: &Path, needle: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + LOG_DEADLINE;
    loop {
        if let Some(line) = std::fs::read_to_string(log)?.lines().find(|line| line.contains(needle)) {
            return Ok(line.to_owned());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no line with {needle:?} in {} after {LOG_DEADLINE:?}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls an ingester's log until `sessions` distinct client ids have logged "ingester connected to the broker".
async fn wait_for_sessions(log: &Path, sessions: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + LOG_DEADLINE;
    loop {
        let text = std::fs::read_to_string(log)?;
        let connected: BTreeSet<&str> = text
            .lines()
            .filter(|line| line.contains("ingester connected to the broker"))
            .filter_map(|line| line.split("client_id=").nth(1)?.split_whitespace().next())
            .collect();
        if connected.len() >= sessions {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {sessions} sessions connected ({connected:?}) in {} after {LOG_DEADLINE:?}",
            connected.len(),
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(pool).await?)
}

/// Found by the chaos test: an ingester stopped with SIGTERM during a backlog never exited. Each session's owner
/// stops reading events and waits for `Session::close`, while the session's driver waited for room in its full
/// event queue and never looked at the close. Here a session receives more messages than its event queue holds,
/// its owner reads none and then closes it: the close must end (soon after its drain time) instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_closes_while_its_owner_reads_no_events() -> anyhow::Result<()> {
    require("mosquitto_pub", "mosquitto-clients")?;
    let broker = ferrite_testkit::TestMosquitto::start()?;
    let mut config = ferrite_mqtt::SessionConfig::new(broker.url(), "chaos-close");
    // QoS 0, so that the broker sends everything at once instead of waiting for acknowledgements.
    config.subscriptions = vec![("flood/#".to_owned(), ferrite_mqtt::QoS::AtMostOnce)];
    config.manual_acks = true;
    let (session, mut events) = ferrite_mqtt::Session::start(config);
    loop {
        match tokio::time::timeout(LOG_DEADLINE, events.recv()).await? {
            Some(ferrite_mqtt::Event::Subscribed { .. }) => break,
            Some(_) => {}
            None => anyhow::bail!("the session ended before it subscribed"),
        }
    }
    let (host, port) = match broker.url() {
        ferrite_mqtt::BrokerUrl::Tcp { host, port } => (host, port.to_string()),
        other => anyhow::bail!("unexpected broker url {other:?}"),
    };
    let mut publisher = Command::new("mosquitto_pub")
        .args(["-h", &host, "-p", &port, "-q", "0", "-l", "-t", "flood/x"])
        .stdin(Stdio::piped())
        .spawn()
        .context("starting mosquitto_pub")?;
    let lines: String = (0..5_000).map(|i| format!("{i}\n")).collect();
    publisher.stdin.take().context("stdin is piped")?.write_all(lines.as_bytes())?;
    anyhow::ensure!(tokio::task::spawn_blocking(move || publisher.wait()).await??.success(), "mosquitto_pub failed");
    ferrite_testkit::wait_for("the session's event queue to fill", || {
        let full = events.capacity() == 0;
        async move { full }
    })
    .await?;
    let closed = tokio::time::timeout(Duration::from_secs(30), session.close(Duration::from_millis(200))).await;
    anyhow::ensure!(closed.is_ok(), "Session::close hung for 30 s while its owner read no events");
    drop(events);
    Ok(())
}
