//! What `/readyz` checks for each subcommand: the database answers `SELECT 1` (cached for
//! [`ferrite_db::READY_CACHE`]), and each MQTT session is connected with its subscriptions answered (SUBACK).
//! The checks live as long as their guards; the composing function keeps them for the life of its services.

use std::sync::Arc;

use ferrite_mqtt::SessionStatus;
use ferrite_telemetry::{CheckGuard, readiness};
use sqlx::PgPool;

/// The database answers.
pub fn database(pool: &PgPool) -> CheckGuard {
    let pool = pool.clone();
    readiness().add_cached("database", ferrite_db::READY_CACHE, move || {
        let pool = pool.clone();
        async move { ferrite_db::ping(&pool).await }
    })
}

/// One MQTT session is connected and subscribed.
pub fn mqtt(name: &str, status: SessionStatus) -> CheckGuard {
    readiness().add(name, move || std::future::ready(status.check()))
}

/// Every session of the ingester is connected and subscribed.
pub fn ingester(stats: Arc<ferrite_ingester::Stats>) -> CheckGuard {
    readiness().add("ingester_mqtt", move || std::future::ready(stats.sessions_ready()))
}
