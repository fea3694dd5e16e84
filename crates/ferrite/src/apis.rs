//! The APIs served beside the registry on its ports (telemetry queries and live streams, rules and alerts, commands),
//! and the background work they need (the rules engine, the commands session, retention). Used by `ferrite up` and `ferrite registry`.

use std::sync::Arc;

use anyhow::Context;
use ferrite_api::{ApiExtension, ApiGuard};
use ferrite_mqtt::BrokerUrl;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cli::RetentionArgs;

type Task = JoinHandle<anyhow::Result<()>>;

/// The extension to mount on the registry, and the engines behind it, not yet running.
pub struct PlatformApis {
    pub extension: ApiExtension,
    rules: ferrite_rules::RulesEngine,
    commands: ferrite_commands::Commands,
}

/// The running engines; stop them after the registry has stopped serving.
pub struct ApiTasks {
    stop: CancellationToken,
    rules: Task,
    commands: Task,
}

impl PlatformApis {
    /// Connects the rules engine, the commands session and the live feed to `broker` as `login`
    /// (the `service:api` account). Live streams end when `stop_streams` is cancelled, so the registry can drain.
    /// `presence` says whether a device is connected (the embedded broker in `ferrite up`); without it the
    /// `presence` table does. `window` is the readings' time window, the ingester's in `ferrite up`, so the rules engine
    /// skips exactly what the ingester dead-letters.
    pub async fn bind(
        pool: &PgPool,
        broker: BrokerUrl,
        login: Option<(String, String)>,
        guard: ApiGuard,
        stop_streams: CancellationToken,
        presence: Option<Arc<dyn ferrite_commands::Presence>>,
        window: ferrite_core::TimeWindow,
    ) -> anyhow::Result<PlatformApis> {
        let live =
            ferrite_query::LiveFeed::start(ferrite_query::LiveConfig::new(broker.clone(), login.clone()), stop_streams);
        let telemetry = ferrite_query::Telemetry::new(pool.clone()).with_live(live);

        let mut commands_config = ferrite_commands::Config::new(broker.clone());
        commands_config.credentials = login.clone();
        commands_config.presence = presence;
        let commands = ferrite_commands::Commands::bind(commands_config, pool.clone())
            .context("cannot start the commands service")?;
        let command_service = commands.service();

        let mut rules_config = ferrite_rules::EngineConfig::new(broker);
        rules_config.credentials = login;
        rules_config.window = window;
        let rules = ferrite_rules::RulesEngine::bind(rules_config, pool.clone())
            .await
            .context("cannot start the rules engine (has `ferrite migrate` run?)")?;
        let rule_service = ferrite_rules::RulesService::new(pool.clone());

        let extension = ApiExtension::new()
            .rest(ferrite_rules::router(rule_service.clone()))
            .grpc(ferrite_rules::grpc(rule_service, guard.clone()))
            .openapi(ferrite_rules::openapi())
            .rest(ferrite_commands::router(command_service.clone()))
            .grpc(ferrite_commands::grpc(command_service, guard.clone()))
            .openapi(ferrite_commands::openapi());
        let extension = telemetry.extend(extension, guard);
        Ok(PlatformApis { extension, rules, commands })
    }

    /// Splits off the extension (for [`ferrite_registry::Registry::with_extension`]) and starts the engines.
    pub fn start(self) -> (ApiExtension, ApiTasks) {
        let PlatformApis { extension, rules, commands } = self;
        let stop = CancellationToken::new();
        let rules = tokio::spawn({
            let stop = stop.clone();
            async move { rules.run(stop).await.map_err(anyhow::Error::from) }
        });
        let commands = tokio::spawn({
            let stop = stop.clone();
            async move { commands.run(stop).await.map_err(anyhow::Error::from) }
        });
        (extension, ApiTasks { stop, rules, commands })
    }
}

impl ApiTasks {
    /// Stops the rules engine and the commands session; each lets its QoS 1 publishes be acknowledged first.
    pub async fn stop(self) {
        self.stop.cancel();
        crate::shutdown::join("rules engine", self.rules).await;
        crate::shutdown::join("commands", self.commands).await;
    }
}

/// The embedded broker's client table as the commands' presence source: a device is connected when a client
/// with its id as client id is, which the broker knows before the ingester has stored the device's `online`.
pub struct BrokerPresence(pub ferrite_broker::Clients);

impl ferrite_commands::Presence for BrokerPresence {
    fn is_connected<'a>(&'a self, device_id: &'a str) -> ferrite_commands::PresenceFuture<'a> {
        Box::pin(self.0.is_connected(device_id))
    }
}

/// The embedded broker's client table as the registry's way to close a deleted or rotated device's connections:
/// every client whose id the device may use (`{id}` or `{id}:suffix`).
pub struct BrokerConnections(pub ferrite_broker::Clients);

impl ferrite_registry::DeviceConnections for BrokerConnections {
    fn disconnect_device<'a>(&'a self, device_id: &'a str) -> ferrite_broker::BoxFuture<'a, usize> {
        let device_id = device_id.to_owned();
        Box::pin(self.0.disconnect_where(move |client_id| {
            ferrite_registry::authorizer::device_may_use_client_id(&device_id, client_id)
        }))
    }
}

/// Retention and the 1-minute rollup, when `--retention` is set; stopped by `shutdown`.
pub fn start_retention(
    args: &RetentionArgs,
    pool: &PgPool,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let Some(retention) = args.retention else { return Ok(Vec::new()) };
    let retention = ferrite_query::Retention::new(pool.clone(), retention, ferrite_query::DEFAULT_RETENTION_INTERVAL)?;
    let rollup =
        ferrite_query::Rollup::new(pool.clone(), ferrite_query::DEFAULT_ROLLUP_INTERVAL, args.rollup_retention)?;
    Ok(vec![tokio::spawn(retention.run(shutdown.clone())), tokio::spawn(rollup.run(shutdown.clone()))])
}
