//! [`Platform`]: what a service's integration tests start around the code under test: a fresh database, a broker,
//! and the services' tasks under one shutdown token, stopped together (and checked to have stopped cleanly).
//!
//! The builder knows no service: each test suite binds its own services (the registry with its extension, an
//! ingester, a gateway) with the platform's pool and broker URL and hands their `run` futures to
//! [`Platform::spawn`]. The broker is one part behind a seam
//! ([`PlatformBroker`], [`start_broker`]) that can change without touching the suites.

use std::future::Future;

use anyhow::Context;
use ferrite_mqtt::BrokerUrl;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use ferrite_testkit::{TestDb, WAIT_DEADLINE, init_test_tracing};

// ---- The broker part: the one place that says which broker the platform runs. ----

/// The broker a [`Platform`] runs (the embedded one, in this process).
pub type PlatformBroker = crate::TestBroker;

/// Starts the platform's broker on loopback port 0.
async fn start_broker() -> anyhow::Result<PlatformBroker> {
    crate::TestBroker::start().await.context("cannot start the test broker")
}

/// Stops the platform's broker and waits until its listeners are closed.
async fn stop_broker(broker: PlatformBroker) {
    broker.stop().await;
}

/// `mqtt://host:port` of the platform's broker, for the services and test clients.
fn broker_url(broker: &PlatformBroker) -> BrokerUrl {
    broker.url()
}

// ---- The platform. ----

/// What a [`Platform`] starts.
#[derive(Debug, Default, Clone, Copy)]
#[must_use = "a builder does nothing until started"]
pub struct PlatformBuilder {
    database: bool,
    broker: bool,
}

impl PlatformBuilder {
    /// A fresh migrated database ([`TestDb`]).
    pub fn with_database(mut self) -> Self {
        self.database = true;
        self
    }

    /// A broker on loopback port 0.
    pub fn with_broker(mut self) -> Self {
        self.broker = true;
        self
    }

    /// Starts the database and the broker asked for; services are added with [`Platform::spawn`].
    pub async fn start(self) -> anyhow::Result<Platform> {
        init_test_tracing();
        let db = if self.database { Some(TestDb::new().await?) } else { None };
        let broker = if self.broker { Some(start_broker().await?) } else { None };
        Ok(Platform { db, broker, shutdown: CancellationToken::new(), tasks: Vec::new() })
    }
}

type ServiceTask = JoinHandle<anyhow::Result<()>>;

/// A database, a broker and services for one test; everything stops when it is dropped, and
/// [`Platform::stop`] also checks that every service stopped cleanly.
pub struct Platform {
    db: Option<TestDb>,
    broker: Option<PlatformBroker>,
    shutdown: CancellationToken,
    tasks: Vec<(&'static str, ServiceTask)>,
}

impl Platform {
    pub fn builder() -> PlatformBuilder {
        PlatformBuilder::default()
    }

    /// The test's database. Panics if the platform was built without one (a mistake in the test).
    pub fn db(&self) -> &TestDb {
        self.db.as_ref().expect("the platform was built without with_database()")
    }

    pub fn pool(&self) -> &PgPool {
        self.db().pool()
    }

    /// The broker. Panics if the platform was built without one (a mistake in the test).
    pub fn broker(&self) -> &PlatformBroker {
        self.broker.as_ref().expect("the platform was built without with_broker()")
    }

    pub fn broker_url(&self) -> BrokerUrl {
        broker_url(self.broker())
    }

    /// The token that stops the platform's services; give it (or a child) to a service's `run`.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Runs a service's `run(shutdown)` future as one of the platform's tasks, named for error messages.
    pub fn spawn<E>(&mut self, name: &'static str, service: impl Future<Output = Result<(), E>> + Send + 'static)
    where
        E: Into<anyhow::Error> + 'static,
    {
        let task = tokio::spawn(async move { service.await.map_err(Into::into) });
        self.tasks.push((name, task));
    }

    /// Stops every service (in the reverse order of spawning, all under the same token), checks each stopped
    /// cleanly within [`WAIT_DEADLINE`], then stops the broker.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let mut result = Ok(());
        while let Some((name, task)) = self.tasks.pop() {
            let stopped = match tokio::time::timeout(WAIT_DEADLINE, task).await {
                Err(_) => Err(anyhow::anyhow!("{name} did not stop within {WAIT_DEADLINE:?}")),
                Ok(Err(error)) => Err(anyhow::Error::new(error).context(format!("{name} panicked"))),
                Ok(Ok(ran)) => ran.with_context(|| format!("{name} failed")),
            };
            if result.is_ok() {
                result = stopped;
            }
        }
        if let Some(broker) = self.broker.take() {
            stop_broker(broker).await;
        }
        result
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stops_its_services_and_reports_a_failure() -> anyhow::Result<()> {
        let mut platform = Platform::builder().start().await?;
        let token = platform.shutdown().clone();
        platform.spawn("clean", async move {
            token.cancelled().await;
            anyhow::Ok(())
        });
        platform.stop().await?;

        let mut platform = Platform::builder().start().await?;
        platform.spawn("failing", async { Err(std::io::Error::other("boom")) });
        let error = platform.stop().await.expect_err("a failed service is reported");
        assert_eq!(format!("{error:#}"), "failing failed: boom");
        Ok(())
    }
}
