//! Fixtures: a migrated database with a [`RegistryService`], a served [`Registry`], a small HTTP client,
//! and presence rows written as the ingester writes them.

use std::net::SocketAddr;

use bytes::Bytes;
use ferrite_proto::v1::device_registry_client::DeviceRegistryClient;
use ferrite_registry::{Config, NewDevice, Registry, RegistryService};
use ferrite_testkit::TestDb;
use http_body_util::{BodyExt, Full};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
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
    pub db: TestDb,
    pub grpc: SocketAddr,
    pub rest: SocketAddr,
    pub service: RegistryService,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), ferrite_registry::RegistryError>>>,
}

impl TestRegistry {
    /// `require_token` makes the loopback registry behave as one on a public address.
    pub async fn start(require_token: bool) -> anyhow::Result<TestRegistry> {
        let db = TestDb::new().await?;
        let config = Config {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            rest_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            require_token,
            ..Config::default()
        };
        let registry = Registry::bind(config, db.pool().clone()).await?;
        assert_eq!(registry.token_required(), require_token);
        let (grpc, rest, service) = (registry.grpc_addr(), registry.rest_addr(), registry.service().clone());
        let stop = CancellationToken::new();
        let task = tokio::spawn(registry.run(stop.clone()));
        Ok(TestRegistry { db, grpc, rest, service, stop, task: Some(task) })
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
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(ferrite_testkit::WAIT_DEADLINE, task).await???;
        }
        Ok(())
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An HTTP response, read to the end.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!("status {} body is not JSON ({err}): {}", self.status, String::from_utf8_lossy(&self.body))
        })
    }

    /// Asserts the status and that the body is `{"error": "<non-empty>"}`; returns the message.
    #[track_caller]
    pub fn expect_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "body: {}", String::from_utf8_lossy(&self.body));
        let content_type = self.headers.get("content-type").and_then(|value| value.to_str().ok());
        assert_eq!(content_type, Some("application/json"), "status {status}");
        let body = self.json();
        let message = body["error"].as_str().unwrap_or_else(|| panic!("no error message in {body}"));
        assert!(!message.is_empty());
        assert_eq!(body.as_object().map(|object| object.len()), Some(1), "only `error` in {body}");
        message.to_owned()
    }
}

/// One HTTP/1.1 request over a real socket; `body` is sent with `content_type` when given.
pub async fn http(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<(&str, &str)>,
) -> anyhow::Result<HttpResponse> {
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = hyper::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = match body {
        Some((content_type, body)) => {
            request.header("content-type", content_type).body(Full::new(Bytes::from(body.to_owned())))?
        }
        None => request.body(Full::new(Bytes::new()))?,
    };
    let response = client.request(request).await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes().to_vec();
    Ok(HttpResponse { status, headers, body })
}

/// A JSON request body.
pub fn json_body(value: &serde_json::Value) -> String {
    value.to_string()
}
