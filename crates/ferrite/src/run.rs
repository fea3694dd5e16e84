//! One function per subcommand: bind every socket first, print where things listen, run, then drain.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use ferrite_broker::Broker;
use ferrite_fleet::Fleet;
use ferrite_ingester::Ingester;
use ferrite_mqtt::BrokerUrl;
use ferrite_registry::{
    AuthorizerConfig, NewDevice, Registry, RegistryAuthorizer, RegistryError, RegistryService, ServiceAccount,
    ServiceRole,
};
use ferrite_telemetry::MetricsServer;
use secrecy::ExposeSecret;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::apis::{self, PlatformApis};
use crate::cli::{BrokerArgs, Cli, Command, FleetArgs, GatewayArgs, IngesterArgs, MigrateArgs, RegistryArgs, UpArgs};
use crate::database::Database;
use crate::shutdown;

/// How long `ferrite up` waits for the ingester's subscription before starting the fleet,
/// so that the fleet's first readings are not published to nobody.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let _telemetry = ferrite_telemetry::init("ferrite")?;
    match cli.command {
        Command::Up(args) => up(args).await,
        Command::Broker(args) => broker(args).await,
        Command::Ingester(args) => ingester(args).await,
        Command::Fleet(args) => fleet(args).await,
        Command::Gateway(args) => gateway(args).await,
        Command::Registry(args) => registry(args).await,
        Command::Device(args) => ferrite_registry::cli::run_device_command(args, &mut std::io::stdout()).await,
        Command::Token(args) => ferrite_registry::cli::run_token_command(args, &mut std::io::stdout()).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Bench(args) => bench(args).await,
    }
}

/// A fresh secret for an in-process service account: 256 random bits from the OS generator (via UUID v4).
fn random_secret() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// Fleet devices get their own credentials from the in-process registry: created on first use,
/// rotated on later runs (the secret is only ever shown once, so a new run needs a new one).
struct RegistryProvisioner(RegistryService);

impl ferrite_fleet::Provisioner for RegistryProvisioner {
    fn credentials<'a>(&'a self, device_id: &'a str) -> ferrite_fleet::ProvisionFuture<'a> {
        Box::pin(async move {
            let new = NewDevice {
                id: device_id.to_owned(),
                name: Some(format!("Simulated {device_id}")),
                tags: vec!["simulated".into()],
                metadata: serde_json::Value::Null,
            };
            let issued = match self.0.create_device(new).await {
                Ok((_, issued)) => issued,
                Err(RegistryError::DeviceExists(_)) => self.0.rotate_credentials(device_id).await?,
                Err(error) => return Err(error.into()),
            };
            Ok((issued.device_id, issued.secret.expose_secret().to_owned()))
        })
    }
}

/// The broker's authorizer over the registry: anonymous clients only while the broker is on loopback
/// (Mosquitto 2's rule) or when the user insisted.
fn registry_authorizer(
    service: RegistryService,
    broker: &ferrite_broker::Config,
    allow_anonymous: bool,
    services: Vec<ferrite_registry::ServiceAccount>,
) -> anyhow::Result<Arc<RegistryAuthorizer>> {
    let loopback = ferrite_registry::all_loopback([broker.mqtt_addr].into_iter().chain(broker.ws_addr));
    if allow_anonymous && !loopback {
        tracing::warn!("--allow-anonymous: ANY client that reaches the broker may connect, publish and subscribe");
    }
    let config = AuthorizerConfig { allow_anonymous: loopback || allow_anonymous, services };
    Ok(Arc::new(RegistryAuthorizer::new(service, config)?))
}

type Task = JoinHandle<anyhow::Result<()>>;

/// Runs a service to its end on a task of its own, its error as an `anyhow` one.
fn spawn_stage<E: Into<anyhow::Error>>(run: impl Future<Output = Result<(), E>> + Send + 'static) -> Task {
    tokio::spawn(async move { run.await.map_err(Into::into) })
}

/// The URL our own clients use to reach a broker bound on `addr` (a wildcard bind is reached on loopback).
fn local_url(addr: SocketAddr) -> BrokerUrl {
    let host = if addr.ip().is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { addr.ip() };
    BrokerUrl::Tcp { host: host.to_string(), port: addr.port() }
}

/// The accounts `ferrite up`'s own services log in with; their secrets live only in this process.
struct ServiceLogins {
    ingester: (String, String),
    gateway: (String, String),
    api: (String, String),
    accounts: Vec<ServiceAccount>,
}

impl ServiceLogins {
    fn new() -> ServiceLogins {
        let login = |role: ServiceRole| (role.username(), random_secret());
        let (ingester, gateway, api) =
            (login(ServiceRole::Ingester), login(ServiceRole::Gateway), login(ServiceRole::Api));
        let accounts = vec![
            ServiceAccount::new(ServiceRole::Ingester, ingester.1.clone()),
            ServiceAccount::new(ServiceRole::Gateway, gateway.1.clone()),
            ServiceAccount::new(ServiceRole::Api, api.1.clone()),
        ];
        ServiceLogins { ingester, gateway, api, accounts }
    }
}

/// The gateway of `ferrite up`: on the platform's broker with its own account, the dashboard pointed at the registry's
/// REST port, and browser publishes judged by API token.
fn up_gateway_config(
    args: &UpArgs,
    mqtt_addr: SocketAddr,
    login: (String, String),
    rest_addr: SocketAddr,
    service: &RegistryService,
) -> ferrite_gateway::Config {
    let mut config = ferrite_gateway::Config::new(local_url(mqtt_addr));
    config.http_addr = args.http_addr;
    args.browsers.apply(&mut config);
    config.credentials = Some(login);
    config.api = Some(dashboard_api(rest_addr));
    config.publish_policy =
        Arc::new(crate::policy::TokenPolicy::new(service.clone(), args.http_addr, args.api.allow_anonymous));
    config
}

/// `ferrite up`'s running stages, each with the token that stops it.
struct Running {
    fleet: (CancellationToken, Option<Task>),
    ingester: (CancellationToken, Task),
    http: (CancellationToken, Task),
    registry: (CancellationToken, Task),
    api_tasks: apis::ApiTasks,
    retention: (CancellationToken, Vec<JoinHandle<()>>),
    broker: (CancellationToken, Task),
}

impl Running {
    /// Stops in the order data flows, so each stage drains into a live next one: devices finish and say goodbye,
    /// the ingester commits and acknowledges, then the HTTP side, the APIs and the broker go.
    async fn stop_in_order(self) {
        let Running { fleet, ingester, http, registry, api_tasks, retention, broker } = self;
        fleet.0.cancel();
        if let Some(task) = fleet.1 {
            shutdown::join("fleet", task).await;
        }
        ingester.0.cancel();
        if !ingester.1.is_finished() {
            shutdown::join("ingester", ingester.1).await;
        }
        http.0.cancel();
        shutdown::join("gateway", http.1).await;
        registry.0.cancel();
        shutdown::join("registry", registry.1).await;
        api_tasks.stop().await;
        retention.0.cancel();
        for task in retention.1 {
            let _ = task.await;
        }
        broker.0.cancel();
        if !broker.1.is_finished() {
            shutdown::join("broker", broker.1).await;
        }
    }
}

/// Where `ferrite up` listens, as its banner says.
struct Banner {
    mqtt_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    ws_addr: Option<SocketAddr>,
    rest_addr: SocketAddr,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
}

impl Banner {
    fn print(&self, database: &str) {
        let Banner { mqtt_addr, tls_addr, ws_addr, rest_addr, grpc_addr, http_addr } = self;
        say!("Ferrite is running");
        say!("  MQTT            mqtt://{mqtt_addr}");
        if let Some(tls) = tls_addr {
            say!("  MQTT/TLS        mqtts://{tls}");
        }
        if let Some(ws) = ws_addr {
            say!("  MQTT/WebSocket  ws://{ws}/mqtt");
        }
        say!("  Registry REST   http://{rest_addr}/api/v1/devices  (OpenAPI: http://{rest_addr}/openapi.json)");
        say!("  Registry gRPC   http://{grpc_addr}  (reflection on)");
        say!(
            "  Telemetry API   http://{rest_addr}/api/v1/devices/{{id}}/telemetry  (and /latest, /commands; /api/v1/rules, /api/v1/alerts)"
        );
        say!("  Metrics         http://{http_addr}/metrics  (readiness: http://{http_addr}/readyz)");
        say!("  PostgreSQL      {database}");
        say!("  Live WebSocket  ws://{http_addr}/dashboard");
    }
}

/// Waits (at most [`SUBSCRIBE_WAIT`]) until the ingester's sessions are subscribed, so readings sent right after the banner are stored.
async fn wait_for_ingester(stats: &ferrite_ingester::Stats) {
    let waited = tokio::time::Instant::now();
    while !stats.subscribed.load(Ordering::Relaxed) && waited.elapsed() < SUBSCRIBE_WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !stats.subscribed.load(Ordering::Relaxed) {
        tracing::warn!("the ingester has not subscribed yet; readings published before it does are not stored");
    }
}

/// Starts the simulated fleet and returns once its devices are connected (at most [`SUBSCRIBE_WAIT`]), so that a command
/// sent right after "Press Ctrl-C" finds them.
async fn start_fleet(
    config: ferrite_fleet::Config,
    devices: usize,
    clients: &ferrite_broker::Clients,
    stop: &CancellationToken,
) -> anyhow::Result<Task> {
    say!(
        "  Fleet           {} devices, {} .. {}, a reading per metric every {}",
        devices,
        config.device_id(0),
        config.device_id(devices - 1),
        humantime::format_duration(config.interval)
    );
    let device_ids: Vec<String> = (0..devices).map(|index| config.device_id(index)).collect();
    let fleet = Fleet::bind(config)?;
    let task = tokio::spawn(fleet.run(stop.clone()));
    wait_until_connected(clients, device_ids, SUBSCRIBE_WAIT).await;
    Ok(task)
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal();
    std::fs::create_dir_all(&args.data.data_dir)
        .with_context(|| format!("cannot create the data directory {}", args.data.data_dir.display()))?;
    let database = Database::open(args.database_url.as_deref(), &args.data.data_dir).await?;

    let ServiceLogins { ingester: ingester_login, gateway: gateway_login, api: api_login, accounts } =
        ServiceLogins::new();
    let service = RegistryService::new(database.pool.clone());
    let mut broker_config = args.listen.broker_config(&args.data);
    broker_config.allowed_origins = args.browsers.allowed_origins.clone();
    broker_config.authorizer =
        registry_authorizer(service.clone(), &broker_config, args.api.allow_anonymous, accounts)?;
    let broker = Broker::bind(broker_config).await.context("cannot start the broker")?;
    // Deleting or rotating a device closes its live connections; commands ask the broker who is connected.
    service.set_device_connections(Arc::new(apis::BrokerConnections(broker.clients())));
    let clients = broker.clients();
    let presence: Arc<dyn ferrite_commands::Presence> = Arc::new(apis::BrokerPresence(clients.clone()));
    let provisioner = Arc::new(RegistryProvisioner(service.clone()));
    let registry = Registry::bind_service(args.api.registry_config(), service.clone())
        .await
        .context("cannot start the registry")?;
    let mqtt_addr = broker.mqtt_addr();
    let stop_registry = CancellationToken::new();
    let guard = registry.api_guard();
    let apis = PlatformApis::bind(
        &database.pool,
        local_url(mqtt_addr),
        Some(api_login),
        guard,
        stop_registry.clone(),
        Some(presence),
        args.ingest.time_window(),
    )
    .await?;
    let (extension, api_tasks) = apis.start();
    let registry = registry.with_extension(extension);
    let gateway_config = up_gateway_config(&args, mqtt_addr, gateway_login, registry.rest_addr(), &service);
    let http = ferrite_gateway::Gateway::bind(gateway_config).await.context("cannot start the gateway")?;
    // The dashboard on the gateway's port calls the REST API on the registry's (CORS).
    let registry = registry.with_browser_origins(args.browsers.allowed_origins.clone(), [http.local_addr().port()]);
    let ws_addr = broker.ws_addr();
    let tls_addr = broker.tls_addr();
    let (grpc_addr, rest_addr) = (registry.grpc_addr(), registry.rest_addr());
    let broker_url = local_url(mqtt_addr);
    let ingester =
        Ingester::bind(args.ingest.config(broker_url.clone(), Some(ingester_login)), database.pool.clone()).await?;
    let ingest_stats = ingester.stats();
    let _ready = [
        crate::ready::database(&database.pool),
        crate::ready::ingester(ingest_stats.clone()),
        crate::ready::mqtt("gateway_mqtt", http.mqtt_status()),
    ];
    let http_addr = http.local_addr();
    let stop_retention = CancellationToken::new();
    let retention = apis::start_retention(&args.retention, &database.pool, &stop_retention)?;

    let stop_broker = CancellationToken::new();
    let stop_ingester = CancellationToken::new();
    let stop_fleet = CancellationToken::new();
    let stop_http = CancellationToken::new();
    let mut broker_task: Task = spawn_stage(broker.run(stop_broker.clone()));
    let mut ingester_task: Task = tokio::spawn(ingester.run(stop_ingester.clone()));
    let http_task: Task = spawn_stage(http.run(stop_http.clone()));
    let registry_task: Task = spawn_stage(registry.run(stop_registry.clone()));

    wait_for_ingester(&ingest_stats).await;
    let banner = Banner { mqtt_addr, tls_addr, ws_addr, rest_addr, grpc_addr, http_addr };
    banner.print(&database.description);
    let fleet_task = if args.fleet > 0 {
        let mut config = args.sim.config(broker_url, args.fleet, None);
        config.provisioner = Some(provisioner);
        Some(start_fleet(config, args.fleet, &clients, &stop_fleet).await?)
    } else {
        None
    };
    say!("Dashboard: http://{http_addr}/");
    say!("Press Ctrl-C to stop.");

    tokio::select! {
        _ = shutdown.cancelled() => {}
        result = &mut broker_task => {
            tracing::error!(?result, "the broker stopped unexpectedly; shutting down");
        }
        result = &mut ingester_task => {
            tracing::error!(?result, "the ingester stopped unexpectedly; shutting down");
        }
    }

    let running = Running {
        fleet: (stop_fleet, fleet_task),
        ingester: (stop_ingester, ingester_task),
        http: (stop_http, http_task),
        registry: (stop_registry, registry_task),
        api_tasks,
        retention: (stop_retention, retention),
        broker: (stop_broker, broker_task),
    };
    running.stop_in_order().await;
    database.close().await;
    say!("Ferrite stopped: {} readings stored this run.", ingest_stats.stored());
    Ok(())
}

/// Where the dashboard finds the REST API of a registry bound on `rest`: on a loopback or wildcard address, the
/// registry's port on whatever name the browser reached the gateway by; on a specific address, that address.
fn dashboard_api(rest: SocketAddr) -> ferrite_gateway::ApiLocation {
    let url = format!("http://{rest}").parse::<ferrite_gateway::ApiUrl>();
    match url {
        Ok(url) if !(rest.ip().is_loopback() || rest.ip().is_unspecified()) => ferrite_gateway::ApiLocation::Url(url),
        _ => ferrite_gateway::ApiLocation::Port(rest.port()),
    }
}

/// Waits, at most `limit`, until a client is connected at the broker under each of `client_ids`.
async fn wait_until_connected(clients: &ferrite_broker::Clients, mut client_ids: Vec<String>, limit: Duration) {
    let started = tokio::time::Instant::now();
    while !client_ids.is_empty() && started.elapsed() < limit {
        let mut waiting = Vec::with_capacity(client_ids.len());
        for id in client_ids {
            if !clients.is_connected(&id).await {
                waiting.push(id);
            }
        }
        client_ids = waiting;
        if !client_ids.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if !client_ids.is_empty() {
        tracing::warn!(waiting = client_ids.len(), "some fleet devices have not connected yet");
    }
}

async fn broker(args: BrokerArgs) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal();
    let mut config = args.listen.broker_config(&args.data);
    config.allowed_origins = args.allowed_origins.clone();
    let mut _ready = None;
    match &args.database_url {
        Some(url) => {
            let options = url.parse().context("DATABASE_URL is not a valid PostgreSQL URL")?;
            let pool = ferrite_db::connect(options).await.context("cannot connect to PostgreSQL")?;
            // The broker authenticates every client against the database: without it, nobody can log in.
            _ready = Some(crate::ready::database(&pool));
            let service = RegistryService::new(pool);
            config.authorizer = registry_authorizer(service, &config, args.allow_anonymous, args.secrets.accounts())?;
        }
        None if args.allow_anonymous => {
            tracing::warn!(
                "--allow-anonymous without DATABASE_URL: ANY client that reaches the broker may do anything"
            );
        }
        None => tracing::info!("no DATABASE_URL: anonymous clients only, on loopback"),
    }
    let broker = Broker::bind(config).await.context("cannot start the broker")?;
    let metrics = MetricsServer::bind(args.metrics_addr).await?;
    say!("MQTT            mqtt://{}", broker.mqtt_addr());
    if let Some(tls) = broker.tls_addr() {
        say!("MQTT/TLS        mqtts://{tls}");
    }
    if let Some(ws) = broker.ws_addr() {
        say!("MQTT/WebSocket  ws://{ws}/mqtt");
    }
    say!("Metrics         http://{}/metrics  (readiness: /readyz)", metrics.local_addr());
    let metrics_task = tokio::spawn(metrics.run(shutdown.clone()));
    broker.run(shutdown).await?;
    shutdown::join("metrics", metrics_task).await;
    Ok(())
}

async fn ingester(args: IngesterArgs) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal();
    let options = args.database_url.parse().context("DATABASE_URL is not a valid PostgreSQL URL")?;
    let pool = ferrite_db::connect(options).await.context("cannot connect to PostgreSQL")?;
    let config = args.ingest.config(args.client.broker_url.clone(), args.client.credentials());
    let ingester = Ingester::bind(config, pool.clone())
        .await
        .context("the database is not ready for the ingester (has `ferrite migrate` run?)")?;
    let _ready = [crate::ready::database(&pool), crate::ready::ingester(ingester.stats())];
    // Every ingester may run retention: dropping a partition is idempotent and the rollup takes a lock.
    let retention = apis::start_retention(&args.retention, &pool, &shutdown)?;
    let metrics = MetricsServer::bind(args.metrics_addr).await?;
    say!(
        "Ingesting from {} into PostgreSQL; metrics on http://{}/metrics",
        args.client.broker_url,
        metrics.local_addr()
    );
    let metrics_task = tokio::spawn(metrics.run(shutdown.clone()));
    ingester.run(shutdown).await?;
    shutdown::join("metrics", metrics_task).await;
    for task in retention {
        let _ = task.await;
    }
    Ok(())
}

async fn fleet(args: FleetArgs) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal();
    let config = args.sim.config(args.client.broker_url.clone(), args.devices, args.client.credentials());
    let fleet = Fleet::bind(config)?;
    let metrics = MetricsServer::bind(args.metrics_addr).await?;
    let stats = fleet.stats();
    let metrics_task = tokio::spawn(metrics.run(shutdown.clone()));
    fleet.run(shutdown.clone()).await?;
    shutdown.cancel();
    shutdown::join("metrics", metrics_task).await;
    say!(
        "fleet: {} readings sent, {} still unacknowledged at exit",
        stats.readings.load(Ordering::Relaxed),
        stats.unacknowledged.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal();
    let mut config = ferrite_gateway::Config::new(args.client.broker_url.clone());
    config.http_addr = args.http_addr;
    config.credentials = args.client.credentials();
    config.api = Some(args.api());
    args.browsers.apply(&mut config);
    let mut _ready_database = None;
    if let Some(url) = &args.database_url {
        let options = url.parse().context("DATABASE_URL is not a valid PostgreSQL URL")?;
        let pool = ferrite_db::connect(options).await.context("cannot connect to PostgreSQL")?;
        // Browsers' tokens are checked against it.
        _ready_database = Some(crate::ready::database(&pool));
        config.publish_policy =
            Arc::new(crate::policy::TokenPolicy::new(RegistryService::new(pool), args.http_addr, args.allow_anonymous));
    }
    let gateway = ferrite_gateway::Gateway::bind(config).await.context("cannot start the gateway")?;
    let _ready_mqtt = crate::ready::mqtt("gateway_mqtt", gateway.mqtt_status());
    say!("Dashboard       http://{}/", gateway.local_addr());
    say!("Live WebSocket  ws://{}/dashboard", gateway.local_addr());
    gateway.run(shutdown).await?;
    Ok(())
}

async fn registry(args: RegistryArgs) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal();
    let options = args.database_url.parse().context("DATABASE_URL is not a valid PostgreSQL URL")?;
    let pool = ferrite_db::connect(options).await.context("cannot connect to PostgreSQL")?;
    let registry =
        Registry::bind(args.api.registry_config(), pool.clone()).await.context("cannot start the registry")?;
    let _ready = crate::ready::database(&pool);
    let guard = registry.api_guard();
    // An external broker: presence from the `presence` table, and deleted devices keep their live connections.
    let apis = PlatformApis::bind(
        &pool,
        args.client.broker_url.clone(),
        args.client.credentials(),
        guard,
        shutdown.clone(),
        None,
        ferrite_core::TimeWindow::default(),
    )
    .await?;
    let (extension, api_tasks) = apis.start();
    let registry = registry.with_extension(extension).with_browser_origins(args.allowed_origins.clone(), []);
    say!("Registry REST   http://{}/api/v1/devices", registry.rest_addr());
    say!("Registry gRPC   http://{}", registry.grpc_addr());
    say!("Rules, alerts, commands and live telemetry through {}", args.client.broker_url);
    let result = registry.run(shutdown).await;
    api_tasks.stop().await;
    result?;
    Ok(())
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let database = Database::open(args.database_url.as_deref(), &args.data.data_dir).await?;
    say!("migrations applied: {}", database.description);
    database.close().await;
    Ok(())
}

/// `ferrite bench`: the load generator prints its own table (and JSON with --json).
async fn bench(args: ferrite_bench::BenchArgs) -> anyhow::Result<()> {
    ferrite_bench::run(args).await
}
