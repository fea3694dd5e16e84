//! Fixtures: a platform (database, broker, ingester, registry with the commands API, command service),
//! fleet devices, a raw MQTT device, and a small HTTP client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use bytes::Bytes;
use ferrite_commands::{CommandStats, Commands};
use ferrite_fleet::Fleet;
use ferrite_ingester::Ingester;
use ferrite_mqtt::{Event, Message, PublishProperties, QoS, Session, SessionConfig};
use ferrite_registry::{ApiExtension, Config, Registry};
pub use ferrite_testkit::HttpResponse;
use ferrite_testkit::http_request;
use ferrite_testkit::{LOOPBACK, WAIT_DEADLINE, wait_for};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A unique number per call, for client ids and device numbers.
pub fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Everything a command needs, in this process.
pub struct Platform {
    pub base: ferrite_testkit_broker::Platform,
    pub rest: SocketAddr,
    pub grpc: SocketAddr,
    pub stats: Arc<CommandStats>,
}

impl Platform {
    pub async fn start() -> anyhow::Result<Platform> {
        let mut base = ferrite_testkit_broker::Platform::builder().with_database().with_broker().start().await?;
        let pool = base.pool().clone();

        let ingester = Ingester::bind(ferrite_ingester::Config::new(base.broker_url()), pool.clone()).await?;
        let ingested = ingester.stats();
        base.spawn("ingester", ingester.run(base.shutdown().clone()));

        let config = Config { grpc_addr: LOOPBACK, rest_addr: LOOPBACK, ..Config::default() };
        let registry = Registry::bind(config, pool.clone()).await?;
        let mut commands_config = ferrite_commands::Config::new(base.broker_url());
        commands_config.client_id = format!("commands-test-{}", unique());
        let commands = Commands::bind(commands_config, pool)?;
        let service = commands.service();
        let stats = service.stats();
        let extension = ApiExtension::new()
            .rest(ferrite_commands::router(service.clone()))
            .grpc(ferrite_commands::grpc(service, registry.api_guard()))
            .openapi(ferrite_commands::openapi());
        let registry = registry.with_extension(extension);
        let (rest, grpc) = (registry.rest_addr(), registry.grpc_addr());
        base.spawn("registry", registry.run(base.shutdown().clone()));
        base.spawn("commands", commands.run(base.shutdown().clone()));

        wait_for("the ingester's and the command service's subscriptions", || {
            let (ingested, stats) = (ingested.clone(), stats.clone());
            async move { ingested.subscribed.load(Ordering::Relaxed) && stats.subscribed.load(Ordering::Relaxed) }
        })
        .await?;
        Ok(Platform { base, rest, grpc, stats })
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        self.base.pool()
    }

    pub fn broker_url(&self) -> ferrite_mqtt::BrokerUrl {
        self.base.broker_url()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.rest)
    }

    pub async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        Ok(tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))?.connect().await?)
    }

    /// Waits until the ingester has recorded `device` as online (or offline).
    pub async fn wait_presence(&self, device: &str, online: bool) -> anyhow::Result<()> {
        let pool = self.pool().clone();
        wait_for(&format!("{device} to be {}", if online { "online" } else { "offline" }), || {
            let pool = pool.clone();
            async move {
                let now: Option<bool> = sqlx::query_scalar("select online from presence where device_id = $1")
                    .bind(device)
                    .fetch_optional(&pool)
                    .await
                    .ok()
                    .flatten();
                now == Some(online)
            }
        })
        .await
    }

    /// Sends a command over REST.
    pub async fn send(&self, device: &str, body: Value) -> anyhow::Result<HttpResponse> {
        http("POST", &self.url(&format!("/api/v1/devices/{device}/commands")), Some(&body)).await
    }

    /// Waits until a command reaches `state`; returns it.
    pub async fn wait_command(&self, id: &str, state: &str) -> anyhow::Result<Value> {
        let url = self.url(&format!("/api/v1/commands/{id}"));
        let mut last = Value::Null;
        let deadline = tokio::time::Instant::now() + WAIT_DEADLINE;
        while tokio::time::Instant::now() < deadline {
            last = http("GET", &url, None).await?.json();
            if last["state"] == state {
                return Ok(last);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        bail!("command {id} never reached {state}; last seen {last}")
    }
}

/// A simulated fleet of one device.
pub struct FleetDevice {
    pub id: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl FleetDevice {
    /// Starts fleet device `{prefix}-{number:04}` on the platform's broker.
    pub fn start(platform: &Platform, prefix: &str, number: usize) -> anyhow::Result<FleetDevice> {
        let mut config = ferrite_fleet::Config::new(platform.broker_url(), 1);
        config.prefix = prefix.to_owned();
        config.first = number;
        let id = config.device_id(0);
        let fleet = Fleet::bind(config)?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(fleet.run(stop.clone()));
        Ok(FleetDevice { id, stop, task })
    }

    /// Stops the device as the fleet does at shutdown: it says `offline` and disconnects, keeping its session.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        tokio::time::timeout(WAIT_DEADLINE, self.task).await.context("the fleet did not stop")???;
        Ok(())
    }
}

/// A device that receives commands and answers only when told to.
pub struct RawDevice {
    pub session: Session,
    events: mpsc::Receiver<Event>,
}

impl RawDevice {
    /// Connects, subscribes to `commands/{id}` and announces itself online (the ingester records that).
    pub async fn start(platform: &Platform, id: &str) -> anyhow::Result<RawDevice> {
        let mut config = SessionConfig::new(platform.broker_url(), id);
        config.subscriptions = vec![(format!("commands/{id}"), QoS::AtLeastOnce)];
        let (session, mut events) = Session::start(config);
        tokio::time::timeout(WAIT_DEADLINE, async {
            loop {
                match events.recv().await {
                    Some(Event::Subscribed { refused: 0 }) => return Ok(()),
                    Some(Event::Subscribed { refused }) => bail!("the broker refused {refused} filters"),
                    Some(_) => {}
                    None => bail!("the session ended"),
                }
            }
        })
        .await
        .context("no answer to subscribing")??;
        session.publish(format!("devices/{id}/status"), QoS::AtLeastOnce, true, "online", None).await?;
        platform.wait_presence(id, true).await?;
        Ok(RawDevice { session, events })
    }

    /// The next command delivered to this device.
    pub async fn next_command(&mut self) -> anyhow::Result<Message> {
        tokio::time::timeout(WAIT_DEADLINE, async {
            loop {
                match self.events.recv().await {
                    Some(Event::Message(message)) => return Ok(message),
                    Some(_) => {}
                    None => bail!("the session ended"),
                }
            }
        })
        .await
        .context("no command arrived")?
    }

    /// Publishes a response on `topic`, with correlation data when given.
    pub async fn respond(&self, topic: &str, correlation: Option<Bytes>, body: &Value) -> anyhow::Result<()> {
        let properties =
            correlation.map(|data| PublishProperties { correlation_data: Some(data), ..Default::default() });
        self.session.publish(topic, QoS::AtLeastOnce, false, body.to_string(), properties).await?;
        Ok(())
    }
}

/// One HTTP/1.1 request over a real socket, with a JSON body when given.
pub async fn http(method: &str, url: &str, body: Option<&Value>) -> anyhow::Result<HttpResponse> {
    let body = body.map(Value::to_string);
    http_request(method, url, None, body.as_deref().map(|body| ("application/json", body))).await
}
