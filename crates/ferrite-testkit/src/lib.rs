//! Test fixtures for Ferrite over libraries only: a fresh migrated PostgreSQL database per test, a real Mosquitto, and quiet
//! tracing unless asked. The embedded broker and the `Platform` around it (which starts one) are in `ferrite-testkit-broker`,
//! since they build the broker service; a suite that needs neither does not build it.
//!
//! # Layout
//!
//! - `db.rs`: [`TestDb`], a UUID-named database with the migrations applied, on the server of `DATABASE_URL`
//!   or on a private cluster that this test process starts once and that dies with it.
//! - `logging.rs`: [`init_test_tracing`], which prints logs only when `TEST_LOG` is set.
//! - `mosquitto.rs`: [`TestMosquitto`], a real Mosquitto on a free port, to prove the services are broker-agnostic.
//! - `wait.rs`: [`wait_for`], polling for an outcome with a generous deadline instead of asserting timings.
//!
//! Test helpers return `anyhow::Result`, so a failing fixture says what it was doing.

mod db;
mod http;
mod logging;
mod mosquitto;
mod wait;

pub use db::TestDb;
pub use http::{HttpResponse, http_request};
pub use logging::init_test_tracing;
pub use mosquitto::TestMosquitto;
pub use wait::{WAIT_DEADLINE, wait_for};

/// Loopback port 0: the address every listener of a test binds, so tests never collide on ports.
pub const LOOPBACK: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);
