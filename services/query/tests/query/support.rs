//! Fixtures: a registry serving the telemetry extension over a fresh database, readings written as the ingester
//! writes them, and a small HTTP client.

use std::net::SocketAddr;

use chrono::{DateTime, Utc};
use ferrite_proto::v1::telemetry_client::TelemetryClient;
use ferrite_query::{LiveFeed, Telemetry};
use ferrite_registry::{Config, Registry};
pub use ferrite_testkit::HttpResponse;
use ferrite_testkit::LOOPBACK;
use ferrite_testkit::http_request;
use ferrite_testkit_broker::Platform;
use sqlx::PgPool;
use tonic::transport::{Channel, Endpoint};

pub fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).expect("test times are valid").with_timezone(&Utc)
}

/// Stores readings `(device, metric, ts, value)` as the ingester does, with the latest value per metric
/// and the device registered.
pub async fn insert_readings(pool: &PgPool, readings: &[(&str, &str, DateTime<Utc>, f64)]) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for (device, metric, ts, value) in readings {
        sqlx::query("insert into devices (id, auto_registered) values ($1, true) on conflict do nothing")
            .bind(device)
            .execute(&mut *tx)
            .await?;
        sqlx::query("insert into readings (device_id, metric, ts, value, unit) values ($1, $2, $3, $4, 'u')")
            .bind(device)
            .bind(metric)
            .bind(ts)
            .bind(value)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "insert into latest_readings (device_id, metric, ts, value, unit) values ($1, $2, $3, $4, 'u')
             on conflict (device_id, metric) do update set ts = excluded.ts, value = excluded.value
             where latest_readings.ts < excluded.ts",
        )
        .bind(device)
        .bind(metric)
        .bind(ts)
        .bind(value)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A registry with the telemetry extension on loopback port 0 over a fresh database, stopped when dropped.
pub struct TestApp {
    pub platform: Platform,
    pub grpc: SocketAddr,
    pub rest: SocketAddr,
    pub registry: ferrite_registry::RegistryService,
}

impl TestApp {
    pub async fn start(require_token: bool) -> anyhow::Result<TestApp> {
        Self::start_with(require_token, None).await
    }

    pub async fn start_with(require_token: bool, live: Option<LiveFeed>) -> anyhow::Result<TestApp> {
        let mut platform = Platform::builder().with_database().start().await?;
        let config = Config { grpc_addr: LOOPBACK, rest_addr: LOOPBACK, require_token, ..Config::default() };
        let registry = Registry::bind(config, platform.pool().clone()).await?;
        let mut telemetry = Telemetry::new(platform.pool().clone());
        if let Some(live) = live {
            telemetry = telemetry.with_live(live);
        }
        let registry = {
            let extension = telemetry.extension(registry.api_guard());
            registry.with_extension(extension)
        };
        let (grpc, rest, service) = (registry.grpc_addr(), registry.rest_addr(), registry.service().clone());
        platform.spawn("registry", registry.run(platform.shutdown().clone()));
        Ok(TestApp { platform, grpc, rest, registry: service })
    }

    pub fn pool(&self) -> &PgPool {
        self.platform.pool()
    }

    pub async fn telemetry(&self) -> anyhow::Result<TelemetryClient<Channel>> {
        let channel = Endpoint::from_shared(format!("http://{}", self.grpc))?.connect().await?;
        Ok(TelemetryClient::new(channel))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.rest)
    }

    /// GET `path` (with its query string) and the response read to the end.
    pub async fn get(&self, path: &str) -> anyhow::Result<HttpResponse> {
        http(&self.url(path), None).await
    }

    /// Stops serving and waits until both servers have returned.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.platform.stop().await
    }
}

/// One HTTP/1.1 GET over a real socket, with a bearer token when given.
pub async fn http(url: &str, token: Option<&str>) -> anyhow::Result<HttpResponse> {
    http_request("GET", url, token, None).await
}
