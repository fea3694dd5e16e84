//! Test fixtures for Ferrite: a fresh migrated PostgreSQL database per test, and quiet tracing unless asked.
//!
//! # Layout
//!
//! - `db.rs`: [`TestDb`], a UUID-named database with the migrations applied, on the server of `DATABASE_URL`
//!   or on a private cluster that this test process starts once and that dies with it.
//! - `logging.rs`: [`init_test_tracing`], which prints logs only when `TEST_LOG` is set.
//!
//! Test helpers return `anyhow::Result`, so a failing fixture says what it was doing.

mod db;
mod logging;

pub use db::TestDb;
pub use logging::init_test_tracing;
