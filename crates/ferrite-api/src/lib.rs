//! The API host's contract: what a service needs to serve its API on the registry's ports (DESIGN.md puts every
//! `/api/v1/...` route on one REST port and every `ferrite.v1` service on one gRPC port).
//!
//! A service builds an [`ApiExtension`] (REST routes, gRPC services, OpenAPI paths); the host (the registry) serves it
//! behind one [`ApiGuard`], the API token check, whose tokens a [`TokenAuthority`] (the registry's token table) verifies.
//! REST errors are `{"error": "..."}` everywhere, through [`http::ApiError`] and its extractors.
//! The services that serve APIs (query, rules, commands) depend on this crate, not on the registry, so they are
//! siblings of it.
//!
//! # Layout
//! - `http`: [`http::ApiError`], [`http::ErrorBody`] and the extractors [`http::Json`], [`http::Path`], [`http::Query`].
//! - `guard`: [`ApiGuard`], [`TokenAuthority`], [`AccessError`].
//! - `extension`: [`ApiExtension`].

#![forbid(unsafe_code)]

mod extension;
mod guard;
pub mod http;

pub use extension::{ApiExtension, ExtensionParts};
pub use guard::{AccessError, ApiGuard, BoxFuture, TokenAuthority, require_token};

/// gRPC: the largest message decoded or encoded on the host's port (tonic's decoding default, now also bounding
/// what we send); every service served there sets it on its server.
pub const GRPC_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
