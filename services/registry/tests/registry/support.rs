//! Fixtures: a migrated database with a [`RegistryService`], a served [`Registry`], a small HTTP client,
//! and presence rows written as the ingester writes them.

use std::net::SocketAddr;

use ferrite_proto::v1::device_registry_client::DeviceRegistryClient;
use ferrite_registry::{Config, NewDevice, Registry, RegistryService};
pub use ferrite_testkit::HttpResponse;
use ferrite_testkit::http_request;
use ferrite_testkit::{LOOPBACK, TestDb};
use ferrite_testkit_broker::Platform;
use sqlx::PgPool;
use tonic::transport::{Channel, Endpoint};

/// A fresh database and a service over it; keep the `TestDb` alive for the test's duration.
pub async fn service() -> anyhow::Result<(TestDb, RegistryService)> {
    let db = TestDb::new().await?;
    let service = RegistryService::new(db.pool().clone());
    Ok((db, service))
}

pub fn new_device(id: &str, tags: &[&str]) -> NewDevice {
    NewDevice {
        id: id.to_owned(),
        name: Some(format!("device {id}")),
        tags: tags.iter().map(|tag| (*tag).to_owned()).collect(),
        metadata: serde_json::json!({"site": "lab"}),
    }
}

/// Records a presence change the way the ingester does for `devices/{id}/status`.
pub async fn set_presence(pool: &PgPool, device: &str, online: bool) -> anyhow::Result<()> {
    sqlx::query(
        "insert into presence (device_id, online, last_seen, changed_at) values ($1, $2, now(), now())
         on conflict (device_id) do update set online = excluded.online, last_seen = now(),
             changed_at = case when presence.online = excluded.online then presence.changed_at else now() end",
    )
    .bind(device)
    .bind(online)
    .execute(pool)
    .await?;
    Ok(())
}

/// A registry serving gRPC and REST on loopback port 0 over a fresh database, stopped when dropped.
pub struct TestRegistry {
    pub platform: Platform,
    pub grpc: SocketAddr,
    pub rest: SocketAddr,
    pub service: RegistryService,
}

impl TestRegistry {
    /// `require_token` makes the loopback registry behave as one on a public address.
    pub async fn start(require_token: bool) -> anyhow::Result<TestRegistry> {
        let mut platform = Platform::builder().with_database().start().await?;
        let config = Config { grpc_addr: LOOPBACK, rest_addr: LOOPBACK, require_token, ..Config::default() };
        let registry = Registry::bind(config, platform.pool().clone()).await?;
        assert_eq!(registry.token_required(), require_token);
        let (grpc, rest, service) = (registry.grpc_addr(), registry.rest_addr(), registry.service().clone());
        platform.spawn("registry", registry.run(platform.shutdown().clone()));
        Ok(TestRegistry { platform, grpc, rest, service })
    }

    pub fn db(&self) -> &TestDb {
        self.platform.db()
    }

    pub fn pool(&self) -> &PgPool {
        self.platform.pool()
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Endpoint::from_shared(self.grpc_url())?.connect().await?)
    }

    pub async fn devices(&self) -> anyhow::Result<DeviceRegistryClient<Channel>> {
        Ok(DeviceRegistryClient::new(self.channel().await?))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.rest)
    }

    /// Stops serving and waits until both servers have returned.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.platform.stop().await
    }
}

/// One HTTP/1.1 request over a real socket; `body` is sent with `content_type` when given.
pub async fn http(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<(&str, &str)>,
) -> anyhow::Result<HttpResponse> {
    http_request(method, url, token, body).await
}

/// A JSON request body.
pub fn json_body(value: &serde_json::Value) -> String {
    value.to_string()
}
