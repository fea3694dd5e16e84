//! Fixtures: a registry serving the rules API, a rules engine, MQTT clients to publish readings and watch alerts,
//! and a small HTTP client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use ferrite_mqtt::{Event, QoS, Session, SessionConfig};
use ferrite_registry::{ApiExtension, Config, Registry};
use ferrite_rules::{EngineConfig, EngineStats, RulesEngine, RulesService};
pub use ferrite_testkit::HttpResponse;
use ferrite_testkit::http_request;
use ferrite_testkit::{LOOPBACK, WAIT_DEADLINE, wait_for};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A unique number per call, for client ids.
pub fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A database, a broker, the registry with the rules API mounted, and a running engine.
pub struct Platform {
    pub base: ferrite_testkit_broker::Platform,
    pub rest: SocketAddr,
    pub grpc: SocketAddr,
    pub engine: Option<RunningEngine>,
}

/// An engine task and its stats.
pub struct RunningEngine {
    pub stats: Arc<EngineStats>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ferrite_rules::RulesError>>,
}

impl Platform {
    pub async fn start() -> anyhow::Result<Platform> {
        Self::start_with(false).await
    }

    /// `require_token` makes the loopback registry behave as one on a public address.
    pub async fn start_with(require_token: bool) -> anyhow::Result<Platform> {
        let mut base = ferrite_testkit_broker::Platform::builder().with_database().with_broker().start().await?;
        let config = Config { grpc_addr: LOOPBACK, rest_addr: LOOPBACK, require_token, ..Config::default() };
        let registry = Registry::bind(config, base.pool().clone()).await?;
        let service = RulesService::new(base.pool().clone());
        let extension = ApiExtension::new()
            .rest(ferrite_rules::router(service.clone()))
            .grpc(ferrite_rules::grpc(service, registry.api_guard()))
            .openapi(ferrite_rules::openapi());
        let registry = registry.with_extension(extension);
        let (rest, grpc) = (registry.rest_addr(), registry.grpc_addr());
        base.spawn("registry", registry.run(base.shutdown().clone()));
        let mut platform = Platform { base, rest, grpc, engine: None };
        platform.start_engine().await?;
        Ok(platform)
    }

    /// Starts an engine (after stopping the current one) and waits until its subscription is live.
    pub async fn start_engine(&mut self) -> anyhow::Result<()> {
        self.stop_engine().await?;
        let mut config = EngineConfig::new(self.broker_url());
        config.client_id = format!("rules-test-{}", unique());
        let engine = RulesEngine::bind(config, self.pool().clone()).await?;
        let stats = engine.stats();
        let stop = CancellationToken::new();
        let task = tokio::spawn(engine.run(stop.clone()));
        wait_for("the engine's subscription", || {
            let stats = stats.clone();
            async move { stats.subscribed.load(Ordering::Relaxed) }
        })
        .await?;
        self.engine = Some(RunningEngine { stats, stop, task });
        Ok(())
    }

    pub async fn stop_engine(&mut self) -> anyhow::Result<()> {
        if let Some(engine) = self.engine.take() {
            engine.stop.cancel();
            tokio::time::timeout(WAIT_DEADLINE, engine.task).await.context("the engine did not stop")???;
        }
        Ok(())
    }

    /// Waits until the engine holds `count` enabled rules (it reloads on the database's notification).
    pub async fn wait_rules(&self, count: usize) -> anyhow::Result<()> {
        let stats = self.engine.as_ref().context("no engine")?.stats.clone();
        wait_for(&format!("the engine to load {count} rules"), || {
            let stats = stats.clone();
            async move { stats.rules.load(Ordering::Relaxed) == count }
        })
        .await
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

    /// Creates a rule over REST and waits until the engine has it.
    pub async fn create_rule(&self, body: Value) -> anyhow::Result<Value> {
        let before = self.engine.as_ref().map_or(0, |e| e.stats.rules.load(Ordering::Relaxed));
        let response = http("POST", &self.url("/api/v1/rules"), None, Some(&body)).await?;
        if response.status != 201 {
            bail!("creating {body} answered {}: {}", response.status, String::from_utf8_lossy(&response.body));
        }
        self.wait_rules(before + 1).await?;
        Ok(response.json())
    }

    /// `(state, value, fired_at)` of a device's alerts, oldest first.
    pub async fn alert_rows(&self, device: &str) -> anyhow::Result<Vec<(String, f64, DateTime<Utc>)>> {
        Ok(sqlx::query_as("select state, value, fired_at from alerts where device_id = $1 order by fired_at")
            .bind(device)
            .fetch_all(self.pool())
            .await?)
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        // The base stops the registry and the broker when it is dropped.
        if let Some(engine) = &self.engine {
            engine.stop.cancel();
        }
    }
}

/// A real MQTT client: publishes readings and watches `alerts/#`.
pub struct Mqtt {
    session: Session,
    events: mpsc::Receiver<Event>,
}

impl Mqtt {
    pub async fn connect(platform: &Platform) -> anyhow::Result<Mqtt> {
        let (session, events) = Session::start(SessionConfig::new(platform.broker_url(), format!("test-{}", unique())));
        let mut mqtt = Mqtt { session, events };
        mqtt.session.subscribe("alerts/#", QoS::AtLeastOnce)?;
        tokio::time::timeout(WAIT_DEADLINE, async {
            loop {
                match mqtt.events.recv().await {
                    Some(Event::Subscribed { refused: 0 }) => return Ok(()),
                    Some(Event::Subscribed { refused }) => bail!("the broker refused {refused} filters"),
                    Some(_) => {}
                    None => bail!("the session ended"),
                }
            }
        })
        .await
        .context("no answer to subscribing to alerts/#")??;
        Ok(mqtt)
    }

    /// Publishes a JSON reading with its own timestamp at QoS 1.
    pub async fn reading(&self, device: &str, metric: &str, value: f64, ts: DateTime<Utc>) -> anyhow::Result<()> {
        let payload = serde_json::json!({"value": value, "ts": ts.timestamp_millis()}).to_string();
        self.publish(&format!("sensors/{device}/{metric}"), payload).await
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> anyhow::Result<()> {
        self.session.publish(topic, QoS::AtLeastOnce, false, payload, None).await.context("cannot publish")
    }

    /// The next alert published on `alerts/#`: `(topic, payload)`.
    pub async fn next_alert(&mut self) -> anyhow::Result<(String, Value)> {
        tokio::time::timeout(WAIT_DEADLINE, async {
            loop {
                match self.events.recv().await {
                    Some(Event::Message(message)) => {
                        let payload = serde_json::from_slice(message.payload()).context("an alert is not JSON")?;
                        return Ok((message.topic().into_owned(), payload));
                    }
                    Some(_) => {}
                    None => bail!("the session ended"),
                }
            }
        })
        .await
        .context("no alert arrived")?
    }
}

/// Seconds after a fixed instant, for readings with known timestamps.
pub fn at(base: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
    base + chrono::Duration::seconds(seconds)
}

/// One HTTP/1.1 request over a real socket, with a JSON body when given.
pub async fn http(method: &str, url: &str, token: Option<&str>, body: Option<&Value>) -> anyhow::Result<HttpResponse> {
    let body = body.map(Value::to_string);
    http_request(method, url, token, body.as_deref().map(|body| ("application/json", body))).await
}
