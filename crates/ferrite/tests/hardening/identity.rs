//! Who a client is and what that lets it do, through the real binary: presence for commands (item 8),
//! deleted and rotated devices losing their connection, client-id namespaces and the rights of anonymous clients
//! (over TCP and WebSocket), foreign Origins on the broker's WebSocket (item 5), and the CONNECT authentication
//! budget under a flood of wrong passwords.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use ferrite_testkit::{http_request, wait_for};
use serde_json::json;

use crate::support::{Platform, mosquitto_client};

/// Registers a device over REST; returns its secret.
async fn create_device(platform: &Platform, id: &str) -> anyhow::Result<String> {
    let body = json!({"id": id}).to_string();
    let created =
        http_request("POST", &format!("{}/devices", platform.api), None, Some(("application/json", &body))).await?;
    anyhow::ensure!(
        created.status == 201,
        "creating {id}: {} {}",
        created.status,
        String::from_utf8_lossy(&created.body)
    );
    created.json()["credentials"]["secret"].as_str().map(str::to_owned).context("a secret in the reply")
}

/// `mosquitto_sub` connected as a device (MQTT 5), once its CONNACK arrived.
fn subscribe_as_device(platform: &Platform, id: &str, secret: &str) -> anyhow::Result<Child> {
    let (host, port) = platform.mqtt_host_port();
    // Line-buffered, so that its "received CONNACK" line arrives while it runs (a pipe is block-buffered).
    let mut child = Command::new("stdbuf")
        .args([
            "-oL",
            "mosquitto_sub",
            "-d",
            "-V",
            "5",
            "-h",
            host,
            "-p",
            &port.to_string(),
            "-i",
            id,
            "-u",
            id,
            "-P",
            secret,
        ])
        .args(["-t", &format!("commands/{id}"), "-q", "1", "-c", "-x", "3600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run mosquitto_sub: install the Mosquitto clients (apt-get install mosquitto-clients)")?;
    let stdout = child.stdout.take().context("stdout is piped")?;
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let Some(line) = lines.next() else {
            anyhow::bail!("mosquitto_sub for {id} ended before it was connected");
        };
        if line?.contains("CONNACK (0)") {
            break;
        }
    }
    // Keep draining its output so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    Ok(child)
}

/// Waits until `child` exits (it should, within seconds); kills it if it does not.
async fn wait_for_exit(child: &mut Child, what: &str) -> anyhow::Result<()> {
    let outcome = wait_for(what, || std::future::ready(matches!(child.try_wait(), Ok(Some(_))))).await;
    if outcome.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    outcome
}

/// One QoS 1 publish with `mosquitto_pub`; whether it exited with success.
fn publish(platform: &Platform, extra: &[&str], topic: &str) -> std::process::Output {
    let (host, port) = platform.mqtt_host_port();
    let port = port.to_string();
    let mut args = vec!["-h", host, "-p", &port, "-t", topic, "-m", "1", "-q", "1"];
    args.extend(extra);
    mosquitto_client("mosquitto_pub", &args)
}

fn text(output: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Item 8: the commands API asks the broker who is connected, so a command sent as soon as `ferrite up` is ready
/// reaches a fleet device and is answered, instead of being left `pending` until the ingester's presence catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_right_after_up_reaches_a_connected_fleet_device() -> anyhow::Result<()> {
    let platform = Platform::up(&["--fleet", "2"]).await?;
    let body = json!({"name": "ping", "timeout": "20s"}).to_string();
    let sent = http_request(
        "POST",
        &format!("{}/devices/sim-0001/commands", platform.api),
        None,
        Some(("application/json", &body)),
    )
    .await?;
    let command = sent.json();
    assert_eq!(sent.status, 200, "{command}");
    assert_eq!(command["state"], "ok", "a connected device's command is sent and answered: {command}");
    platform.stop().await?;
    Ok(())
}

/// Deleting a device closes its live connection within seconds, and its old secret no longer connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_device_closes_its_connection() -> anyhow::Result<()> {
    let platform = Platform::up(&[]).await?;
    let secret = create_device(&platform, "doomed-1").await?;
    let mut device = subscribe_as_device(&platform, "doomed-1", &secret)?;

    let deleted = http_request("DELETE", &format!("{}/devices/doomed-1", platform.api), None, None).await?;
    assert_eq!(deleted.status, 204, "{}", String::from_utf8_lossy(&deleted.body));
    // mosquitto_sub reconnects after losing its connection, is refused, and exits.
    wait_for_exit(&mut device, "the deleted device's mosquitto_sub to be disconnected and refused").await?;
    let again = publish(&platform, &["-i", "doomed-1", "-u", "doomed-1", "-P", &secret], "sensors/doomed-1/t");
    assert!(!again.status.success(), "the deleted device's secret still connects: {}", text(&again));
    platform.stop().await?;
    Ok(())
}

/// Rotating a device's secret closes the connections made with the old one; the new one connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_a_secret_closes_the_connection_made_with_the_old_one() -> anyhow::Result<()> {
    let platform = Platform::up(&[]).await?;
    let old = create_device(&platform, "leaky-1").await?;
    let mut device = subscribe_as_device(&platform, "leaky-1", &old)?;

    let rotated = http_request("POST", &format!("{}/devices/leaky-1/credentials", platform.api), None, None).await?;
    assert_eq!(rotated.status, 200, "{}", String::from_utf8_lossy(&rotated.body));
    let new = rotated.json()["secret"].as_str().context("the new secret")?.to_owned();
    wait_for_exit(&mut device, "the old secret's mosquitto_sub to be disconnected and refused").await?;
    let old_again = publish(&platform, &["-i", "leaky-1", "-u", "leaky-1", "-P", &old], "sensors/leaky-1/t");
    assert!(!old_again.status.success(), "the old secret still connects: {}", text(&old_again));
    let new_one = publish(&platform, &["-i", "leaky-1", "-u", "leaky-1", "-P", &new], "sensors/leaky-1/t");
    assert!(new_one.status.success(), "the new secret is refused: {}", text(&new_one));
    platform.stop().await?;
    Ok(())
}

/// Anonymous clients on the loopback broker keep the seed's rights (publish readings, subscribe to anything)
/// but may not take a reserved client id, publish commands, or join a shared subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_cannot_take_platform_ids_publish_commands_or_join_shared_groups() -> anyhow::Result<()> {
    let platform = Platform::up(&[]).await?;

    let reading = publish(&platform, &["-V", "5"], "sensors/anon-probe/temperature");
    assert!(reading.status.success(), "the seed's anonymous reading is refused: {}", text(&reading));
    let mqttv311 = publish(&platform, &[], "sensors/anon-probe/temperature");
    assert!(mqttv311.status.success(), "the seed's anonymous 3.1.1 reading is refused: {}", text(&mqttv311));

    for id in ["ferrite-ingester", "ferrite-ingester-1", "ferrite-gateway-1", "ferrite-commands-1"] {
        let taken = publish(&platform, &["-V", "5", "-i", id], "sensors/anon-probe/temperature");
        assert!(!taken.status.success(), "an anonymous client connected as {id}: {}", text(&taken));
        assert!(text(&taken).to_lowercase().contains("not authori"), "{id}: {}", text(&taken));
    }

    // mosquitto_pub reports a refused v5 publish ("Publish 1 failed: Not authorized.") but exits with 0.
    let command = publish(&platform, &["-V", "5"], "commands/sim-0001");
    assert!(text(&command).contains("Not authorized"), "an anonymous command was accepted: {}", text(&command));
    let answer = publish(&platform, &["-V", "5"], "commands/sim-0001/response");
    assert!(text(&answer).contains("Not authorized"), "an anonymous answer was accepted: {}", text(&answer));

    let (host, port) = platform.mqtt_host_port();
    let port = port.to_string();
    for filter in ["$share/ingest/sensors/#", "$share/rules/sensors/#"] {
        let joined = mosquitto_client(
            "mosquitto_sub",
            &["-V", "5", "-h", host, "-p", &port, "-t", filter, "-C", "1", "-W", "3", "-d"],
        );
        // mosquitto_sub -d prints the SUBACK's reason code: 135 (0x87) is "Not authorized".
        assert!(
            text(&joined).contains("Subscribed (mid: 1): 135"),
            "an anonymous client joined {filter}: {}",
            text(&joined)
        );
    }
    let watched = mosquitto_client(
        "mosquitto_sub",
        &["-V", "5", "-h", host, "-p", &port, "-t", "sensors/#", "-C", "1", "-W", "2", "-d"],
    );
    assert!(text(&watched).contains("Subscribed (mid: 1): 0"), "watching sensors/# is refused: {}", text(&watched));
    platform.stop().await?;
    Ok(())
}

/// Sends a raw WebSocket upgrade request to the broker's `/mqtt`; returns the status line.
async fn upgrade_status(platform: &Platform, origin: Option<&str>) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = platform.mqtt_ws.trim_start_matches("ws://").trim_end_matches("/mqtt").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&authority).await?;
    let origin = origin.map(|origin| format!("Origin: {origin}\r\n")).unwrap_or_default();
    let request = format!(
        "GET /mqtt HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n{origin}\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut reply = vec![0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut reply)).await??;
    let reply = String::from_utf8_lossy(&reply[..read]).into_owned();
    Ok(reply.lines().next().unwrap_or_default().to_owned())
}

/// An MQTT 3.1.1 CONNECT over the broker's WebSocket (as a non-browser client, no Origin); the CONNACK return code.
async fn connect_over_websocket(platform: &Platform, client_id: &str) -> anyhow::Result<u8> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let mut request = platform.mqtt_ws.as_str().into_client_request()?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    let id = client_id.as_bytes();
    let mut connect = vec![0x10, u8::try_from(12 + id.len())?, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    connect.extend_from_slice(&u16::try_from(id.len())?.to_be_bytes());
    connect.extend_from_slice(id);
    socket.send(Message::binary(connect)).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(20), socket.next()).await? {
            Some(Ok(Message::Binary(connack))) => {
                anyhow::ensure!(connack.len() == 4 && connack[0] == 0x20, "not a CONNACK: {connack:?}");
                return Ok(connack[3]);
            }
            Some(Ok(_)) => {}
            other => anyhow::bail!("no CONNACK over the WebSocket: {other:?}"),
        }
    }
}

/// Item 5, the broker's part: a page from another origin cannot open the MQTT WebSocket (403), while clients without
/// an Origin (Node, Paho) and pages from the broker's own address still can, and `--allowed-origins` admits a page.
/// Whatever the Origin, an anonymous WebSocket client cannot take a platform client id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_websocket_refuses_foreign_origins() -> anyhow::Result<()> {
    let platform = Platform::up(&["--allowed-origins", "https://dash.example.com"]).await?;
    let evil = upgrade_status(&platform, Some("https://evil.example")).await?;
    assert!(evil.contains(" 403 "), "a foreign Origin was let in: {evil}");
    let none = upgrade_status(&platform, None).await?;
    assert!(none.contains(" 101 "), "a client without Origin was refused: {none}");
    let own = format!("http://{}", platform.mqtt_ws.trim_start_matches("ws://").trim_end_matches("/mqtt"));
    let same = upgrade_status(&platform, Some(&own)).await?;
    assert!(same.contains(" 101 "), "the broker's own origin was refused: {same}");
    let listed = upgrade_status(&platform, Some("https://dash.example.com")).await?;
    assert!(listed.contains(" 101 "), "an allowed origin was refused: {listed}");

    assert_eq!(connect_over_websocket(&platform, "web-client-1").await?, 0, "MQTT over the WebSocket works");
    assert_eq!(connect_over_websocket(&platform, "ferrite-ingester").await?, 5, "the ingester's id is refused (5)");

    let metrics = http_request("GET", &format!("{}/metrics", platform.http), None, None).await?;
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        metrics.lines().any(|line| line.starts_with("ferrite_broker_ws_refused_total{reason=\"origin\"} ")),
        "the refusal is not counted on /metrics"
    );
    platform.stop().await?;
    Ok(())
}

/// An MQTT 3.1.1 CONNECT with a username and password.
fn connect_packet(client_id: &str, username: &str, password: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60];
    for field in [client_id.as_bytes(), username.as_bytes(), password] {
        body.extend_from_slice(&u16::try_from(field.len()).expect("a short field").to_be_bytes());
        body.extend_from_slice(field);
    }
    let mut packet = vec![0x10, u8::try_from(body.len()).expect("under 128 bytes")];
    packet.extend(body);
    packet
}

/// One attacker connection from `source`: CONNECT with a fresh wrong password, wait for the answer, again.
async fn guess_passwords(
    source: std::net::IpAddr,
    broker: std::net::SocketAddr,
    stop: tokio_util::sync::CancellationToken,
) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut attempts = 0;
    while !stop.is_cancelled() {
        let Ok(socket) = tokio::net::TcpSocket::new_v4() else { return attempts };
        if socket.bind(std::net::SocketAddr::new(source, 0)).is_err() {
            return attempts;
        }
        let Ok(mut stream) = socket.connect(broker).await else { continue };
        let password = uuid::Uuid::new_v4().simple().to_string();
        let packet = connect_packet(&format!("victim-1:{attempts}"), "victim-1", password.as_bytes());
        if stream.write_all(&packet).await.is_err() {
            continue;
        }
        let mut connack = [0u8; 4];
        let _ = tokio::select! {
            read = stream.read_exact(&mut connack) => read.ok(),
            () = stop.cancelled() => None,
        };
        attempts += 1;
    }
    attempts
}

/// The CONNECT authentication budget: 200 connections guessing a device's password as fast as the broker answers,
/// from another address, do not keep a registered device from logging in, and the flood is refused without
/// argon2 checks once its failures run out (counted on /metrics).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_guessing_flood_does_not_lock_out_a_real_device() -> anyhow::Result<()> {
    let platform = Platform::up(&[]).await?;
    let secret = create_device(&platform, "victim-1").await?;
    let broker: std::net::SocketAddr = platform.mqtt.parse()?;
    // Every 127.x address is this machine: the flood comes from another source than the device.
    let attacker: std::net::IpAddr = "127.0.0.2".parse()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let flood: Vec<_> = (0..200).map(|_| tokio::spawn(guess_passwords(attacker, broker, stop.clone()))).collect();
    wait_for("the flood to be refused by its rate limit", || async {
        let metrics = http_request("GET", &format!("{}/metrics", platform.http), None, None).await;
        metrics.is_ok_and(|metrics| {
            String::from_utf8_lossy(&metrics.body)
                .lines()
                .any(|line| line.starts_with("ferrite_registry_mqtt_auth_total{outcome=\"denied_rate_limited\"}"))
        })
    })
    .await?;

    // The device logs in while the flood goes on (each of its publishes is a fresh CONNECT, the first one uncached).
    let (host, port) = platform.mqtt_host_port();
    let (host, port, secret) = (host.to_owned(), port.to_string(), secret.clone());
    let logged_in = tokio::task::spawn_blocking(move || {
        mosquitto_client(
            "mosquitto_pub",
            &[
                "-h",
                &host,
                "-p",
                &port,
                "-i",
                "victim-1",
                "-u",
                "victim-1",
                "-P",
                &secret,
                "-t",
                "sensors/victim-1/t",
                "-m",
                "1",
                "-q",
                "1",
            ],
        )
    })
    .await?;
    stop.cancel();
    let mut attempts = 0;
    for guesser in flood {
        attempts += guesser.await?;
    }
    assert!(logged_in.status.success(), "the device could not log in during the flood: {}", text(&logged_in));
    assert!(attempts >= 200, "the flood made only {attempts} attempts");
    platform.stop().await?;
    Ok(())
}

/// Per-device quotas at the broker: retained topics beyond `--max-retained-per-device` are refused (clearing one frees
/// its place), a v5 session expiry beyond `--max-session-expiry` is clamped; both counted on /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_topics_and_session_expiry_are_bounded_per_device() -> anyhow::Result<()> {
    let platform = Platform::up(&["--max-retained-per-device", "2", "--max-session-expiry", "1h"]).await?;
    let secret = create_device(&platform, "quota-1").await?;
    let login = ["-V", "5", "-i", "quota-1", "-u", "quota-1", "-P", secret.as_str(), "-r"];
    for metric in ["a", "b"] {
        let kept = publish(&platform, &login, &format!("sensors/quota-1/{metric}"));
        assert!(!text(&kept).contains("Not authorized"), "retained {metric}: {}", text(&kept));
    }
    let third = publish(&platform, &login, "sensors/quota-1/c");
    let refused = text(&third).contains("Quota exceeded");
    assert!(refused, "a third retained topic was accepted: {}", text(&third));
    let again = publish(&platform, &login, "sensors/quota-1/a");
    assert!(!text(&again).contains("Not authorized"), "replacing a retained value: {}", text(&again));
    let (host, port) = platform.mqtt_host_port();
    let port = port.to_string();
    let cleared = mosquitto_client(
        "mosquitto_pub",
        &[
            "-h",
            host,
            "-p",
            &port,
            "-t",
            "sensors/quota-1/b",
            "-n",
            "-q",
            "1",
            "-V",
            "5",
            "-i",
            "quota-1",
            "-u",
            "quota-1",
            "-P",
            &secret,
            "-r",
        ],
    );
    assert!(cleared.status.success(), "{}", text(&cleared));
    let now_fits = publish(&platform, &login, "sensors/quota-1/c");
    assert!(!text(&now_fits).contains("Not authorized"), "a cleared topic's place is free again: {}", text(&now_fits));

    let long = mosquitto_client(
        "mosquitto_sub",
        &[
            "-h",
            host,
            "-p",
            &port,
            "-V",
            "5",
            "-i",
            "quota-1:long",
            "-u",
            "quota-1",
            "-P",
            &secret,
            "-c",
            "-x",
            "31536000",
            "-t",
            "commands/quota-1",
            "-W",
            "1",
        ],
    );
    assert!(text(&long).contains("Timed out"), "{}", text(&long));

    let metrics = http_request("GET", &format!("{}/metrics", platform.http), None, None).await?;
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    for quota in ["retained", "session_expiry"] {
        let line = format!("ferrite_broker_quota_refused_total{{quota=\"{quota}\"}} ");
        assert!(metrics.lines().any(|l| l.starts_with(&line)), "{quota} is not counted on /metrics");
    }
    platform.stop().await?;
    Ok(())
}
