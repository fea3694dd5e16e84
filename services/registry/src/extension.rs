//! Further APIs served on the registry's two ports (telemetry queries, rules and alerts, commands), behind the same token check.
//!
//! DESIGN.md puts every `/api/v1/...` route on one REST port and every `ferrite.v1` service on one gRPC port, so the crates that
//! implement them do not bind ports of their own: they hand an [`ApiExtension`] to [`crate::Registry::with_extension`].
//! REST routes get the registry's token check as a route layer; gRPC services call [`ApiGuard::check`] themselves,
//! as the registry's own faces do.

use std::convert::Infallible;

use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::{Request, Status};

use crate::RegistryError;
use crate::access::ApiAccess;

/// The API token check, for services that live beside the registry. Obtained from [`crate::Registry::api_guard`].
#[derive(Clone)]
pub struct ApiGuard {
    access: ApiAccess,
}

impl ApiGuard {
    pub(crate) fn new(access: ApiAccess) -> Self {
        ApiGuard { access }
    }

    /// Checks a gRPC request's `authorization` metadata (`Bearer fer_...`): `Unauthenticated` when a needed token is
    /// missing or any sent token is wrong.
    pub async fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let authorization = match request.metadata().get("authorization") {
            Some(value) => Some(value.to_str().map_err(|_| Status::from(RegistryError::Unauthenticated))?),
            None => None,
        };
        Ok(self.access.check(authorization).await?)
    }

    /// Checks an HTTP `Authorization` header value; for REST routes outside an [`ApiExtension`] (which are checked already).
    pub async fn check_header(&self, authorization: Option<&str>) -> Result<(), RegistryError> {
        self.access.check(authorization).await
    }
}

/// REST routes, gRPC services and their OpenAPI description, to be served by the registry.
#[derive(Default)]
pub struct ApiExtension {
    pub(crate) rest: axum::Router,
    pub(crate) grpc: tonic::service::RoutesBuilder,
    pub(crate) grpc_names: Vec<&'static str>,
    pub(crate) openapi: Option<utoipa::openapi::OpenApi>,
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

    /// Adds paths and schemas to the registry's `/openapi.json`.
    pub fn openapi(mut self, document: utoipa::openapi::OpenApi) -> Self {
        match &mut self.openapi {
            Some(existing) => existing.merge(document),
            None => self.openapi = Some(document),
        }
        self
    }
}
