//! The device registry: devices, MQTT credentials, presence and API tokens, over gRPC and REST,
//! and the broker's authorizer that checks MQTT clients against it.
//!
//! REST and gRPC are two thin faces over one domain service, [`RegistryService`];
//! [`Registry`] binds both listeners and serves them with one shutdown signal.
//!
//! # Layout
//! - `model`: the domain types and the rules for their fields.
//! - `service`: [`RegistryService`], the one implementation of every operation (PostgreSQL).
//! - `error`: [`RegistryError`]; converted once for REST (`rest`) and once for gRPC (`grpc`).
//! - `secret`: device secrets (argon2) and API tokens (SHA-256).
//! - `cache`: the short-lived cache of credential checks behind the broker's authorizer.
//! - `presence`: the LISTEN/NOTIFY feed behind presence watches.
//! - `access`: the token table as the API host's `TokenAuthority`, behind the `ApiGuard` both faces and extensions share.
//! - `grpc`: `ferrite.v1.DeviceRegistry` and `ferrite.v1.ApiTokens` (tonic), plus health and reflection.
//! - `rest`: `/api/v1/...` (axum), `/openapi.json` (utoipa), `/healthz`, `/metrics`.
//! - `serve`: both listeners under bounds (connections, timeouts, sizes) and the REST panic guard.
//! - `authorizer`: [`RegistryAuthorizer`], the broker's [`ferrite_auth::Authorizer`]: credentials and topic ACL.
//! - `cli`: `ferrite device ...` and `ferrite token ...`, over gRPC.

#![forbid(unsafe_code)]

mod access;
pub mod authorizer;
mod cache;
pub mod cli;
mod cors;
mod error;
mod grpc;
pub mod model;
pub mod presence;
mod rest;
mod secret;
mod serve;
mod service;
mod trace;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ferrite_core::origin::OriginPolicy;

use ferrite_proto::v1::api_tokens_server::ApiTokensServer;
use ferrite_proto::v1::device_registry_server::DeviceRegistryServer;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use authorizer::{AuthorizerConfig, RegistryAuthorizer, ServiceAccount, ServiceRole};
pub use error::RegistryError;
/// The API host's contract lives in `ferrite-api` (so the services beside the registry do not depend on it);
/// re-exported under the paths the registry has always offered.
pub use ferrite_api::{ApiExtension, ApiGuard, http};
pub use model::{
    ApiToken, Device, DeviceChanges, DeviceFilter, IssuedCredentials, IssuedToken, NewDevice, Page, PageRequest,
    PresenceChange, PresenceState,
};
pub use presence::PresenceListener;
pub use rest::openapi;
pub use serve::{
    BODY_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS, GRPC_IDLE_TIMEOUT, GRPC_MAX_MESSAGE_BYTES, GRPC_REQUEST_TIMEOUT,
    HEADER_READ_TIMEOUT, MAX_BODY_BYTES, ServerLimits,
};
pub use service::{DeviceConnections, RegistryService};

use crate::grpc::GrpcFace;

/// The registry's gRPC port (DESIGN.md).
pub const DEFAULT_GRPC_PORT: u16 = 50051;
/// The registry's REST port (DESIGN.md).
pub const DEFAULT_REST_PORT: u16 = 8081;

/// Where the registry listens and who may call it.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC: `ferrite.v1.DeviceRegistry`, `ferrite.v1.ApiTokens`, `grpc.health.v1`, server reflection.
    pub grpc_addr: SocketAddr,
    /// REST: `/api/v1/...`, `/openapi.json`, `/healthz`, `/metrics`.
    pub rest_addr: SocketAddr,
    /// Serve the APIs without tokens even on a non-loopback address (`--allow-anonymous`; logged loudly).
    pub allow_anonymous: bool,
    /// Require tokens even when both listeners are on loopback.
    pub require_token: bool,
    /// Connections each listener serves at once, and the other bounds of `serve`.
    pub limits: ServerLimits,
}

impl Default for Config {
    /// Loopback only, like `ferrite up`: safe without tokens.
    fn default() -> Self {
        Config {
            grpc_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_GRPC_PORT)),
            rest_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_REST_PORT)),
            allow_anonymous: false,
            require_token: false,
            limits: ServerLimits::default(),
        }
    }
}

impl Config {
    /// Whether API calls need a token: Mosquitto 2's rule, applied to the registry's listeners.
    pub fn token_required(&self) -> bool {
        self.require_token || !(self.allow_anonymous || all_loopback([self.grpc_addr, self.rest_addr]))
    }
}

/// True when every address is a loopback one: then only this machine can connect, and the safe default
/// lets clients in without credentials. An unspecified address (`0.0.0.0`, `::`) is not loopback.
pub fn all_loopback(addrs: impl IntoIterator<Item = SocketAddr>) -> bool {
    addrs.into_iter().all(|addr| addr.ip().is_loopback())
}

/// A bound registry: both ports are open and the presence feed is listening; [`Registry::run`] serves.
pub struct Registry {
    service: RegistryService,
    grpc: TcpListener,
    rest: TcpListener,
    grpc_addr: SocketAddr,
    rest_addr: SocketAddr,
    presence: PresenceListener,
    token_required: bool,
    extension: ApiExtension,
    limits: ServerLimits,
    /// Which web pages may call the REST API from a browser (`cors.rs`).
    browser_origins: OriginPolicy,
}

impl Registry {
    /// Binds both listeners (port 0 picks a free port) over a migrated database.
    pub async fn bind(config: Config, pool: PgPool) -> Result<Registry, RegistryError> {
        Self::bind_service(config, RegistryService::new(pool)).await
    }

    /// Like [`Registry::bind`], with a service the caller already holds, e.g. one whose
    /// [`RegistryAuthorizer`] the in-process broker uses, so that rotations reach the broker's cache at once.
    pub async fn bind_service(config: Config, service: RegistryService) -> Result<Registry, RegistryError> {
        if config.allow_anonymous && config.require_token {
            return Err(RegistryError::InvalidConfig("allow_anonymous and require_token contradict each other".into()));
        }
        let token_required = config.token_required();
        if config.allow_anonymous && !all_loopback([config.grpc_addr, config.rest_addr]) {
            tracing::warn!(
                grpc = %config.grpc_addr, rest = %config.rest_addr,
                "ANONYMOUS ACCESS: the registry API accepts calls without a token on a non-loopback address"
            );
        }
        let grpc = bind(config.grpc_addr).await?;
        let rest = bind(config.rest_addr).await?;
        let grpc_addr = local_addr(&grpc, config.grpc_addr)?;
        let rest_addr = local_addr(&rest, config.rest_addr)?;
        let presence = PresenceListener::listen(service.clone()).await?;
        tracing::info!(grpc = %grpc_addr, rest = %rest_addr, token_required, "registry bound");
        Ok(Registry {
            service,
            grpc,
            rest,
            grpc_addr,
            rest_addr,
            presence,
            token_required,
            extension: ApiExtension::new(),
            limits: config.limits,
            browser_origins: OriginPolicy::new(Vec::new(), rest_addr.ip().is_loopback()),
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn rest_addr(&self) -> SocketAddr {
        self.rest_addr
    }

    /// Whether API calls need a token (see [`Config::token_required`]).
    pub fn token_required(&self) -> bool {
        self.token_required
    }

    /// The domain service behind both faces.
    pub fn service(&self) -> &RegistryService {
        &self.service
    }

    /// The API token check these ports use, for the services of an [`ApiExtension`].
    pub fn api_guard(&self) -> ApiGuard {
        ApiGuard::new(std::sync::Arc::new(self.service.clone()), self.token_required)
    }

    /// Lets web pages of these origins call the REST API from a browser (CORS), besides pages of the API's own
    /// origin: `allowed` (`--allowed-origins`) and pages on `sibling_ports` of the host the browser names, such as
    /// the dashboard on the gateway's port in `ferrite up` (see `ferrite_core::origin`).
    pub fn with_browser_origins(
        mut self,
        allowed: Vec<ferrite_core::origin::AllowedOrigin>,
        sibling_ports: impl IntoIterator<Item = u16>,
    ) -> Self {
        self.browser_origins =
            OriginPolicy::new(allowed, self.rest_addr.ip().is_loopback()).with_sibling_ports(sibling_ports);
        self
    }

    /// Serves `extension`'s REST routes and gRPC services on the registry's ports too (replacing an earlier extension).
    pub fn with_extension(mut self, extension: ApiExtension) -> Self {
        self.extension = extension;
        self
    }

    /// Serves gRPC and REST until `shutdown` is cancelled, then ends presence streams, lets requests in flight
    /// finish, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RegistryError> {
        let Registry { service, grpc, rest, presence, token_required, extension, limits, browser_origins, .. } = self;
        let ferrite_api::ExtensionParts { rest: extra_rest, grpc: extra_grpc, grpc_names, openapi: extra_openapi } =
            extension.into_parts();
        let guard = ApiGuard::new(std::sync::Arc::new(service.clone()), token_required);
        // If one server fails the other stops too, rather than serving half a registry.
        let stop = shutdown.child_token();
        let presence = tokio::spawn(presence.run(stop.clone()));

        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter.set_serving::<DeviceRegistryServer<GrpcFace>>().await;
        health_reporter.set_serving::<ApiTokensServer<GrpcFace>>().await;
        for name in grpc_names {
            health_reporter.set_service_status(name, tonic_health::ServingStatus::Serving).await;
        }
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ferrite_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|err| RegistryError::Internal(format!("reflection: {err}")))?;
        // grpcurl and older tools still ask the v1alpha reflection service.
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ferrite_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|err| RegistryError::Internal(format!("reflection: {err}")))?;
        let face = GrpcFace::new(service.clone(), guard.clone());
        let grpc_server = tonic::transport::Server::builder()
            .timeout(serve::GRPC_REQUEST_TIMEOUT)
            .concurrency_limit_per_connection(serve::GRPC_CONCURRENCY_PER_CONNECTION)
            .max_concurrent_streams(serve::GRPC_MAX_CONCURRENT_STREAMS)
            .http2_keepalive_interval(Some(serve::HTTP2_KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(serve::HTTP2_KEEPALIVE_TIMEOUT))
            .trace_fn(trace::grpc_span)
            .add_routes(extra_grpc.routes())
            .add_service(health)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(
                DeviceRegistryServer::new(face.clone())
                    .max_decoding_message_size(serve::GRPC_MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(serve::GRPC_MAX_MESSAGE_BYTES),
            )
            .add_service(
                ApiTokensServer::new(face)
                    .max_decoding_message_size(serve::GRPC_MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(serve::GRPC_MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(
                serve::grpc_incoming(grpc, limits, stop.clone()),
                stop.clone().cancelled_owned(),
            );
        let grpc_server = async {
            let result = grpc_server.await;
            stop.cancel();
            result.map_err(|err| RegistryError::Internal(format!("grpc server failed: {err}")))
        };
        let rest_server = serve::serve_rest(
            rest,
            rest::router(service.clone(), guard, extra_rest, extra_openapi)
                .layer(axum::middleware::from_fn_with_state(Arc::new(browser_origins), cors::cors)),
            limits,
            stop.clone(),
        );
        let rest_server = async {
            let result = rest_server.await;
            stop.cancel();
            result.map_err(|err| RegistryError::Internal(format!("rest server failed: {err}")))
        };
        // Presence streams never end by themselves, and both servers wait for open streams while draining.
        let end_watches = async {
            stop.cancelled().await;
            service.stop_watches();
        };
        let (grpc_result, rest_result, ()) = tokio::join!(grpc_server, rest_server, end_watches);
        stop.cancel();
        let _ = presence.await;
        grpc_result?;
        rest_result?;
        tracing::info!("registry stopped");
        Ok(())
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, RegistryError> {
    TcpListener::bind(addr).await.map_err(|source| RegistryError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, RegistryError> {
    listener.local_addr().map_err(|source| RegistryError::Bind { addr, source })
}
