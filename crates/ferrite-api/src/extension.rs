//! Further APIs served on the registry's two ports (telemetry queries, rules and alerts, commands), behind the same token check.
//!
//! DESIGN.md puts every `/api/v1/...` route on one REST port and every `ferrite.v1` service on one gRPC port, so the crates that
//! implement them do not bind ports of their own: they hand an [`ApiExtension`] to the host (`ferrite_registry::Registry::with_extension`).
//! REST routes get the host's token check as a route layer; gRPC services call [`crate::ApiGuard::check`] themselves,
//! as the registry's own faces do.

use std::convert::Infallible;

use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::server::NamedService;

/// REST routes, gRPC services and their OpenAPI description, to be served by the registry.
#[derive(Default)]
pub struct ApiExtension {
    rest: axum::Router,
    grpc: tonic::service::RoutesBuilder,
    grpc_names: Vec<&'static str>,
    openapi: Option<utoipa::openapi::OpenApi>,
}

/// What the host serves of an [`ApiExtension`].
pub struct ExtensionParts {
    /// The REST routes, with their full paths; the host adds its token check as a route layer.
    pub rest: axum::Router,
    /// The gRPC services, each checking tokens itself.
    pub grpc: tonic::service::RoutesBuilder,
    /// Their names, for gRPC health.
    pub grpc_names: Vec<&'static str>,
    /// Paths and schemas for the host's `/openapi.json`.
    pub openapi: Option<utoipa::openapi::OpenApi>,
}

impl ApiExtension {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds REST routes with their full paths (`/api/v1/...`). Each matched route requires a token like the registry's own.
    pub fn rest(mut self, router: axum::Router) -> Self {
        self.rest = self.rest.merge(router);
        self
    }

    /// Adds a gRPC service; it checks tokens itself with [`ApiGuard::check`]. gRPC health reports it SERVING.
    pub fn grpc<S>(mut self, service: S) -> Self
    where
        S: Service<http::Request<Body>, Error = Infallible> + NamedService + Clone + Send + Sync + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.grpc.add_service(service);
        self.grpc_names.push(S::NAME);
        self
    }

    /// Adds paths and schemas to the host's `/openapi.json`.
    pub fn openapi(mut self, document: utoipa::openapi::OpenApi) -> Self {
        match &mut self.openapi {
            Some(existing) => existing.merge(document),
            None => self.openapi = Some(document),
        }
        self
    }

    /// Takes the extension apart, for the host.
    pub fn into_parts(self) -> ExtensionParts {
        let ApiExtension { rest, grpc, grpc_names, openapi } = self;
        ExtensionParts { rest, grpc, grpc_names, openapi }
    }
}
