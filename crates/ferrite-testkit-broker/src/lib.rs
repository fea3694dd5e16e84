//! Test fixtures that start Ferrite's embedded broker: [`TestBroker`] (loopback port 0, its own data directory) and
//! [`Platform`] (a database, that broker and the suite's service tasks, stopped together).
//!
//! Apart from `ferrite-testkit` because they build the broker service: the shared fixtures depend on libraries only,
//! and only the suites that start a broker depend on this crate (as a dev-dependency).
//!
//! # Layout
//! - `broker.rs`: [`TestBroker`].
//! - `platform.rs`: [`Platform`], [`PlatformBuilder`], and the seam [`PlatformBroker`] that says which broker it runs.

mod broker;
mod platform;

pub use broker::TestBroker;
pub use ferrite_testkit::LOOPBACK;
pub use platform::{Platform, PlatformBroker, PlatformBuilder};
