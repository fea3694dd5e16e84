//! An embedded broker on 127.0.0.1 port 0 with its own data directory, stopped when dropped.

use std::net::SocketAddr;
use std::path::Path;

use ferrite_broker::{Broker, Config};
use ferrite_mqtt::BrokerUrl;
use tokio_util::sync::CancellationToken;

/// A running broker for one test.
pub struct TestBroker {
    mqtt: SocketAddr,
    ws: Option<SocketAddr>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    data: tempfile::TempDir,
}

impl TestBroker {
    /// Binds TCP and WebSocket listeners on free loopback ports and starts serving.
    pub async fn start() -> anyhow::Result<TestBroker> {
        Self::start_with(|_| {}).await
    }

    /// Like [`TestBroker::start`], letting the test adjust the configuration (e.g. its authorizer).
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> anyhow::Result<TestBroker> {
        let data = tempfile::tempdir()?;
        let mut config = Config {
            mqtt_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ws_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            data_dir: data.path().join("broker"),
            ..Config::default()
        };
        adjust(&mut config);
        let broker = Broker::bind(config).await?;
        let (mqtt, ws) = (broker.mqtt_addr(), broker.ws_addr());
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            if let Err(error) = broker.run(token).await {
                tracing::error!(%error, "test broker failed");
            }
        });
        Ok(TestBroker { mqtt, ws, stop, task: Some(task), data })
    }

    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt
    }

    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws
    }

    /// `mqtt://127.0.0.1:{port}` for our own clients.
    pub fn url(&self) -> BrokerUrl {
        BrokerUrl::Tcp { host: self.mqtt.ip().to_string(), port: self.mqtt.port() }
    }

    /// The broker's data directory (retained messages and sessions).
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Stops the broker and waits until it has closed its listeners.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
