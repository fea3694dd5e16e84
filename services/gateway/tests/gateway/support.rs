//! Fixtures: the embedded broker and a gateway on port 0, browsers over real WebSockets, real MQTT clients, node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use ferrite_gateway::{Config, Gateway, GatewayState};
use ferrite_mqtt::{BrokerUrl, Event, QoS, Session, SessionConfig};
use ferrite_testkit::{LOOPBACK, WAIT_DEADLINE};
use ferrite_testkit_broker::{Platform, PlatformBroker};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A unique number per call, for client ids and probe topics.
pub fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A broker and a gateway, both in this process.
pub struct Harness {
    pub platform: Platform,
    pub addr: SocketAddr,
    pub state: GatewayState,
}

impl Harness {
    pub async fn start() -> anyhow::Result<Harness> {
        Self::start_with(|_| {}).await
    }

    /// Like [`Harness::start`], letting the test adjust the gateway's configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> anyhow::Result<Harness> {
        let mut platform = Platform::builder().with_broker().start().await?;
        let mut config = Config::new(platform.broker_url());
        config.http_addr = LOOPBACK;
        adjust(&mut config);
        let gateway = Gateway::bind(config).await.context("cannot bind the gateway")?;
        let (addr, state) = (gateway.local_addr(), gateway.state());
        platform.spawn("the gateway", gateway.run(platform.shutdown().clone()));
        Ok(Harness { platform, addr, state })
    }

    /// The broker the gateway is connected to.
    pub fn broker(&self) -> &PlatformBroker {
        self.platform.broker()
    }

    pub fn dashboard_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// A browser connected to `/dashboard`.
    pub async fn browser(&self) -> anyhow::Result<Browser> {
        Browser::connect(&format!("ws://{}/dashboard", self.addr)).await
    }

    /// A real MQTT client on the broker, connected.
    pub async fn mqtt(&self) -> anyhow::Result<Mqtt> {
        Mqtt::connect(self.platform.broker_url()).await
    }

    /// Waits until the filters `browser` subscribed to so far are live at the broker, by a probe that gets
    /// through. `subscribed` comes after the broker's SUBACK, so this is a second check, kept for tests that
    /// must not depend on that (the hardening test of the binary checks `subscribed` alone).
    pub async fn wait_live(&self, browser: &mut Browser, mqtt: &Mqtt) -> anyhow::Result<()> {
        let probe = format!("probe/{}", unique());
        // Frames may be on their way (another browser's probes, for one subscribed to `#`): skip to the reply.
        browser.send(json!({"type": "subscribe", "topics": [probe]})).await?;
        browser.next_where(|frame| frame["type"] == "subscribed").await?;
        let deadline = tokio::time::Instant::now() + WAIT_DEADLINE;
        loop {
            mqtt.publish(&probe, "probe", false).await?;
            let seen = tokio::time::timeout(Duration::from_millis(200), async {
                loop {
                    let frame = browser.next().await?;
                    if frame["topic"] == probe.as_str() {
                        return anyhow::Ok(());
                    }
                }
            })
            .await;
            match seen {
                Ok(result) => break result?,
                Err(_) if tokio::time::Instant::now() < deadline => continue,
                Err(_) => bail!("the gateway's subscription to {probe} never went live"),
            }
        }
        browser.unsubscribe(&[&probe]).await?;
        // Probes published while the last one travelled may still come; let them go by.
        browser.skip_while_topic(&probe).await
    }

    /// Shuts the gateway down and checks that it stopped cleanly, then stops the broker.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.platform.stop().await
    }
}

/// A browser: a tokio-tungstenite client on `/dashboard`.
pub struct Browser {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// A frame read ahead by [`Browser::skip_while_topic`].
    peeked: Option<Value>,
}

impl Browser {
    pub async fn connect(url: &str) -> anyhow::Result<Browser> {
        let (ws, _) =
            tokio_tungstenite::connect_async(url).await.with_context(|| format!("cannot connect to {url}"))?;
        Ok(Browser { ws, peeked: None })
    }

    pub async fn send(&mut self, message: Value) -> anyhow::Result<()> {
        self.send_text(&message.to_string()).await
    }

    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws.send(Message::text(text)).await.context("cannot send to the gateway")
    }

    /// The next JSON text frame; pings are answered by tungstenite as it reads.
    pub async fn next(&mut self) -> anyhow::Result<Value> {
        if let Some(frame) = self.peeked.take() {
            return Ok(frame);
        }
        let deadline = tokio::time::Instant::now() + WAIT_DEADLINE;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .context("no frame from the gateway")?
                .context("the gateway closed the connection")?
                .context("the connection failed")?;
            match message {
                Message::Text(text) => return serde_json::from_str(text.as_str()).context("a frame is not JSON"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => bail!("unexpected frame {other:?}"),
            }
        }
    }

    /// The next frame for which `wanted` holds, skipping others.
    pub async fn next_where(&mut self, wanted: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        loop {
            let frame = self.next().await?;
            if wanted(&frame) {
                return Ok(frame);
            }
        }
    }

    /// Skips frames on `topic` until another one comes, which is kept for the next read.
    async fn skip_while_topic(&mut self, topic: &str) -> anyhow::Result<()> {
        loop {
            match tokio::time::timeout(Duration::from_millis(300), self.next()).await {
                Ok(frame) => {
                    let frame = frame?;
                    if frame["topic"] != topic {
                        self.peeked = Some(frame);
                        return Ok(());
                    }
                }
                Err(_) => return Ok(()),
            }
        }
    }

    /// Subscribes and waits for `subscribed`, which must be the next frame.
    pub async fn subscribe(&mut self, topics: &[&str]) -> anyhow::Result<()> {
        self.send(json!({"type": "subscribe", "topics": topics})).await?;
        let reply = self.next().await?;
        ensure!(reply == json!({"type": "subscribed", "topics": topics}), "expected subscribed, got {reply}");
        Ok(())
    }

    pub async fn unsubscribe(&mut self, topics: &[&str]) -> anyhow::Result<()> {
        self.send(json!({"type": "unsubscribe", "topics": topics})).await
    }

    /// The close frame the gateway sends, skipping anything before it.
    pub async fn close_code(&mut self) -> anyhow::Result<u16> {
        loop {
            let message = tokio::time::timeout(WAIT_DEADLINE, self.ws.next())
                .await
                .context("no close frame from the gateway")?
                .context("the connection ended without a close frame")?
                .context("the connection failed")?;
            if let Message::Close(frame) = message {
                return Ok(frame.map(|frame| u16::from(frame.code)).unwrap_or(1005));
            }
        }
    }
}

/// A message as a real MQTT client received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
}

/// A real MQTT client (Ferrite's own session over rumqttc), to publish and to watch.
pub struct Mqtt {
    session: Session,
    events: mpsc::Receiver<Event>,
}

impl Mqtt {
    pub async fn connect(broker: BrokerUrl) -> anyhow::Result<Mqtt> {
        let (session, mut events) = Session::start(SessionConfig::new(broker, format!("gateway-test-{}", unique())));
        tokio::time::timeout(WAIT_DEADLINE, async {
            loop {
                match events.recv().await {
                    Some(Event::Connected { .. }) => return Ok(()),
                    Some(_) => {}
                    None => bail!("the session ended"),
                }
            }
        })
        .await
        .context("the test client did not connect")??;
        Ok(Mqtt { session, events })
    }

    /// Publishes at QoS 1 (kept and resent until acknowledged).
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>, retain: bool) -> anyhow::Result<()> {
        self.session.publish(topic, QoS::AtLeastOnce, retain, payload, None).await.context("cannot publish")
    }

    /// Waits until every publish so far is acknowledged, then disconnects.
    pub async fn close(self) -> anyhow::Result<()> {
        let left = self.session.close(WAIT_DEADLINE).await;
        ensure!(left == 0, "{left} publishes were not acknowledged");
        Ok(())
    }

    /// Subscribes and waits for the broker's answer.
    pub async fn subscribe(&mut self, filter: &str) -> anyhow::Result<()> {
        self.session.subscribe(filter, QoS::AtLeastOnce)?;
        tokio::time::timeout(WAIT_DEADLINE, async {
            loop {
                match self.events.recv().await {
                    Some(Event::Subscribed { refused: 0 }) => return Ok(()),
                    Some(Event::Subscribed { refused }) => bail!("the broker refused {refused} filters"),
                    Some(_) => {}
                    None => bail!("the session ended"),
                }
            }
        })
        .await
        .with_context(|| format!("no answer to subscribing to {filter}"))?
    }

    /// The next message on our subscriptions.
    pub async fn next_message(&mut self) -> anyhow::Result<Received> {
        tokio::time::timeout(WAIT_DEADLINE, async {
            loop {
                match self.events.recv().await {
                    Some(Event::Message(message)) => {
                        return Ok(Received {
                            topic: message.topic().into_owned(),
                            payload: message.payload().clone(),
                            qos: message.publish.qos,
                        });
                    }
                    Some(_) => {}
                    None => bail!("the session ended"),
                }
            }
        })
        .await
        .context("no message arrived")?
    }
}

/// The folder of the node scripts, with its own package.json.
pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Fails with what to install when node or the scripts' packages are missing.
pub fn require_node(packages: &[&str]) -> anyhow::Result<()> {
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|output| output.status.success()) {
        bail!("node not found: apt install nodejs npm, then npm ci --prefix services/gateway/tests/js");
    }
    for package in packages {
        let path = js_dir().join("node_modules").join(package).join("package.json");
        if !path.exists() {
            bail!(
                "{package} is not installed for the gateway's node tests ({} missing): run npm ci --prefix services/gateway/tests/js",
                path.display()
            );
        }
    }
    Ok(())
}

/// A node script that reports JSON lines on stdout and takes lines on stdin.
pub struct NodeScript {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    stdin: ChildStdin,
    name: String,
}

impl NodeScript {
    pub fn spawn(script: &str, args: &[&str]) -> anyhow::Result<NodeScript> {
        Self::spawn_with_env(script, args, &[])
    }

    /// Like [`NodeScript::spawn`], with environment variables for the script.
    pub fn spawn_with_env(script: &str, args: &[&str], env: &[(&str, &Path)]) -> anyhow::Result<NodeScript> {
        let mut child = tokio::process::Command::new("node")
            .arg(js_dir().join(script))
            .args(args)
            .envs(env.iter().map(|(key, value)| (*key, *value)))
            .current_dir(js_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run node {script}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let stdin = child.stdin.take().context("no stdin")?;
        Ok(NodeScript { child, lines: BufReader::new(stdout).lines(), stdin, name: script.to_owned() })
    }

    /// The next JSON line the script printed (other lines are shown and skipped).
    pub async fn next_event(&mut self, within: Duration) -> anyhow::Result<Value> {
        loop {
            let line = tokio::time::timeout(within, self.lines.next_line())
                .await
                .with_context(|| format!("{} said nothing for {within:?}", self.name))?
                .context("cannot read the script's output")?;
            let Some(line) = line else {
                let status = self.child.wait().await?;
                bail!("{} ended ({status}) before reporting what the test waits for", self.name);
            };
            match serde_json::from_str::<Value>(&line) {
                Ok(event) if event.get("event").is_some() => {
                    println!("{}: {line}", self.name);
                    if event["event"] == "fail" {
                        bail!("{} failed: {}", self.name, event["message"]);
                    }
                    return Ok(event);
                }
                _ => println!("{}: {line}", self.name),
            }
        }
    }

    /// Waits for the event named `name`, failing on any other.
    pub async fn expect(&mut self, name: &str, within: Duration) -> anyhow::Result<Value> {
        let event = self.next_event(within).await?;
        ensure!(event["event"] == name, "{} reported {event} while the test waited for {name}", self.name);
        Ok(event)
    }

    /// Sends one line to the script's stdin.
    pub async fn tell(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await.context("cannot write to the script")
    }

    /// Waits for the script to exit and checks that it succeeded.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        let status =
            tokio::time::timeout(WAIT_DEADLINE, self.child.wait()).await.context("the script did not exit")??;
        ensure!(status.success(), "{} exited with {status}", self.name);
        Ok(())
    }
}
