//! Test fixtures: a broker on port 0 with its own data directory, and third-party clients
//! (Eclipse Paho through `tests/clients/paho_client.py`, mosquitto_pub and mosquitto_sub) driven from Rust.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ferrite_broker::{AllowAll, Authorizer, Broker, Config};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A guard against hangs, not a timing assertion: every external step gets this long.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// A broker serving on 127.0.0.1 with ephemeral ports and a data directory of its own.
pub struct TestBroker {
    pub mqtt: SocketAddr,
    pub ws: SocketAddr,
    /// The MQTT-over-TLS listener, when the test configured one.
    pub tls: Option<SocketAddr>,
    shutdown: CancellationToken,
    serving: JoinHandle<Result<(), ferrite_broker::BrokerError>>,
    data_dir: tempfile::TempDir,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        TestBroker::start_with(Arc::new(AllowAll), |_| {}).await
    }

    pub async fn start_with(authorizer: Arc<dyn Authorizer>, adjust: impl FnOnce(&mut Config)) -> TestBroker {
        init_test_log();
        let data_dir = tempfile::tempdir().expect("a temporary directory can be created");
        let mut config = test_config(data_dir.path());
        config.authorizer = authorizer;
        adjust(&mut config);
        let broker = Broker::bind(config).await.expect("the broker binds to ephemeral ports");
        let mqtt = broker.mqtt_addr();
        let ws = broker.ws_addr().expect("the test config enables WebSocket");
        let tls = broker.tls_addr();
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(broker.run(shutdown.clone()));
        TestBroker { mqtt, ws, tls, shutdown, serving, data_dir }
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Stops the broker and checks that it stopped cleanly.
    pub async fn stop(self) -> tempfile::TempDir {
        self.shutdown.cancel();
        let stopped = tokio::time::timeout(HANG_GUARD, self.serving).await.expect("the broker stops");
        stopped.expect("the broker task did not panic").expect("the broker stops without error");
        self.data_dir
    }
}

/// Tests are quiet unless `TEST_LOG` holds a filter, e.g. `TEST_LOG=ferrite_broker=debug`.
pub fn init_test_log() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        // Several tests may try; the first one wins.
        let _ = tracing_subscriber::fmt().with_env_filter(filter.as_str()).with_test_writer().try_init();
    }
}

/// The configuration every test starts from: loopback, port 0, the given data directory.
pub fn test_config(data_dir: &Path) -> Config {
    Config {
        mqtt_addr: "127.0.0.1:0".parse().expect("a literal socket address parses"),
        ws_addr: Some("127.0.0.1:0".parse().expect("a literal socket address parses")),
        data_dir: data_dir.to_path_buf(),
        ..Config::default()
    }
}

pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("clients")
}

/// Fails the test with an install hint when a required client program is missing.
pub fn missing(program: &str, hint: &str) -> ! {
    panic!("{program} not installed: {hint}")
}

/// One run of the Paho client script, configured like a command line.
#[derive(Clone)]
pub struct Paho {
    args: Vec<String>,
}

impl Paho {
    /// MQTT 5 over TCP.
    pub fn tcp(addr: SocketAddr) -> Paho {
        Paho { args: vec!["--host".into(), addr.ip().to_string(), "--port".into(), addr.port().to_string()] }
    }

    /// MQTT 5 over WebSocket on `/mqtt`.
    pub fn ws(addr: SocketAddr) -> Paho {
        Paho::tcp(addr).arg("--transport").arg("websockets").arg("--ws-path").arg("/mqtt")
    }

    fn arg(mut self, arg: impl Into<String>) -> Paho {
        self.args.push(arg.into());
        self
    }

    pub fn v3(self) -> Paho {
        self.arg("--version").arg("3")
    }

    pub fn client_id(self, id: &str) -> Paho {
        self.arg("--client-id").arg(id)
    }

    /// Keep the session (clean session 0 in v3.1.1, clean start 0 in v5).
    pub fn persistent(self) -> Paho {
        self.arg("--clean").arg("no")
    }

    pub fn session_expiry(self, seconds: u32) -> Paho {
        self.arg("--session-expiry").arg(seconds.to_string())
    }

    pub fn credentials(self, username: &str, password: &str) -> Paho {
        self.arg("--username").arg(username).arg("--password").arg(password)
    }

    pub fn will(self, topic: &str, qos: u8, retain: bool, payload: &str) -> Paho {
        self.arg("--will").arg(format!("{topic}:{qos}:{}:{payload}", u8::from(retain)))
    }

    pub fn sub(self, filter: &str, qos: u8) -> Paho {
        self.arg("--sub").arg(format!("{filter}:{qos}"))
    }

    pub fn publish(self, topic: &str, qos: u8, retain: bool, payload: &str) -> Paho {
        self.arg("--pub").arg(format!("{topic}:{qos}:{}:{payload}", u8::from(retain)))
    }

    pub fn user_property(self, key: &str, value: &str) -> Paho {
        self.arg("--user-prop").arg(format!("{key}={value}"))
    }

    pub fn message_expiry(self, seconds: u32) -> Paho {
        self.arg("--message-expiry").arg(seconds.to_string())
    }

    pub fn expect(self, messages: usize) -> Paho {
        self.arg("--expect").arg(messages.to_string())
    }

    /// After receiving what it expects, stay connected until killed.
    pub fn hold(self) -> Paho {
        self.arg("--hold")
    }

    /// After receiving what it expects, close the socket without DISCONNECT.
    pub fn drop_connection(self) -> Paho {
        self.arg("--drop")
    }

    /// Runs the script to its end and returns what it reported.
    pub async fn run(self) -> Events {
        let mut process = self.spawn();
        let mut events = Vec::new();
        while let Some(event) = process.next_event().await {
            events.push(event);
        }
        let status = tokio::time::timeout(HANG_GUARD, process.child.wait())
            .await
            .expect("the paho client exits")
            .expect("the paho client can be waited for");
        assert!(status.success(), "paho client failed ({status}); it reported {events:#?}");
        Events(events)
    }

    /// Starts the script and lets the test read its events as they come.
    pub fn spawn(self) -> PahoProcess {
        let mut command = Command::new("python3");
        command
            .arg(clients_dir().join("paho_client.py"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing("python3", "install Python 3, then pip install paho-mqtt")
            }
            Err(e) => panic!("cannot start the paho client: {e}"),
        };
        let stdout = child.stdout.take().expect("stdout is piped");
        PahoProcess { child, lines: BufReader::new(stdout).lines() }
    }
}

/// A running Paho client.
pub struct PahoProcess {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl PahoProcess {
    /// The next reported event, or `None` once the script has ended.
    pub async fn next_event(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(HANG_GUARD, self.lines.next_line())
            .await
            .expect("the paho client reports within the hang guard")
            .expect("the paho client's output can be read");
        let Some(line) = line else {
            let status = tokio::time::timeout(HANG_GUARD, self.child.wait())
                .await
                .expect("the paho client exits after closing its output")
                .expect("the paho client can be waited for");
            // The script exits with 2 when it cannot import paho.
            if status.code() == Some(2) {
                missing("paho-mqtt", "pip install paho-mqtt");
            }
            return None;
        };
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("paho client printed {line:?}: {e}")))
    }

    /// Reads events until one named `name` arrives, and returns it.
    pub async fn wait_for(&mut self, name: &str) -> Value {
        while let Some(event) = self.next_event().await {
            if event["event"] == name {
                return event;
            }
            assert_ne!(event["event"], "timeout", "paho client gave up waiting: {event}");
        }
        panic!("paho client ended before reporting {name:?}")
    }

    /// Kills the process, so its connection ends without DISCONNECT.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("the paho client can be killed");
    }
}

/// Everything a finished Paho run reported.
#[derive(Debug)]
pub struct Events(pub Vec<Value>);

impl Events {
    pub fn first(&self, name: &str) -> &Value {
        self.0
            .iter()
            .find(|event| event["event"] == name)
            .unwrap_or_else(|| panic!("no {name:?} event in {:#?}", self.0))
    }

    pub fn all(&self, name: &str) -> Vec<&Value> {
        self.0.iter().filter(|event| event["event"] == name).collect()
    }

    /// The CONNACK reason code (0 is accepted).
    pub fn connack_reason(&self) -> u64 {
        self.first("connack")["reason"].as_u64().expect("the reason is a number")
    }

    pub fn session_present(&self) -> bool {
        self.first("connack")["session_present"].as_bool().expect("session_present is a boolean")
    }

    /// Payloads of received messages, in arrival order.
    pub fn payloads(&self) -> Vec<String> {
        self.all("message").iter().map(|m| m["payload"].as_str().unwrap_or_default().to_owned()).collect()
    }
}

/// Runs mosquitto_pub with the given arguments and waits for it to succeed.
pub async fn mosquitto_pub(addr: SocketAddr, args: &[&str]) {
    let output = mosquitto("mosquitto_pub", addr, args).await;
    assert!(output.status.success(), "mosquitto_pub {args:?} failed: {output:?}");
}

/// Runs mosquitto_sub with the given arguments and returns its output lines.
pub async fn mosquitto_sub(addr: SocketAddr, args: &[&str]) -> Vec<String> {
    let output = mosquitto("mosquitto_sub", addr, args).await;
    assert!(output.status.success(), "mosquitto_sub {args:?} failed: {output:?}");
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect()
}

async fn mosquitto(program: &str, addr: SocketAddr, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(program);
    command
        .arg("-h")
        .arg(addr.ip().to_string())
        .arg("-p")
        .arg(addr.port().to_string())
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(HANG_GUARD, command.output()).await {
        Ok(output) => output,
        Err(_) => panic!("{program} {args:?} did not finish within {HANG_GUARD:?}"),
    };
    match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing(program, "apt-get install mosquitto-clients"),
        Err(e) => panic!("cannot run {program}: {e}"),
    }
}
