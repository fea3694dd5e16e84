//! PostgreSQL for Ferrite: the connection pool, the embedded migrations, and a private cluster for laptops and tests.
//!
//! Services get a pool with [`connect`], bring the schema up to date with [`migrate`],
//! and keep daily `readings` partitions ahead of time with [`ensure_partitions`].
//! Without a `DATABASE_URL`, `ferrite up` and the tests run their own server with [`PgCluster`].
//!
//! # Layout
//!
//! - `pool.rs`: [`connect`], [`migrate`] and [`ensure_partitions`], the calls every service makes.
//! - `cluster.rs`: [`PgCluster`], which runs `initdb` and `postgres` under a watchdog that stops the server when we die;
//!   `cluster/install.rs` finds the binaries, `cluster/account.rs` decides which OS user runs them,
//!   `cluster/pidfile.rs` reads `postmaster.pid`, and `cluster/watchdog.sh` is the watchdog.
//! - `retention.rs`: [`drop_expired_partitions`], which drops whole expired days of `readings`.
//! - `error.rs`: [`DbError`].
//! - The schema itself lives in the workspace's `migrations/` and is compiled into the binary.
//!
//! This crate knows nothing of MQTT, devices' payloads or services: it owns the database and nothing above it.

mod cluster;
mod error;
mod pool;
pub mod retention;

pub use cluster::{PgCluster, SHARED_BASE};
pub use error::DbError;
pub use pool::{
    ACQUIRE_TIMEOUT, MAX_CONNECTIONS, READY_CACHE, connect, ensure_partitions, migrate, ping, pool_options,
};
pub use retention::drop_expired_partitions;
