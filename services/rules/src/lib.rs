//! Threshold rules and alerts: rules managed over REST and gRPC, evaluated as readings arrive over MQTT,
//! firing `alerts/{device_id}` once while their condition holds and resolving when it stops.
//!
//! The crate binds no ports: its REST routes ([`router`], [`openapi`]) and gRPC service ([`grpc`]) are served on the
//! registry's ports through an `ApiExtension`, and the [`RulesEngine`] is an MQTT client like the ingester.
//!
//! # Layout
//! - `model`: rules, comparisons, severities, message templates and alerts, with the rules for their fields.
//! - `eval`: the state of one rule for one device (idle, pending, firing) and how a reading moves it.
//! - `service`: [`RulesService`], the one implementation of every operation (PostgreSQL).
//! - `engine`: [`RulesEngine`], the MQTT consumer that evaluates readings and fires and resolves alerts.
//! - `error`: [`RulesError`]; converted once for REST (`rest`) and once for gRPC (`grpc`).
//! - `rest`: `/api/v1/rules...` and `/api/v1/alerts` (axum, utoipa).
//! - `grpc`: `ferrite.v1.Rules` (tonic).

#![forbid(unsafe_code)]

pub mod engine;
mod error;
pub mod eval;
mod grpc;
pub mod model;
mod rest;
mod service;

pub use engine::{EngineConfig, EngineStats, RulesEngine};
pub use error::RulesError;
pub use grpc::{RulesGrpc, grpc};
pub use rest::{openapi, router};
pub use service::RulesService;
