//! The `ferrite` binary as a user runs it: `ferrite up` end to end, `--help`, and bad configuration.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::Context;
use ferrite_testkit::wait_for;
use sqlx::postgres::PgConnectOptions;

fn ferrite() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferrite"))
}

/// Starts `ferrite <args> --data-dir <data_dir>` as a user would: no `DATABASE_URL`, quiet logs, stdout piped for its banner.
fn spawn(args: &[&str], data_dir: &Path) -> std::io::Result<Child> {
    ferrite()
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
}

/// Sends SIGTERM and waits for the exit.
async fn terminate(mut child: Child) -> anyhow::Result<ExitStatus> {
    let pid = child.id().to_string();
    anyhow::ensure!(Command::new("kill").args(["-TERM", &pid]).status()?.success(), "kill -TERM {pid} failed");
    Ok(tokio::task::spawn_blocking(move || child.wait()).await??)
}

#[test]
fn help_lists_every_command() {
    let output = ferrite().arg("--help").output().expect("the binary runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["up", "broker", "ingester", "fleet", "migrate"] {
        assert!(help.contains(command), "--help does not mention {command}:\n{help}");
    }
}

#[test]
fn bad_configuration_fails_before_binding_with_one_clear_line() {
    let cases: [(&[&str], &str); 7] = [
        (&["gateway", "--http-addr", "0.0.0.0:18998"], "would let any browser publish"),
        (&["up", "--mqtt-addr", "not-an-address"], "--mqtt-addr"),
        (&["up", "--drop-rate", "2"], "--drop-rate is a probability"),
        (&["up", "--sessions", "0"], "--sessions must be between 1 and 64"),
        (&["fleet", "--broker-url", "http://x"], "invalid broker url"),
        (&["up", "--mqtt-addr", "127.0.0.1:18999", "--ws-addr", "127.0.0.1:18999"], "two listeners"),
        (&["gateway", "--api-url", "http://registry/api/v1"], "expected http(s)://host[:port]"),
    ];
    for (args, expected) in cases {
        let output = ferrite().args(args).env_remove("DATABASE_URL").output().expect("the binary runs");
        assert_eq!(output.status.code(), Some(2), "{args:?} should exit 2");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with("error:") && stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// Reads the banner `ferrite up` prints and returns the MQTT address.
fn read_banner(stdout: impl std::io::Read) -> anyhow::Result<(String, Vec<String>)> {
    let mut lines = Vec::new();
    let mut mqtt = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(addr) = line.trim().strip_prefix("MQTT").and_then(|rest| rest.trim().strip_prefix("mqtt://")) {
            mqtt = Some(addr.to_owned());
        }
        let done = line.starts_with("Press Ctrl-C");
        lines.push(line);
        if done {
            break;
        }
    }
    Ok((mqtt.with_context(|| format!("no MQTT line in the banner: {lines:?}"))?, lines))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_the_platform_and_stops_cleanly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut child = spawn(
        &[
            "up",
            "--fleet",
            "3",
            "--interval",
            "100ms",
            "--mqtt-addr",
            "127.0.0.1:0",
            "--ws-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ],
        &dir.path().join("state"),
    )?;
    let stdout = child.stdout.take().context("stdout is piped")?;
    let (banner, stdout) = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stdout);
        let banner = read_banner(&mut reader);
        (banner, reader)
    })
    .await?;
    let (mqtt, lines) = banner?;
    assert!(lines.iter().any(|l| l.contains("PostgreSQL")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("sim-0001 .. sim-0003")), "{lines:?}");
    assert!(mqtt.starts_with("127.0.0.1:"));

    // The private cluster keeps its password and port beside the data, for psql and for us.
    let cluster = dir.path().join("state/postgres");
    let password = std::fs::read_to_string(cluster.join("password"))?;
    let port: u16 = std::fs::read_to_string(cluster.join("port"))?.trim().parse()?;
    let options = PgConnectOptions::new().host("127.0.0.1").port(port).username("postgres").password(password.trim());
    let pool = sqlx::PgPool::connect_with(options).await?;
    wait_for("fleet readings in PostgreSQL", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(DISTINCT device_id) FROM readings")
            .fetch_one(&pool)
            .await
            .is_ok_and(|devices| devices == 3)
    })
    .await?;
    pool.close().await;

    // SIGTERM drains: the process exits 0 and reports what it stored.
    let status = terminate(child).await?;
    assert!(status.success(), "ferrite up exited with {status}");
    let rest: Vec<String> = stdout.lines().collect::<Result<_, _>>()?;
    assert!(rest.iter().any(|l| l.starts_with("Ferrite stopped:")), "{rest:?}");

    // Nothing keeps running: the PostgreSQL of that data directory has stopped.
    wait_for("the private PostgreSQL to stop", || std::future::ready(!cluster.join("data/postmaster.pid").exists()))
        .await?;
    Ok(())
}

/// Runs a Mosquitto command-line client to completion (they are the reference third-party clients).
fn mosquitto_client(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program).args(args).output().unwrap_or_else(|error| {
        panic!("cannot run {program} ({error}): install the Mosquitto clients (apt-get install mosquitto-clients)")
    })
}

/// A message the broker discards is counted on `/metrics` by reason and QoS: here a v5 message whose
/// expiry passed while its (persistent) subscriber was away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_counts_the_messages_it_drops() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut child = spawn(
        &[
            "broker",
            "--mqtt-addr",
            "127.0.0.1:0",
            "--ws-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--allow-anonymous",
        ],
        &dir.path().join("broker"),
    )?;
    let stdout = child.stdout.take().context("stdout is piped")?;
    let (mqtt, metrics) = tokio::task::spawn_blocking(move || -> anyhow::Result<(String, String)> {
        let (mut mqtt, mut metrics) = (None, None);
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            let line = line.trim();
            if let Some(addr) = line.strip_prefix("MQTT").and_then(|rest| rest.trim().strip_prefix("mqtt://")) {
                mqtt = Some(addr.to_owned());
            }
            // "Metrics  http://host:port/metrics  (readiness: /readyz)": the URL is the first word.
            if let Some(url) = line.strip_prefix("Metrics").and_then(|rest| rest.split_whitespace().next()) {
                metrics = Some(url.to_owned());
            }
            if let (Some(mqtt), Some(metrics)) = (&mqtt, &metrics) {
                return Ok((mqtt.clone(), metrics.clone()));
            }
        }
        anyhow::bail!("`ferrite broker` ended before printing its MQTT and metrics addresses")
    })
    .await??;
    let (host, port) = mqtt.rsplit_once(':').context("host:port")?;
    let common = ["-h", host, "-p", port, "-V", "5", "-q", "1"];

    // A persistent session subscribes and leaves; a message with a 1 s expiry is queued for it; it comes back later.
    let session = ["-i", "drop-counter", "-c", "-x", "600", "-t", "expiring/#"];
    let subscribed = mosquitto_client("mosquitto_sub", &[&common[..], &session, &["-E"]].concat());
    assert!(subscribed.status.success(), "mosquitto_sub -E: {subscribed:?}");
    let published = mosquitto_client(
        "mosquitto_pub",
        &[&common[..], &["-t", "expiring/now", "-m", "stale", "-D", "publish", "message-expiry-interval", "1"]]
            .concat(),
    );
    assert!(published.status.success(), "mosquitto_pub: {published:?}");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let back = mosquitto_client("mosquitto_sub", &[&common[..], &session, &["-W", "2"]].concat());
    assert!(String::from_utf8_lossy(&back.stdout).is_empty(), "the expired message was delivered: {back:?}");

    let dropped = |text: &str| {
        text.lines().any(|line| {
            line.starts_with("ferrite_broker_messages_dropped_total")
                && line.contains(r#"reason="expired""#)
                && line.contains(r#"qos="1""#)
                && line.ends_with(" 1")
        })
    };
    let scrape = || async {
        ferrite_testkit::http_request("GET", &metrics, None, None)
            .await
            .map(|response| String::from_utf8_lossy(&response.body).into_owned())
            .unwrap_or_default()
    };
    let counted = wait_for("the expired message on /metrics", || async { dropped(&scrape().await) }).await;
    if let Err(error) = counted {
        let text = scrape().await;
        return Err(error.context(format!("/metrics was:\n{text}")));
    }

    let status = terminate(child).await?;
    assert!(status.success(), "ferrite broker exited with {status}");
    Ok(())
}
