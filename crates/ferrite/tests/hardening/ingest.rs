//! Poison messages and the input bounds of the ingestion path (issue 12, items 1 to 3): whatever a device
//! publishes, the message is stored, or stored as a dead letter with its reason, and acknowledged; the readings
//! published after it are stored; the ingester never reconnects in a loop.

use std::time::Duration;

use anyhow::Context;
use ferrite_testkit::wait_for;

use crate::support::{Platform, mosquitto_client};

/// A `ferrite up` with a connection to its database.
struct Probe {
    platform: Platform,
    pool: sqlx::PgPool,
}

/// The MQTT protocol version `mosquitto_pub` speaks.
#[derive(Clone, Copy, Debug)]
enum Version {
    V5,
    V311,
}

impl Version {
    fn arg(self) -> &'static str {
        match self {
            Version::V5 => "mqttv5",
            Version::V311 => "mqttv311",
        }
    }
}

impl Probe {
    async fn up() -> anyhow::Result<Probe> {
        let platform = Platform::up(&[]).await?;
        let pool = platform.pool().await?;
        let probe = Probe { platform, pool };
        // The ingester subscribes shortly after the banner: publish until a reading is stored.
        wait_for("the ingester to store a first reading", || async {
            let _ = probe.publish(Version::V5, "sensors/warmup/t", &["-m", "1"]);
            probe.count("SELECT count(*) FROM readings WHERE device_id = 'warmup'").await.is_ok_and(|n| n > 0)
        })
        .await?;
        Ok(probe)
    }

    /// `mosquitto_pub` at QoS 1 with `payload` arguments (`-m text` or `-f file`), bounded in time.
    fn publish(&self, version: Version, topic: &str, payload: &[&str]) -> std::process::Output {
        let (host, port) = self.platform.mqtt_host_port();
        let port = port.to_string();
        let mut args = vec!["-h", host, "-p", &port, "-V", version.arg(), "-q", "1", "-t", topic];
        args.extend(payload);
        publish_within(&args, Duration::from_secs(30))
    }

    /// Publishes and checks that `mosquitto_pub` succeeded (the broker acknowledged the QoS 1 publish).
    fn publish_ok(&self, topic: &str, payload: &[&str]) -> anyhow::Result<()> {
        let output = self.publish(Version::V5, topic, payload);
        anyhow::ensure!(
            output.status.success(),
            "mosquitto_pub to {topic} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.pool)
            .await
            .with_context(|| sql.to_owned())
    }

    /// `/api/v1/devices/{device}/latest` value of `metric`, if any.
    async fn latest(&self, device: &str, metric: &str) -> anyhow::Result<Option<f64>> {
        let url = format!("{}/devices/{device}/latest", self.platform.api);
        let response = ferrite_testkit::http_request("GET", &url, None, None).await?;
        if response.status == 404 {
            return Ok(None);
        }
        anyhow::ensure!(response.status == 200, "GET {url}: {}", response.status);
        let page = response.json();
        let values = page["values"].as_array().context("values")?;
        Ok(values.iter().find(|v| v["metric"] == metric).and_then(|v| v["value"].as_f64()))
    }

    /// The sum of every series of `name` on `/metrics` (0 when it was never incremented).
    async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let url = format!("{}/metrics", self.platform.http);
        let response = ferrite_testkit::http_request("GET", &url, None, None).await?;
        anyhow::ensure!(response.status == 200, "GET {url}: {}", response.status);
        Ok(String::from_utf8_lossy(&response.body)
            .lines()
            .filter(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// The dead letters on `topic`: `(payload length, reason)`.
    async fn dead_letters(&self, topic: &str) -> anyhow::Result<Vec<(i32, String)>> {
        Ok(sqlx::query_as("SELECT length(payload), reason FROM dead_letters WHERE topic = $1 ORDER BY id")
            .bind(topic)
            .fetch_all(&self.pool)
            .await?)
    }

    /// After a poison message on `device`: a valid reading 99 published now is stored and is the device's latest
    /// value of `t`, and the ingester neither reconnected nor retried a write.
    async fn still_ingests(&self, device: &str) -> anyhow::Result<()> {
        self.publish_ok(&format!("sensors/{device}/t"), &["-m", "99"])?;
        wait_for(&format!("{device}'s latest t to be 99"), || async {
            self.latest(device, "t").await.ok().flatten() == Some(99.0)
        })
        .await?;
        assert_eq!(self.metric("ferrite_ingester_reconnects_total").await?, 0.0, "the ingester reconnected");
        assert_eq!(self.metric("ferrite_ingester_write_errors_total").await?, 0.0, "a write was retried");
        Ok(())
    }

    /// Waits for `n` dead letters on `topic` and returns them.
    async fn wait_dead_letters(&self, topic: &str, n: usize) -> anyhow::Result<Vec<(i32, String)>> {
        wait_for(&format!("{n} dead letters on {topic}"), || async {
            self.dead_letters(topic).await.is_ok_and(|letters| letters.len() >= n)
        })
        .await?;
        let letters = self.dead_letters(topic).await?;
        assert_eq!(letters.len(), n, "{letters:?}");
        Ok(letters)
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.pool.close().await;
        let status = self.platform.stop().await?;
        anyhow::ensure!(status.success(), "ferrite up exited with {status}");
        Ok(())
    }
}

/// `mosquitto_pub args`, killed after `limit` (a client the broker refuses might retry forever): then it failed.
fn publish_within(args: &[&str], limit: Duration) -> std::process::Output {
    let mut child = std::process::Command::new("mosquitto_pub")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            // The shared helper says what to install.
            mosquitto_client("mosquitto_pub", &["--help"]);
            panic!("cannot run mosquitto_pub: {error}")
        });
    let started = std::time::Instant::now();
    while child.try_wait().ok().flatten().is_none() && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().expect("mosquitto_pub's output")
}

fn random_file(dir: &tempfile::TempDir, name: &str, len: usize) -> anyhow::Result<String> {
    // xorshift: incompressible bytes, different per file, without a random-number crate.
    let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ len as u64;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes)?;
    Ok(path.to_str().context("a UTF-8 temporary path")?.to_owned())
}

/// (a) Payloads above rumqttc's old 10 KiB limit and above the ingester's payload bound become dead letters with a
/// sample of the payload, at QoS 1, without a reconnect loop; one above the broker's maximum packet size is refused
/// by the broker (v5 and v3.1.1 publishers alike) and changes nothing downstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_become_dead_letters_or_are_refused_by_the_broker() -> anyhow::Result<()> {
    let probe = Probe::up().await?;
    let files = tempfile::tempdir()?;
    let kib12 = random_file(&files, "12k", 12_000)?;
    for _ in 0..3 {
        probe.publish_ok("sensors/probe-a/blob", &["-f", &kib12])?;
    }
    let letters = probe.wait_dead_letters("sensors/probe-a/blob", 3).await?;
    for (length, reason) in &letters {
        // Random bytes are neither text nor a protobuf reading.
        assert_eq!(*length, 4096, "a sample of the 12,000 bytes is kept: {reason}");
        assert!(reason.contains("12000 bytes; its first 4096 are kept"), "{reason}");
    }
    probe.still_ingests("probe-a").await?;

    // Above the ingester's bound (64 KiB), below the broker's (1 MiB).
    let kib200 = random_file(&files, "200k", 200 * 1024)?;
    probe.publish_ok("sensors/probe-a/t", &["-f", &kib200])?;
    let letters = probe.wait_dead_letters("sensors/probe-a/t", 1).await?;
    assert!(letters[0].1.contains("payload of 204800 bytes is above the limit of 65536 bytes"), "{letters:?}");
    assert_eq!(letters[0].0, 4096);
    probe.still_ingests("probe-a").await?;

    // Above the broker's maximum packet size. An MQTT 5 client learns the limit from the CONNACK (Maximum Packet
    // Size 1048576) and mosquitto_pub then does not send the message at all (and exits 0, silently); a v3.1.1
    // client cannot learn it, sends, and the broker closes its connection.
    let mib2 = random_file(&files, "2m", 2 * 1024 * 1024)?;
    let v5 = probe.publish(Version::V5, "sensors/probe-a/huge", &["-f", &mib2]);
    eprintln!("2 MiB publish, MQTT 5: {} {}", v5.status, String::from_utf8_lossy(&v5.stderr));
    let v311 = probe.publish(Version::V311, "sensors/probe-a/huge", &["-f", &mib2]);
    let stderr = String::from_utf8_lossy(&v311.stderr);
    assert!(!v311.status.success(), "the broker acknowledged a 2 MiB publish from a v3.1.1 client: {stderr}");
    // The broker closes as soon as the fixed header announces the size: mosquitto_pub is still writing ("Broken
    // pipe"), or, if its write went out before, finds the connection gone.
    assert!(stderr.contains("Broken pipe") || stderr.contains("connection was lost"), "{stderr}");
    assert_eq!(probe.count("SELECT count(*) FROM dead_letters WHERE topic = 'sensors/probe-a/huge'").await?, 0);
    probe.still_ingests("probe-a").await?;

    wait_for("/metrics to count the dead letters", || async {
        probe.metric("ferrite_ingester_dead_letters_total{reason=\"payload\"}").await.is_ok_and(|n| n >= 3.0)
            && probe.metric("ferrite_ingester_dead_letters_total{reason=\"too_large\"}").await.is_ok_and(|n| n >= 1.0)
    })
    .await?;
    probe.stop().await
}

/// (b) NUL, which PostgreSQL refuses in text, as a JSON key, in a metric name and in a unit: dead letters without NUL,
/// acknowledged, and the device's later readings stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_become_dead_letters() -> anyhow::Result<()> {
    let probe = Probe::up().await?;
    probe.publish_ok("sensors/probe-b/t", &["-m", r#"{"value":1,"\u0000":0}"#])?;
    probe.publish_ok("sensors/probe-b", &["-m", r#"{"metrics":{"te\u0000mp":1}}"#])?;
    probe.publish_ok("sensors/probe-b/u", &["-m", r#"{"value":1,"unit":"\u0000"}"#])?;
    let files = tempfile::tempdir()?;
    let raw = files.path().join("raw-nul");
    std::fs::write(&raw, b"{\"value\":1,\"unit\":\"a\0b\"}")?;
    probe.publish_ok("sensors/probe-b/raw", &["-f", raw.to_str().context("a UTF-8 path")?])?;

    let json_key = probe.wait_dead_letters("sensors/probe-b/t", 1).await?;
    assert!(json_key[0].1.contains("unknown field"), "{json_key:?}");
    let metric = probe.wait_dead_letters("sensors/probe-b", 1).await?;
    assert!(metric[0].1.contains("invalid metric name"), "{metric:?}");
    let unit = probe.wait_dead_letters("sensors/probe-b/u", 1).await?;
    assert!(unit[0].1.contains("control characters"), "{unit:?}");
    probe.wait_dead_letters("sensors/probe-b/raw", 1).await?;
    let nul_in_text =
        probe.count("SELECT count(*) FROM dead_letters WHERE strpos(reason || topic, chr(92) || '0') > 0");
    assert!(nul_in_text.await? >= 1, "a NUL is written as \\0 in the reason");
    assert_eq!(probe.count("SELECT count(*) FROM readings WHERE device_id = 'probe-b'").await?, 0);
    probe.still_ingests("probe-b").await?;
    wait_for("/metrics to count the dead letters", || async {
        probe.metric("ferrite_ingester_dead_letters_total{reason=\"payload\"}").await.is_ok_and(|n| n >= 4.0)
    })
    .await?;
    probe.stop().await
}

/// (c) A reading stamped 9999-01-01 is a dead letter: it neither enters the readings nor freezes `/latest`, so the
/// normal value published after it is the latest one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_future_readings_do_not_freeze_latest() -> anyhow::Result<()> {
    let probe = Probe::up().await?;
    probe.publish_ok("sensors/probe-c/t", &["-m", r#"{"value":5,"ts":"9999-01-01T00:00:00Z"}"#])?;
    probe.publish_ok("sensors/probe-c/t", &["-m", r#"{"value":6,"ts":"1970-01-02T00:00:00Z"}"#])?;
    let letters = probe.wait_dead_letters("sensors/probe-c/t", 2).await?;
    let reasons: Vec<&str> = letters.iter().map(|(_, reason)| reason.as_str()).collect();
    assert!(reasons.iter().any(|r| r.contains("9999-01-01") && r.contains("ahead")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("1970-01-02") && r.contains("older")), "{reasons:?}");
    probe.still_ingests("probe-c").await?;
    assert_eq!(probe.count("SELECT count(*) FROM readings WHERE device_id = 'probe-c'").await?, 1);
    wait_for("/metrics to count the dead letters", || async {
        probe.metric("ferrite_ingester_dead_letters_total{reason=\"timestamp_window\"}").await.is_ok_and(|n| n >= 2.0)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    probe.stop().await
}
