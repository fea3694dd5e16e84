//! A broker restarted on the same data directory, after an orderly stop or a SIGKILL, keeps retained values and the
//! queued QoS 1 messages of persistent sessions.
//!
//! The broker runs in a child process, as a real restart does (nothing of the first broker can linger in memory).
//! The child is this very test binary, run with [`CHILD_DATA_DIR`] set, executing [`restart_child_broker`].

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use ferrite_broker::Broker;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio_util::sync::CancellationToken;

use crate::support::{HANG_GUARD, Paho, mosquitto_pub, mosquitto_sub, test_config};

/// Set for the child process: the data directory its broker uses.
const CHILD_DATA_DIR: &str = "FERRITE_BROKER_TEST_CHILD_DATA_DIR";
/// The child's line announcing its MQTT address.
const LISTENING: &str = "child-broker-listening";
/// The child's line saying its broker stopped cleanly.
const STOPPED: &str = "child-broker-stopped";

/// The broker of the child process; without [`CHILD_DATA_DIR`] it returns at once, as an ordinary test run.
/// It serves until its stdin is closed.
#[tokio::test]
async fn restart_child_broker() {
    let Ok(data_dir) = std::env::var(CHILD_DATA_DIR) else {
        return;
    };
    crate::support::init_test_log();
    let broker = Broker::bind(test_config(Path::new(&data_dir))).await.expect("the child broker binds");
    println!("{LISTENING} {}", broker.mqtt_addr());
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(broker.run(shutdown.clone()));
    let mut line = String::new();
    // End of input (or any line) means: stop.
    let _ = BufReader::new(tokio::io::stdin()).read_line(&mut line).await;
    shutdown.cancel();
    serving.await.expect("the broker task did not panic").expect("the child broker stops cleanly");
    println!("{STOPPED}");
}

struct ChildBroker {
    process: Child,
    output: Lines<BufReader<ChildStdout>>,
    mqtt: SocketAddr,
}

impl ChildBroker {
    async fn start(data_dir: &Path) -> ChildBroker {
        let test_binary = std::env::current_exe().expect("the test binary knows its path");
        let mut process = Command::new(test_binary)
            .args(["--exact", "restart::restart_child_broker", "--nocapture", "--test-threads=1"])
            .env(CHILD_DATA_DIR, data_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the test binary can run itself");
        let stdout = process.stdout.take().expect("stdout is piped");
        let mut output = BufReader::new(stdout).lines();
        let announced = read_until(&mut output, LISTENING).await;
        let mqtt = announced.trim().parse().expect("the child prints its address");
        ChildBroker { process, output, mqtt }
    }

    /// Closes the child's stdin, which stops its broker gracefully, and waits for a clean exit.
    async fn stop(mut self) {
        drop(self.process.stdin.take());
        read_until(&mut self.output, STOPPED).await;
        let status = tokio::time::timeout(HANG_GUARD, self.process.wait())
            .await
            .expect("the child exits")
            .expect("the child can be waited for");
        assert!(status.success(), "the child broker exited with {status}");
    }

    /// SIGKILL: no orderly stop, nothing flushed on the way out.
    async fn kill(mut self) {
        self.process.start_kill().expect("the child can be killed");
        let status = tokio::time::timeout(HANG_GUARD, self.process.wait())
            .await
            .expect("the killed child exits")
            .expect("the child can be waited for");
        assert!(!status.success(), "the child was killed, not stopped: {status}");
    }
}

/// Skips the test harness's own output until `marker` appears, and returns what follows it on its line
/// (the harness prints "test ... " without a line break before the test's own output).
async fn read_until(output: &mut Lines<BufReader<ChildStdout>>, marker: &str) -> String {
    loop {
        let line = tokio::time::timeout(HANG_GUARD, output.next_line())
            .await
            .unwrap_or_else(|_| panic!("the child broker did not print {marker:?}"))
            .expect("the child's output can be read")
            .unwrap_or_else(|| panic!("the child broker ended before printing {marker:?}"));
        if let Some((_, rest)) = line.split_once(marker) {
            return rest.to_owned();
        }
    }
}

#[tokio::test]
async fn retained_values_and_queued_messages_survive_a_restart() {
    survive(Departure::Stopped).await;
}

/// With `--durability sync` (the default), a QoS 1 publish is acknowledged once its writes are on disk, so whatever
/// the publishers were told survives a SIGKILL of the broker right after.
#[tokio::test]
async fn acknowledged_messages_survive_a_sigkill() {
    survive(Departure::Killed).await;
}

enum Departure {
    Stopped,
    Killed,
}

async fn survive(departure: Departure) {
    let data_dir = tempfile::tempdir().expect("a temporary directory can be created");
    let v311 = |addr| Paho::tcp(addr).v3().client_id("restart-v311").persistent();
    let v5 = |addr| Paho::tcp(addr).client_id("restart-v5").persistent().session_expiry(3600);

    let first = ChildBroker::start(data_dir.path()).await;
    mosquitto_pub(first.mqtt, &["-q", "1", "-r", "-t", "restart/retained", "-m", "kept"]).await;
    v311(first.mqtt).sub("restart/queue", 1).run().await;
    v5(first.mqtt).sub("restart/queue", 1).run().await;
    for n in 1..=3 {
        mosquitto_pub(first.mqtt, &["-q", "1", "-t", "restart/queue", "-m", &format!("m{n}")]).await;
    }
    match departure {
        Departure::Stopped => first.stop().await,
        Departure::Killed => first.kill().await,
    }

    let second = ChildBroker::start(data_dir.path()).await;
    let retained = mosquitto_sub(second.mqtt, &["-C", "1", "-W", "20", "-t", "restart/retained"]).await;
    assert_eq!(retained, ["kept"], "the retained value survived");
    for (version, client) in [("3.1.1", v311(second.mqtt)), ("5", v5(second.mqtt))] {
        let events = client.expect(3).run().await;
        assert!(events.session_present(), "MQTT {version}: the session survived");
        assert_eq!(events.payloads(), ["m1", "m2", "m3"], "MQTT {version}: the queued messages survived");
    }
    second.stop().await;
}
