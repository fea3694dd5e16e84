//! Everything a browser controls, against the real binary: the `Origin` of the `/dashboard` handshake (issue 12,
//! item 5), `subscribed` only after the broker's grant (item 6), retained publishes to `commands/...`, the cap on
//! browsers, and half-open HTTP connections (slowloris) on the gateway's port.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::{Platform, mosquitto_client};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a frame may take to arrive on a loaded machine.
const FRAME_DEADLINE: Duration = Duration::from_secs(30);

/// The `/dashboard` URL of a platform.
fn dashboard(platform: &Platform) -> String {
    format!("{}/dashboard", platform.http.replacen("http://", "ws://", 1))
}

/// Opens `/dashboard` with `origin` (none: no header, as scripts connect). `Err` carries the HTTP status and
/// body of a refused handshake.
async fn open(platform: &Platform, origin: Option<&str>) -> anyhow::Result<Result<Socket, (u16, String)>> {
    let mut request = dashboard(platform).into_client_request()?;
    if let Some(origin) = origin {
        request.headers_mut().insert("Origin", HeaderValue::from_str(origin)?);
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(Ok(socket)),
        Err(WsError::Http(response)) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
            Ok(Err((response.status().as_u16(), body)))
        }
        Err(error) => Err(error).context("the handshake failed below HTTP"),
    }
}

async fn send(socket: &mut Socket, message: Value) -> anyhow::Result<()> {
    socket.send(Message::text(message.to_string())).await.context("cannot send to the gateway")
}

/// The next JSON text frame (pings are answered as tungstenite reads).
async fn next(socket: &mut Socket) -> anyhow::Result<Value> {
    loop {
        let message = tokio::time::timeout(FRAME_DEADLINE, socket.next())
            .await
            .context("no frame from the gateway")?
            .context("the gateway closed the connection")??;
        match message {
            Message::Text(text) => return Ok(serde_json::from_str(text.as_str())?),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => bail!("unexpected frame {other:?}"),
        }
    }
}

/// A `subscribe` that must be answered with `subscribed` for exactly these filters.
async fn subscribe(socket: &mut Socket, topics: &[&str]) -> anyhow::Result<()> {
    send(socket, json!({"type": "subscribe", "topics": topics})).await?;
    let reply = next(socket).await?;
    ensure!(reply == json!({"type": "subscribed", "topics": topics}), "expected subscribed, got {reply}");
    Ok(())
}

async fn metrics(platform: &Platform) -> anyhow::Result<String> {
    let response = ferrite_testkit::http_request("GET", &format!("{}/metrics", platform.http), None, None).await?;
    Ok(String::from_utf8_lossy(&response.body).into_owned())
}

/// The value of a counter on `/metrics` (0 when it was never incremented).
fn counter(metrics: &str, name: &str) -> f64 {
    metrics.lines().find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

/// A page on another site cannot open `/dashboard`; the dashboard served by the gateway, scripts that send no
/// `Origin`, and the origins given with `--allowed-origins` can. Refusals are 403s that name the flag, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_gateways_own_pages_and_listed_origins_open_the_dashboard() -> anyhow::Result<()> {
    let platform = Platform::up(&["--allowed-origins", "https://dash.example.com,http://localhost:3000"]).await?;
    let own = platform.http.clone();

    for foreign in ["https://evil.example", "null", "http://localhost:3001", "http://127.0.0.1:1", "not an origin"] {
        let (status, body) = match open(&platform, Some(foreign)).await? {
            Ok(_) => bail!("a page from {foreign} opened /dashboard"),
            Err(refused) => refused,
        };
        assert_eq!(status, 403, "{foreign}: {body}");
        assert!(body.contains("--allowed-origins") && body.contains("FERRITE_ALLOWED_ORIGINS"), "{foreign}: {body}");
    }
    let (_, body) = open(&platform, Some("https://evil.example")).await?.err().context("refused")?;
    assert!(body.contains("--allowed-origins https://evil.example"), "{body}");

    for admitted in [None, Some(own.as_str()), Some("https://dash.example.com"), Some("http://localhost:3000")] {
        let mut socket = match open(&platform, admitted).await? {
            Ok(socket) => socket,
            Err((status, body)) => bail!("{admitted:?} was refused: {status} {body}"),
        };
        subscribe(&mut socket, &["sensors/+/temperature"]).await?;
        socket.close(None).await?;
    }
    let refused = counter(&metrics(&platform).await?, "ferrite_gateway_origin_refused_total");
    assert!(refused >= 6.0, "ferrite_gateway_origin_refused_total is {refused}");
    let status = platform.stop().await?;
    assert!(status.success(), "ferrite up exited with {status}");
    Ok(())
}

/// A paho-mqtt client connected before it is needed, which publishes `topic payload` lines from its stdin at
/// once (QoS 1): no process start between `subscribed` and the publish, as with a browser that publishes
/// right after `subscribed`.
const PUBLISHER: &str = r#"
import sys, time
import paho.mqtt.client as mqtt
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
client.connect(sys.argv[1], int(sys.argv[2]))
client.loop_start()
while not client.is_connected():
    time.sleep(0.01)
print("ready", flush=True)
for line in sys.stdin:
    topic, payload = line.rstrip("\n").split(" ", 1)
    client.publish(topic, payload, qos=1)
"#;

/// `subscribed` means the broker has the subscription: a message published right after it arrives, every time,
/// for filters new at the broker (20 of 20), published through the gateway or by another MQTT client.
/// A refused filter is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_published_right_after_subscribed_arrives() -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let platform = Platform::up(&[]).await?;
    let (host, port) = platform.mqtt_host_port();
    let mut publisher = tokio::process::Command::new("python3")
        .args(["-c", PUBLISHER, host, &port.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run python3: install python3 with paho-mqtt 2 (pip install paho-mqtt)")?;
    let mut stdin = publisher.stdin.take().context("stdin is piped")?;
    let mut lines = tokio::io::BufReader::new(publisher.stdout.take().context("stdout is piped")?).lines();
    let ready = tokio::time::timeout(FRAME_DEADLINE, lines.next_line()).await.context("paho never connected")??;
    ensure!(ready.as_deref() == Some("ready"), "the paho publisher did not start (is paho-mqtt 2 installed?)");

    let mut socket = open(&platform, None).await?.map_err(|(status, body)| anyhow::anyhow!("{status} {body}"))?;
    for round in 0..20 {
        let topic = format!("race/{}/{round}", std::process::id());
        subscribe(&mut socket, &[&topic]).await?;
        let payload = format!("update {round}");
        if round % 2 == 0 {
            // As the seed dashboard does: publish through the gateway itself, right after `subscribed`.
            send(&mut socket, json!({"type": "publish", "topic": topic, "payload": payload, "qos": 1})).await?;
        } else {
            stdin.write_all(format!("{topic} {payload}\n").as_bytes()).await?;
            stdin.flush().await?;
        }
        let frame = next(&mut socket).await.with_context(|| format!("round {round}: the update never came"))?;
        assert_eq!(frame, json!({"type": "mqtt-message", "topic": topic, "payload": payload}), "round {round}");
        send(&mut socket, json!({"type": "unsubscribe", "topics": [topic]})).await?;
    }
    drop(stdin);
    // A filter the broker refuses (the gateway's account may not read the broker's `$SYS` topics) gets an
    // `error` naming it, and the others of the request are granted.
    send(&mut socket, json!({"type": "subscribe", "topics": ["$SYS/#", "race/granted"]})).await?;
    let error = next(&mut socket).await?;
    assert_eq!(error["type"], "error", "{error}");
    assert!(error["message"].as_str().is_some_and(|message| message.contains("\"$SYS/#\"")), "{error}");
    assert_eq!(next(&mut socket).await?, json!({"type": "subscribed", "topics": ["race/granted"]}));
    let status = platform.stop().await?;
    assert!(status.success(), "ferrite up exited with {status}");
    Ok(())
}

/// A browser may not leave a retained command behind (the device would run it again on every reconnect), nor a
/// retained value under the platform's other trees; it gets an `error`, nothing is retained, and it may go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_cannot_publish_retained_commands() -> anyhow::Result<()> {
    let platform = Platform::up(&[]).await?;
    let (host, port) = platform.mqtt_host_port();
    let port = port.to_string();
    let mut socket = open(&platform, None).await?.map_err(|(status, body)| anyhow::anyhow!("{status} {body}"))?;
    for topic in ["commands/sim-0001", "devices/sim-0001/status", "sensors/sim-0001/temperature", "alerts/sim-0001"] {
        send(&mut socket, json!({"type": "publish", "topic": topic, "payload": "restart", "qos": 1, "retain": true}))
            .await?;
        let reply = next(&mut socket).await?;
        assert_eq!(reply["type"], "error", "{topic}: {reply}");
        let message = reply["message"].as_str().unwrap_or_default();
        assert!(message.contains("retain") && message.contains(topic), "{topic}: {message}");
    }
    // Nothing was retained: a new subscriber gets nothing within its wait.
    let retained = mosquitto_client(
        "mosquitto_sub",
        &["-h", host, "-p", &port, "-t", "commands/#", "-t", "devices/#", "-t", "alerts/#", "-W", "2", "-v"],
    );
    assert!(String::from_utf8_lossy(&retained.stdout).trim().is_empty(), "{retained:?}");
    // Retain stays available outside the platform's trees, and the connection still works.
    subscribe(&mut socket, &["control/lights/#"]).await?;
    send(&mut socket, json!({"type": "publish", "topic": "control/lights/hall", "payload": "on", "retain": true}))
        .await?;
    let frame = next(&mut socket).await?;
    assert_eq!(frame, json!({"type": "mqtt-message", "topic": "control/lights/hall", "payload": "on"}));
    let refused = counter(&metrics(&platform).await?, "ferrite_gateway_retain_refused_total");
    assert_eq!(refused, 4.0);
    let status = platform.stop().await?;
    assert!(status.success(), "ferrite up exited with {status}");
    Ok(())
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Hundreds of sockets that send half a request and then nothing take at most the gateway's connection cap
/// of file descriptors, are closed after the header-read timeout, and a real dashboard connection still gets
/// through; a browser beyond `--max-browsers` is refused with 503, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_do_not_take_the_gateway() -> anyhow::Result<()> {
    const MAX_BROWSERS: usize = 2;
    const HALF_OPEN: usize = 400;
    let platform = Platform::up(&["--max-browsers", &MAX_BROWSERS.to_string()]).await?;
    let cap = MAX_BROWSERS + ferrite_gateway::HTTP_HEADROOM;
    let addr = platform.http.trim_start_matches("http://").to_owned();
    let before = open_fds(platform.pid())?;

    let mut attackers = Vec::with_capacity(HALF_OPEN);
    for _ in 0..HALF_OPEN {
        let mut socket = TcpStream::connect(&addr).await?;
        // Half a request head: the gateway waits for the rest, which never comes.
        socket.write_all(b"GET /dashboard HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n").await?;
        attackers.push(socket);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = open_fds(platform.pid())?;
    assert!(during <= before + cap + 32, "{during} file descriptors open under attack ({before} before, cap {cap})");

    // A real browser gets through: at once if a place is free, else once the timeout frees places.
    let browser = tokio::time::timeout(ferrite_gateway::HEADER_READ_TIMEOUT * 6, open(&platform, None))
        .await
        .context("the dashboard never got through the half-open connections")??;
    let mut socket = browser.map_err(|(status, body)| anyhow::anyhow!("{status} {body}"))?;
    subscribe(&mut socket, &["sensors/#"]).await?;

    // The gateway closed the first half-open ones when their time ran out.
    let mut first = attackers.swap_remove(0);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(ferrite_gateway::HEADER_READ_TIMEOUT * 3, first.read(&mut buf))
        .await
        .context("a half-open connection was never closed")?;
    assert!(matches!(read, Ok(0) | Err(_)) || String::from_utf8_lossy(&buf).contains("408"), "{read:?}");
    drop(attackers);

    // The browser cap: one more than --max-browsers is refused, counted.
    let second = open(&platform, None).await?.map_err(|(status, body)| anyhow::anyhow!("{status} {body}"))?;
    ferrite_testkit::wait_for("the third browser to be refused", || async {
        matches!(open(&platform, None).await, Ok(Err((503, body))) if body.contains("--max-browsers"))
    })
    .await?;
    let refused = counter(&metrics(&platform).await?, "ferrite_gateway_browsers_refused_total");
    assert!(refused >= 1.0, "ferrite_gateway_browsers_refused_total is {refused}");
    drop(second);
    socket.close(None).await?;
    let status = platform.stop().await?;
    assert!(status.success(), "ferrite up exited with {status}");
    Ok(())
}
