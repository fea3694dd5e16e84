//! Test fixtures for Ferrite: a fresh migrated PostgreSQL database per test, an embedded broker, and quiet tracing unless asked.
//!
//! # Layout
//!
//! - `db.rs`: [`TestDb`], a UUID-named database with the migrations applied, on the server of `DATABASE_URL`
//!   or on a private cluster that this test process starts once and that dies with it.
//! - `logging.rs`: [`init_test_tracing`], which prints logs only when `TEST_LOG` is set.
//! - `broker.rs`: [`TestBroker`], the embedded broker on loopback port 0 with its own data directory.
//! - `mosquitto.rs`: [`TestMosquitto`], a real Mosquitto on a free port, to prove the services are broker-agnostic.
//! - `platform.rs`: [`Platform`], the database, broker and service tasks a suite starts around its services,
//!   stopped together; services are bound by the suites, so testkit knows none.
//! - `wait.rs`: [`wait_for`], polling for an outcome with a generous deadline instead of asserting timings.
//!
//! Test helpers return `anyhow::Result`, so a failing fixture says what it was doing.

mod broker;
mod db;
mod http;
mod logging;
mod mosquitto;
mod platform;
mod wait;

pub use broker::TestBroker;
pub use db::TestDb;
pub use http::{HttpResponse, http_request};
pub use logging::init_test_tracing;
pub use mosquitto::TestMosquitto;
pub use platform::{LOOPBACK, Platform, PlatformBroker, PlatformBuilder};
pub use wait::{WAIT_DEADLINE, wait_for};
