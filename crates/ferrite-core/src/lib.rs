//! Ferrite's domain: device ids, the MQTT topic contract and reading payloads.
//!
//! # Layout
//! - [`device`]: [`DeviceId`], the validated identifier every other part keys on.
//! - [`topic`]: what a topic means under the contract of DESIGN.md ([`Topic::parse`]), and MQTT topic-filter
//!   matching ([`filter_matches`], [`filter_covers`]).
//! - [`limits`]: the maximum MQTT packet size, shared by the broker and every client.
//! - [`payload`]: turning a reading's payload (plain number, JSON or protobuf) into [`Reading`]s.
//!
//! This crate does no I/O: it knows nothing of sockets, MQTT clients, sqlx or tonic,
//! so every service and test can share it and it stays cheap to fuzz and benchmark.

pub mod alert;
pub mod credentials;
pub mod device;
pub mod limits;
pub mod origin;
pub mod payload;
pub mod topic;

pub use alert::{AlertError, AlertMessage};
pub use credentials::Credentials;
pub use device::{DeviceId, InvalidDeviceId};
pub use payload::{CONTENT_TYPE_PROTOBUF, PayloadError, Presence, Reading, TimeWindow, parse_presence, parse_readings};
pub use topic::{Topic, filter_covers, filter_matches};
