//! Telemetry over the stored readings: range queries (raw or aggregated per time bucket, computed in PostgreSQL),
//! the latest value of every metric, live streams of a device's readings, and retention of old readings.
//!
//! The crate binds no port: DESIGN.md puts every `/api/v1/...` route on the registry's REST port and every `ferrite.v1`
//! service on its gRPC port, so [`Telemetry::extension`] hands the REST routes, the `ferrite.v1.Telemetry` gRPC service
//! and their OpenAPI description to the registry (`ferrite_registry::Registry::with_extension`), behind the registry's token check.
//!
//! # Layout
//! - `model`: queries and their validation (ranges, buckets, aggregates, limits, cursors), the result types.
//! - `service`: [`TelemetryService`], the one implementation of queries and latest values (SQL).
//! - `live`: [`LiveFeed`], one MQTT session shared by every live stream, subscriptions counted per device.
//! - `error`: [`QueryError`]; converted once for REST (`rest`) and once for gRPC (`grpc`).
//! - `rest`: `GET /api/v1/devices/{id}/telemetry` and `/latest` (axum, utoipa).
//! - `grpc`: `ferrite.v1.Telemetry` (tonic).
//! - `retention`: [`Retention`], which drops expired daily partitions on a schedule.
//! - `rollup`: [`Rollup`], which keeps the 1-minute rollup that answers bucketed queries once raw readings are gone.

#![forbid(unsafe_code)]

mod error;
mod grpc;
pub mod live;
pub mod model;
mod rest;
pub mod retention;
pub mod rollup;
mod service;

use ferrite_api::{ApiExtension, ApiGuard};
use ferrite_proto::v1::telemetry_server::TelemetryServer;
use sqlx::PgPool;

pub use error::QueryError;
pub use grpc::GrpcFace;
pub use live::{LiveConfig, LiveFeed};
pub use model::{Aggregate, LatestValue, Point, PointPage, QueryParams, RangeQuery};
pub use rest::{ErrorBody, openapi};
pub use retention::{DEFAULT_RETENTION_INTERVAL, Retention};
pub use rollup::{DEFAULT_ROLLUP_INTERVAL, Rollup};
pub use service::TelemetryService;

/// The telemetry API, ready to be served by the registry.
#[derive(Clone)]
pub struct Telemetry {
    service: TelemetryService,
    live: Option<LiveFeed>,
}

impl Telemetry {
    /// Queries and latest values over `pool`; without [`Telemetry::with_live`], `Stream` answers UNAVAILABLE.
    pub fn new(pool: PgPool) -> Self {
        Telemetry { service: TelemetryService::new(pool), live: None }
    }

    /// Serves live streams from `live`.
    pub fn with_live(mut self, live: LiveFeed) -> Self {
        self.live = Some(live);
        self
    }

    pub fn service(&self) -> &TelemetryService {
        &self.service
    }

    /// The gRPC service `ferrite.v1.Telemetry`, checking tokens with `guard`.
    pub fn grpc(&self, guard: ApiGuard) -> TelemetryServer<GrpcFace> {
        TelemetryServer::new(GrpcFace::new(self.service.clone(), self.live.clone(), guard))
            .max_decoding_message_size(ferrite_api::GRPC_MAX_MESSAGE_BYTES)
            .max_encoding_message_size(ferrite_api::GRPC_MAX_MESSAGE_BYTES)
    }

    /// The REST routes, the gRPC service and the OpenAPI paths, for the registry (`ferrite_registry::Registry::with_extension`).
    pub fn extension(&self, guard: ApiGuard) -> ApiExtension {
        self.extend(ApiExtension::new(), guard)
    }

    /// Adds the REST routes, the gRPC service and the OpenAPI paths to `extension`, which may carry other APIs
    /// (the registry serves one extension).
    pub fn extend(&self, extension: ApiExtension, guard: ApiGuard) -> ApiExtension {
        extension.rest(rest::router(self.service.clone())).grpc(self.grpc(guard)).openapi(openapi())
    }
}
