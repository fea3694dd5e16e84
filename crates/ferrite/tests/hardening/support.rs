//! `ferrite up` on free ports as a child process, and what a test needs to reach it.
//! Shared by every module of this test binary; not each uses every helper.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use sqlx::postgres::PgConnectOptions;

/// A running `ferrite up`, stopped with SIGTERM by [`Platform::stop`] (or killed when dropped).
pub struct Platform {
    child: Option<Child>,
    /// The data directory (`--data-dir`), inside a temporary directory removed on drop.
    pub data_dir: PathBuf,
    /// `host:port` of MQTT over TCP.
    pub mqtt: String,
    /// `ws://host:port/mqtt`.
    pub mqtt_ws: String,
    /// `http://host:port` of the gateway (dashboard, `/dashboard` WebSocket, `/metrics`, `/healthz`).
    pub http: String,
    /// `http://host:port/api/v1` of the registry's REST API.
    pub api: String,
    /// `http://host:port` of the registry's gRPC API.
    pub grpc: String,
    /// Every banner line, for error messages.
    pub banner: Vec<String>,
    /// What the process printed to stdout after its banner, read by a thread so it never meets a closed pipe.
    pub output: Arc<Mutex<Vec<String>>>,
    _dir: Option<tempfile::TempDir>,
}

impl Platform {
    /// Starts `ferrite up` with every listener on 127.0.0.1 port 0 and `extra` arguments, and waits for its banner.
    pub async fn up(extra: &[&str]) -> anyhow::Result<Platform> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().join("state");
        Platform::up_in(Some(dir), data_dir, extra).await
    }

    /// Like [`Platform::up`] with `--data-dir data_dir`; `dir`, if any, is removed when the platform is dropped.
    pub async fn up_in(dir: Option<tempfile::TempDir>, data_dir: PathBuf, extra: &[&str]) -> anyhow::Result<Platform> {
        let mut child = spawn(&up_args(extra), &data_dir)?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let rest_of_output = output.clone();
        let banner = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let banner = read_banner(&mut reader)?;
            std::thread::spawn(move || {
                for line in reader.lines().map_while(Result::ok) {
                    rest_of_output.lock().expect("output lock").push(line);
                }
            });
            anyhow::Ok(banner)
        })
        .await??;
        let field = |name: &str| -> anyhow::Result<String> {
            banner
                .fields
                .get(name)
                .cloned()
                .with_context(|| format!("no {name} line in the banner: {:?}", banner.lines))
        };
        let rest = field("Registry REST")?;
        let platform = Platform {
            mqtt: field("MQTT")?.trim_start_matches("mqtt://").to_owned(),
            mqtt_ws: field("MQTT/WebSocket")?,
            http: field("Metrics")?.trim_end_matches("/metrics").to_owned(),
            api: rest.trim_end_matches("/devices").to_owned(),
            grpc: field("Registry gRPC")?,
            banner: banner.lines,
            output,
            data_dir,
            child: Some(child),
            _dir: dir,
        };
        Ok(platform)
    }

    /// The MQTT host and port, split for clients that take them apart (`mosquitto_pub -h -p`, paho).
    pub fn mqtt_host_port(&self) -> (&str, u16) {
        let (host, port) = self.mqtt.rsplit_once(':').expect("host:port");
        (host, port.parse().expect("a port"))
    }

    /// A connection pool to the platform's private PostgreSQL.
    pub async fn pool(&self) -> anyhow::Result<sqlx::PgPool> {
        let cluster = self.data_dir.join("postgres");
        let password = std::fs::read_to_string(cluster.join("password")).context("the cluster's password file")?;
        let port: u16 =
            std::fs::read_to_string(cluster.join("port")).context("the cluster's port file")?.trim().parse()?;
        let options =
            PgConnectOptions::new().host("127.0.0.1").port(port).username("postgres").password(password.trim());
        Ok(sqlx::PgPool::connect_with(options).await?)
    }

    /// The child's process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit.
    pub async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        let child = self.child.take().context("already stopped")?;
        terminate(child).await
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `up` with every listener on 127.0.0.1 port 0, then `extra`.
pub fn up_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args: Vec<&str> = vec!["up"];
    for flag in ["--mqtt-addr", "--ws-addr", "--http-addr", "--rest-addr", "--grpc-addr"] {
        args.extend([flag, "127.0.0.1:0"]);
    }
    args.extend(extra);
    args
}

/// The `ferrite` binary under test.
pub fn ferrite() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferrite"))
}

/// Starts `ferrite <args> --data-dir <data_dir>` as a user would: no `DATABASE_URL`, quiet logs, stdout piped for its banner.
pub fn spawn(args: &[&str], data_dir: &Path) -> std::io::Result<Child> {
    ferrite()
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
}

/// Sends SIGTERM and waits for the exit.
pub async fn terminate(mut child: Child) -> anyhow::Result<ExitStatus> {
    let pid = child.id().to_string();
    anyhow::ensure!(Command::new("kill").args(["-TERM", &pid]).status()?.success(), "kill -TERM {pid} failed");
    Ok(tokio::task::spawn_blocking(move || child.wait()).await??)
}

/// Runs a Mosquitto command-line client to completion (the reference third-party clients).
pub fn mosquitto_client(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program).args(args).output().unwrap_or_else(|error| {
        panic!("cannot run {program} ({error}): install the Mosquitto clients (apt-get install mosquitto-clients)")
    })
}

struct Banner {
    lines: Vec<String>,
    /// "MQTT" -> "mqtt://127.0.0.1:1234", "Registry REST" -> "http://...", first word(s) before the address.
    fields: HashMap<String, String>,
}

/// Reads `ferrite up`'s banner up to "Press Ctrl-C"; a field is a line's label and its first address.
fn read_banner(stdout: &mut impl BufRead) -> anyhow::Result<Banner> {
    let mut lines = Vec::new();
    let mut fields = HashMap::new();
    for line in stdout.lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(at) = words.iter().position(|w| w.contains("://")) {
            fields.entry(words[..at].join(" ")).or_insert_with(|| words[at].to_owned());
        }
        let done = line.starts_with("Press Ctrl-C");
        lines.push(line);
        if done {
            return Ok(Banner { lines, fields });
        }
    }
    anyhow::bail!("`ferrite up` ended before its banner was complete: {lines:?}")
}
