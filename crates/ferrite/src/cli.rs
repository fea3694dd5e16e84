//! The command line. Every option is also an environment variable (`FERRITE_...`, `DATABASE_URL`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ferrite_mqtt::{BrokerUrl, QoS};

/// Ferrite: an IoT platform in one binary. MQTT broker, ingester into PostgreSQL, simulated fleet.
#[derive(Parser, Debug)]
#[command(name = "ferrite", version, about, long_about = None, propagate_version = true)]
#[command(after_help = "Run the whole platform on this machine:  ferrite up --fleet 20\n\
                        Every option is also an environment variable, shown in [env: ...].")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start: the size of the largest variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run everything in one process: broker, ingester and (with --fleet) simulated devices.
    ///
    /// Without DATABASE_URL a private PostgreSQL runs under <data-dir>/postgres and stops on exit.
    Up(UpArgs),
    /// Run the MQTT broker alone (TCP and WebSocket).
    Broker(BrokerArgs),
    /// Run the ingester alone: MQTT readings into PostgreSQL (needs DATABASE_URL).
    Ingester(IngesterArgs),
    /// Run simulated devices against any MQTT broker.
    Fleet(FleetArgs),
    /// Run the live gateway alone: dashboard at /, WebSocket /dashboard, /metrics.
    Gateway(GatewayArgs),
    /// Run the device registry alone: gRPC and REST APIs (needs DATABASE_URL).
    Registry(RegistryArgs),
    /// Manage devices and their MQTT credentials through the registry's gRPC API.
    Device(ferrite_registry::cli::DeviceArgs),
    /// Manage API tokens for the REST and gRPC APIs.
    Token(ferrite_registry::cli::TokenArgs),
    /// Apply the database migrations (to DATABASE_URL, or the private cluster under --data-dir) and exit.
    Migrate(MigrateArgs),
    /// Benchmark any MQTT broker by URL (fan-in, fan-out, shared, idle) or the running platform (pipeline).
    Bench(ferrite_bench::BenchArgs),
}

/// The registry's listeners and access rules.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Registry gRPC (DeviceRegistry, ApiTokens, health, reflection).
    #[arg(long, env = "FERRITE_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// Registry REST API (/api/v1, /openapi.json).
    #[arg(long, env = "FERRITE_REST_ADDR", default_value = "127.0.0.1:8081")]
    pub rest_addr: SocketAddr,
    /// Allow anonymous MQTT clients and token-less API calls even on non-loopback addresses (not recommended).
    #[arg(long, env = "FERRITE_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
    /// Connections the REST and the gRPC listener each serve at once; further clients wait in the kernel's
    /// accept queue, so API clients never take the descriptors the broker needs.
    #[arg(long, env = "FERRITE_API_MAX_CONNECTIONS", default_value_t = ferrite_registry::DEFAULT_MAX_CONNECTIONS as u32,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub api_max_connections: u32,
}

impl ApiArgs {
    pub fn registry_config(&self) -> ferrite_registry::Config {
        ferrite_registry::Config {
            grpc_addr: self.grpc_addr,
            rest_addr: self.rest_addr,
            allow_anonymous: self.allow_anonymous,
            require_token: false,
            limits: ferrite_registry::ServerLimits { max_connections: self.api_max_connections as usize },
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Let browsers beyond loopback publish without a token.
    #[arg(long, env = "FERRITE_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
    /// Dashboard page /, live WebSocket /dashboard, /healthz and /metrics.
    #[arg(long, env = "FERRITE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    #[command(flatten)]
    pub browsers: BrowserArgs,
    /// The registry's PostgreSQL, to check browsers' API tokens; without it a gateway beyond loopback
    /// needs --allow-anonymous.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where the dashboard calls the REST API (history, commands, rules), e.g. http://registry.example.com:8081;
    /// by default port 8081 of the host the browser reached the gateway by. The registry must admit the
    /// dashboard's origin (`ferrite registry --allowed-origins http://<gateway host>:8080`).
    #[arg(long, env = "FERRITE_API_URL")]
    pub api_url: Option<ferrite_gateway::ApiUrl>,
}

impl GatewayArgs {
    /// Where the dashboard finds the REST API.
    pub fn api(&self) -> ferrite_gateway::ApiLocation {
        match &self.api_url {
            Some(url) => ferrite_gateway::ApiLocation::Url(url.clone()),
            None => ferrite_gateway::ApiLocation::Port(ferrite_registry::DEFAULT_REST_PORT),
        }
    }
}

/// Which browsers the gateway serves.
#[derive(Args, Debug, Clone)]
pub struct BrowserArgs {
    /// Origins of web pages served elsewhere that may open the /dashboard WebSocket (and, in `ferrite up`, the
    /// broker's /mqtt), comma separated, as the browser sends them: e.g. https://dash.example.com,http://localhost:3000.
    /// The dashboard served by the gateway itself and clients that send no Origin (scripts, mqtt.js in Node, Paho)
    /// need no entry; "null" admits file:// pages and sandboxed frames, "*" every page (not recommended).
    #[arg(long, env = "FERRITE_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<ferrite_gateway::AllowedOrigin>,
    /// Browsers served at once on /dashboard; one more is refused (503).
    #[arg(long, env = "FERRITE_MAX_BROWSERS", default_value_t = ferrite_gateway::DEFAULT_MAX_BROWSERS as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_browsers: u32,
}

impl BrowserArgs {
    /// Sets these on a gateway's configuration.
    pub fn apply(&self, config: &mut ferrite_gateway::Config) {
        config.allowed_origins = self.allowed_origins.clone();
        config.max_browsers = self.max_browsers as usize;
    }
}

#[derive(Args, Debug, Clone)]
pub struct RegistryArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The broker that commands, alerts and live telemetry streams go through (log in as `service:api`).
    #[command(flatten)]
    pub client: ClientArgs,
    /// PostgreSQL, e.g. postgres://user:password@host/ferrite.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Origins of web pages that may call the REST API from a browser (CORS), comma separated, as the browser
    /// sends them: the dashboard's gateway, e.g. http://gateway.example.com:8080. Pages served from the API's own
    /// address and clients that send no Origin (curl, SDKs) need no entry; "*" admits every page (not recommended).
    #[arg(long, env = "FERRITE_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<ferrite_gateway::AllowedOrigin>,
}

/// Service-account secrets for the platform's own MQTT clients (`service:<role>` usernames).
/// Its `Debug` says which secrets are set, never what they are.
#[derive(Args, Clone, Default)]
pub struct ServiceSecrets {
    /// Secret of the `service:ingester` MQTT account.
    #[arg(long, env = "FERRITE_SERVICE_SECRET_INGESTER", hide_env_values = true)]
    pub ingester_secret: Option<String>,
    /// Secret of the `service:gateway` MQTT account.
    #[arg(long, env = "FERRITE_SERVICE_SECRET_GATEWAY", hide_env_values = true)]
    pub gateway_secret: Option<String>,
    /// Secret of the `service:fleet` MQTT account.
    #[arg(long, env = "FERRITE_SERVICE_SECRET_FLEET", hide_env_values = true)]
    pub fleet_secret: Option<String>,
    /// Secret of the `service:api` MQTT account (the registry's rules engine, commands and live telemetry).
    #[arg(long, env = "FERRITE_SERVICE_SECRET_API", hide_env_values = true)]
    pub api_secret: Option<String>,
}

impl ServiceSecrets {
    /// The configured accounts; roles without a secret have no account.
    pub fn accounts(&self) -> Vec<ferrite_registry::ServiceAccount> {
        use ferrite_registry::{ServiceAccount, ServiceRole};
        [
            (ServiceRole::Ingester, &self.ingester_secret),
            (ServiceRole::Gateway, &self.gateway_secret),
            (ServiceRole::Fleet, &self.fleet_secret),
            (ServiceRole::Api, &self.api_secret),
        ]
        .into_iter()
        .filter_map(|(role, secret)| secret.as_ref().map(|secret| ServiceAccount::new(role, secret.clone())))
        .collect()
    }
}

/// Where `ferrite up` and `ferrite broker` keep their state.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Directory for the private PostgreSQL cluster and the broker's retained messages and sessions.
    #[arg(long, env = "FERRITE_DATA_DIR", default_value = "./.ferrite")]
    pub data_dir: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct ListenArgs {
    /// MQTT over TCP (3.1.1 and 5).
    #[arg(long, env = "FERRITE_MQTT_ADDR", default_value = "127.0.0.1:1883")]
    pub mqtt_addr: SocketAddr,
    /// MQTT over WebSocket, path /mqtt.
    #[arg(long, env = "FERRITE_WS_ADDR", default_value = "127.0.0.1:8083")]
    pub ws_addr: SocketAddr,
    /// Seconds a new connection has to send its CONNECT before it is closed.
    #[arg(long, env = "FERRITE_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// The longest a persistent session outlives its connection; a longer v5 Session Expiry Interval is clamped.
    #[arg(long, env = "FERRITE_MAX_SESSION_EXPIRY", default_value = "7d", value_parser = humantime::parse_duration)]
    pub max_session_expiry: Duration,
    /// Retained topics one device may set (anonymous clients together count as one); more are refused.
    #[arg(long, env = "FERRITE_MAX_RETAINED_PER_DEVICE", default_value_t = ferrite_broker::DEFAULT_MAX_RETAINED_PER_CLIENT)]
    pub max_retained_per_device: usize,
    /// When a QoS 1/2 message is acknowledged: "sync" once it is on disk (writes of all clients
    /// share each flush), or "periodic:<interval>" at once, flushing every interval (a crash loses at most that).
    #[arg(long, env = "FERRITE_BROKER_DURABILITY", default_value = "sync")]
    pub durability: ferrite_broker::native::Durability,
    /// MQTT over TLS (3.1.1 and 5), e.g. 0.0.0.0:8883; needs --tls-cert and --tls-key.
    #[arg(long, env = "FERRITE_MQTTS_ADDR", requires_all = ["tls_cert", "tls_key"])]
    pub mqtts_addr: Option<SocketAddr>,
    /// The TLS server certificate chain (PEM: the server certificate first, then intermediates).
    #[arg(long, env = "FERRITE_TLS_CERT", requires = "mqtts_addr")]
    pub tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "FERRITE_TLS_KEY", requires = "mqtts_addr")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct BrokerArgs {
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Prometheus /metrics and /healthz.
    #[arg(long, env = "FERRITE_METRICS_ADDR", default_value = "127.0.0.1:9100")]
    pub metrics_addr: SocketAddr,
    /// PostgreSQL of the registry: MQTT clients are then checked against its devices and credentials.
    /// Without it the broker accepts anonymous clients, which is allowed only on loopback (or with --allow-anonymous).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Allow anonymous MQTT clients on non-loopback addresses (not recommended).
    #[arg(long, env = "FERRITE_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
    #[command(flatten)]
    pub secrets: ServiceSecrets,
    /// Origins of web pages served elsewhere whose browsers may open the broker's MQTT WebSocket (/mqtt), comma
    /// separated, as the browser sends them: e.g. https://dash.example.com,http://localhost:3000. Pages served from
    /// the broker's own address and clients that send no Origin (mqtt.js in Node, Paho, scripts) need no entry;
    /// "null" admits file:// pages and sandboxed frames, "*" every page (not recommended). Others get 403.
    #[arg(long, env = "FERRITE_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<ferrite_gateway::AllowedOrigin>,
}

impl std::fmt::Debug for ServiceSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |secret: &Option<String>| if secret.is_some() { "<redacted>" } else { "<none>" };
        f.debug_struct("ServiceSecrets")
            .field("ingester_secret", &set(&self.ingester_secret))
            .field("gateway_secret", &set(&self.gateway_secret))
            .field("fleet_secret", &set(&self.fleet_secret))
            .field("api_secret", &set(&self.api_secret))
            .finish()
    }
}

/// How a service reaches the broker. Its `Debug` shows the username, never the password.
#[derive(Args, Clone)]
pub struct ClientArgs {
    /// The MQTT broker: mqtt://host:port or ws://host:port/mqtt. Any standard broker works.
    #[arg(long, env = "FERRITE_BROKER_URL", default_value = "mqtt://127.0.0.1:1883")]
    pub broker_url: BrokerUrl,
    /// MQTT username (service credentials), when the broker requires them.
    #[arg(long, env = "FERRITE_MQTT_USERNAME", requires = "mqtt_password")]
    pub mqtt_username: Option<String>,
    /// MQTT password; prefer the environment variable, which does not show in `ps`.
    #[arg(long, env = "FERRITE_MQTT_PASSWORD", hide_env_values = true, requires = "mqtt_username")]
    pub mqtt_password: Option<String>,
}

impl std::fmt::Debug for ClientArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientArgs")
            .field("broker_url", &self.broker_url)
            .field("mqtt_username", &self.mqtt_username)
            .field("mqtt_password", &self.mqtt_password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ClientArgs {
    pub fn credentials(&self) -> Option<(String, String)> {
        self.mqtt_username.clone().zip(self.mqtt_password.clone())
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum QosArg {
    #[value(name = "0")]
    Zero,
    #[value(name = "1")]
    One,
    #[value(name = "2")]
    Two,
}

impl From<QosArg> for QoS {
    fn from(qos: QosArg) -> QoS {
        match qos {
            QosArg::Zero => QoS::AtMostOnce,
            QosArg::One => QoS::AtLeastOnce,
            QosArg::Two => QoS::ExactlyOnce,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct IngestArgs {
    /// Client id of this ingester; the broker keeps its persistent session under it, so keep it stable.
    #[arg(long = "ingester-id", env = "FERRITE_INGESTER_ID", default_value = "ferrite-ingester")]
    pub client_id: String,
    /// Shared-subscription group ($share/<group>/...) that ingesters split the load in; "none" subscribes directly.
    #[arg(long, env = "FERRITE_SHARED_GROUP", default_value = "ingest")]
    pub shared_group: String,
    /// Subscription QoS.
    #[arg(long, env = "FERRITE_INGEST_QOS", default_value = "1")]
    pub ingest_qos: QosArg,
    /// Messages per database transaction at most.
    #[arg(long, env = "FERRITE_BATCH_SIZE", default_value_t = ferrite_ingester::DEFAULT_BATCH_SIZE,
          value_parser = clap::value_parser!(usize))]
    pub batch_size: usize,
    /// Longest a reading waits for its batch to fill (e.g. 50ms).
    #[arg(long, env = "FERRITE_BATCH_INTERVAL", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub batch_interval: Duration,
    /// MQTT sessions of this ingester on the shared group, receiving in parallel (1 to 64; 1 with --shared-group none).
    /// Their client ids are <ingester-id> and <ingester-id>-1, -2, ...; device status goes to the first only, to keep its order.
    /// Keep the number stable across restarts: a session left out keeps its queue at the broker until it expires (7 days).
    #[arg(long = "sessions", env = "FERRITE_INGEST_SESSIONS", default_value_t = ferrite_ingester::DEFAULT_SESSIONS)]
    pub sessions: usize,
    /// Largest reading payload in bytes; a larger one is stored as a dead letter (with a sample of it) and acknowledged.
    #[arg(long, env = "FERRITE_MAX_PAYLOAD", default_value_t = ferrite_ingester::DEFAULT_MAX_PAYLOAD)]
    pub max_payload: usize,
    /// Oldest reading time accepted, back from now (e.g. 365d); older readings become dead letters.
    #[arg(long, env = "FERRITE_MAX_READING_AGE", default_value = "365d", value_parser = humantime::parse_duration)]
    pub max_reading_age: Duration,
    /// Latest reading time accepted, ahead of now (e.g. 1d); later readings become dead letters.
    #[arg(long, env = "FERRITE_MAX_READING_SKEW", default_value = "1d", value_parser = humantime::parse_duration)]
    pub max_reading_skew: Duration,
    /// How long dead letters are kept (e.g. 30d); older ones are deleted hourly.
    #[arg(long, env = "FERRITE_DEAD_LETTER_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub dead_letter_retention: Duration,
}

/// How long stored readings are kept.
#[derive(Args, Debug, Clone)]
pub struct RetentionArgs {
    /// Drop raw readings older than this, a whole UTC day at a time (e.g. 30d; at least 2d); kept forever when unset.
    #[arg(long, env = "FERRITE_RETENTION", value_parser = humantime::parse_duration)]
    pub retention: Option<Duration>,
    /// With --retention: keep the 1-minute averages (which answer bucketed queries after raw readings are dropped) this long.
    #[arg(long, env = "FERRITE_ROLLUP_RETENTION", default_value = "1y", value_parser = humantime::parse_duration)]
    pub rollup_retention: Duration,
}

impl RetentionArgs {
    fn check(&self) -> anyhow::Result<()> {
        if let Some(retention) = self.retention {
            anyhow::ensure!(
                retention >= ferrite_query::retention::MIN_RETENTION,
                "--retention {} is too short: keep at least 2 days",
                humantime::format_duration(retention)
            );
            anyhow::ensure!(
                self.rollup_retention >= Duration::from_secs(24 * 3600),
                "--rollup-retention must be at least a day"
            );
        }
        Ok(())
    }
}

#[derive(Args, Debug, Clone)]
pub struct IngesterArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub ingest: IngestArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// PostgreSQL, e.g. postgres://user:password@host/ferrite.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Prometheus /metrics and /healthz.
    #[arg(long, env = "FERRITE_METRICS_ADDR", default_value = "127.0.0.1:9101")]
    pub metrics_addr: SocketAddr,
}

#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// Device ids are <prefix>-0001, <prefix>-0002, ...
    #[arg(long, env = "FERRITE_FLEET_PREFIX", default_value = "sim")]
    pub prefix: String,
    /// Number of the first device.
    #[arg(long, env = "FERRITE_FLEET_FIRST", default_value_t = 1)]
    pub first: usize,
    /// Time between readings of one device (e.g. 1s, 250ms).
    #[arg(long, env = "FERRITE_FLEET_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// QoS of the readings.
    #[arg(long, env = "FERRITE_FLEET_QOS", default_value = "1")]
    pub fleet_qos: QosArg,
    /// Readings per device and metric, then the device stops; unset runs until Ctrl-C.
    #[arg(long, env = "FERRITE_FLEET_COUNT")]
    pub count: Option<u64>,
    /// Probability per interval that a device drops its connection abruptly (its Last Will fires).
    #[arg(long, env = "FERRITE_FLEET_DROP_RATE", default_value_t = 0.0)]
    pub drop_rate: f64,
    /// Probability per interval that a device sends ten readings at once.
    #[arg(long, env = "FERRITE_FLEET_BURST_RATE", default_value_t = 0.0)]
    pub burst_rate: f64,
    /// Probability per interval that a device sends a payload that cannot be parsed.
    #[arg(long, env = "FERRITE_FLEET_BAD_PAYLOAD_RATE", default_value_t = 0.0)]
    pub bad_payload_rate: f64,
}

#[derive(Args, Debug, Clone)]
pub struct FleetArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// How many devices to simulate.
    #[arg(long, env = "FERRITE_FLEET_DEVICES", default_value_t = 10)]
    pub devices: usize,
    #[command(flatten)]
    pub sim: SimArgs,
    /// Prometheus /metrics and /healthz.
    #[arg(long, env = "FERRITE_METRICS_ADDR", default_value = "127.0.0.1:9102")]
    pub metrics_addr: SocketAddr,
}

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// Simulated devices to run alongside the platform.
    #[arg(long, env = "FERRITE_FLEET", default_value_t = 0)]
    pub fleet: usize,
    #[command(flatten)]
    pub sim: SimArgs,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub ingest: IngestArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Gateway: dashboard page /, live WebSocket /dashboard, /healthz and /metrics for the whole process.
    #[arg(long, env = "FERRITE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    #[command(flatten)]
    pub browsers: BrowserArgs,
    #[command(flatten)]
    pub api: ApiArgs,
    /// PostgreSQL to use instead of the private cluster.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct MigrateArgs {
    /// PostgreSQL to migrate; without it, the private cluster under --data-dir.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    #[command(flatten)]
    pub data: DataArgs,
}

impl Cli {
    /// Checks what clap cannot, so that bad configuration fails before anything binds.
    pub fn validate(&self) -> anyhow::Result<()> {
        match &self.command {
            Command::Up(args) => {
                check_sim(&args.sim)?;
                check_ingest(&args.ingest)?;
                args.retention.check()?;
                let addrs = [
                    args.listen.mqtt_addr,
                    args.listen.ws_addr,
                    args.http_addr,
                    args.api.grpc_addr,
                    args.api.rest_addr,
                ];
                for (idx, addr) in addrs.iter().enumerate() {
                    if addr.port() != 0 && addrs[..idx].contains(addr) {
                        anyhow::bail!("{addr} is configured for two listeners");
                    }
                }
                Ok(())
            }
            Command::Ingester(args) => {
                check_ingest(&args.ingest)?;
                args.retention.check()
            }
            Command::Fleet(args) => {
                anyhow::ensure!(args.devices > 0, "--devices must be at least 1");
                check_sim(&args.sim)
            }
            Command::Broker(args) => {
                let exposed = !ferrite_registry::all_loopback([args.listen.mqtt_addr, args.listen.ws_addr]);
                anyhow::ensure!(
                    args.database_url.is_some() || !exposed || args.allow_anonymous,
                    "the broker listens beyond loopback but has no DATABASE_URL to check credentials against \
                     (set DATABASE_URL, or --allow-anonymous to accept anyone)"
                );
                Ok(())
            }
            Command::Gateway(args) => {
                check_gateway_exposure(args.http_addr, args.allow_anonymous || args.database_url.is_some())
            }
            Command::Bench(args) => args.validate(),
            Command::Registry(_) | Command::Device(_) | Command::Token(_) | Command::Migrate(_) => Ok(()),
        }
    }
}

/// A gateway on its own has no registry to check browsers' API tokens against: so, like Mosquitto 2,
/// it stays on loopback unless the user explicitly accepts anonymous browsers (`ferrite up` checks tokens).
fn check_gateway_exposure(addr: SocketAddr, allow_anonymous: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        addr.ip().is_loopback() || allow_anonymous,
        "the gateway on {addr} would let any browser publish: give it DATABASE_URL so that it checks API tokens, \
         keep --http-addr on loopback (127.0.0.1), or pass --allow-anonymous"
    );
    Ok(())
}

fn check_sim(sim: &SimArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!sim.interval.is_zero(), "--interval must be above zero");
    for (name, rate) in
        [("--drop-rate", sim.drop_rate), ("--burst-rate", sim.burst_rate), ("--bad-payload-rate", sim.bad_payload_rate)]
    {
        anyhow::ensure!((0.0..=1.0).contains(&rate), "{name} is a probability between 0 and 1, got {rate}");
    }
    ferrite_core::DeviceId::new(format!("{}-0001", sim.prefix))
        .map_err(|_| anyhow::anyhow!("--prefix {:?} does not make valid device ids (A-Z a-z 0-9 _ . -)", sim.prefix))?;
    Ok(())
}

fn check_ingest(ingest: &IngestArgs) -> anyhow::Result<()> {
    anyhow::ensure!(ingest.batch_size > 0, "--batch-size must be at least 1");
    anyhow::ensure!(
        (1..=ferrite_core::limits::MAX_PACKET_SIZE as usize).contains(&ingest.max_payload),
        "--max-payload must be between 1 and {} bytes (the broker refuses larger packets)",
        ferrite_core::limits::MAX_PACKET_SIZE
    );
    anyhow::ensure!(!ingest.batch_interval.is_zero(), "--batch-interval must be above zero");
    anyhow::ensure!(
        (1..=ferrite_ingester::MAX_SESSIONS).contains(&ingest.sessions),
        "--sessions must be between 1 and {}",
        ferrite_ingester::MAX_SESSIONS
    );
    anyhow::ensure!(
        ingest.shared_group.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "--shared-group may hold only A-Z a-z 0-9 _ -"
    );
    Ok(())
}

impl IngestArgs {
    /// How far back and ahead a reading's time may lie (`--max-reading-age`, `--max-reading-skew`).
    pub fn time_window(&self) -> ferrite_core::TimeWindow {
        ferrite_core::TimeWindow { max_age: self.max_reading_age, max_skew: self.max_reading_skew }
    }

    pub fn config(&self, broker: BrokerUrl, credentials: Option<(String, String)>) -> ferrite_ingester::Config {
        let mut config = ferrite_ingester::Config::new(broker);
        config.client_id = self.client_id.clone();
        config.credentials = credentials.map(ferrite_core::Credentials::from);
        config.shared_group = (self.shared_group != "none").then(|| self.shared_group.clone());
        config.qos = self.ingest_qos.into();
        config.batch_size = self.batch_size;
        config.batch_interval = self.batch_interval;
        config.sessions = self.sessions;
        config.limits.max_payload = self.max_payload;
        config.limits.window = self.time_window();
        config.limits.dead_letter_retention = self.dead_letter_retention;
        config
    }
}

impl SimArgs {
    pub fn config(
        &self,
        broker: BrokerUrl,
        devices: usize,
        credentials: Option<(String, String)>,
    ) -> ferrite_fleet::Config {
        let mut config = ferrite_fleet::Config::new(broker, devices);
        config.prefix = self.prefix.clone();
        config.first = self.first;
        config.interval = self.interval;
        config.qos = self.fleet_qos.into();
        config.count = self.count;
        config.misbehaviour = ferrite_fleet::Misbehaviour {
            drop_rate: self.drop_rate,
            burst_rate: self.burst_rate,
            bad_payload_rate: self.bad_payload_rate,
        };
        config.credentials = credentials;
        config
    }
}

impl ListenArgs {
    pub fn broker_config(&self, data: &DataArgs) -> ferrite_broker::Config {
        ferrite_broker::Config {
            mqtt_addr: self.mqtt_addr,
            ws_addr: Some(self.ws_addr),
            data_dir: data.data_dir.join("broker"),
            connect_timeout: self.connect_timeout,
            max_session_expiry: self.max_session_expiry,
            max_retained_per_client: self.max_retained_per_device,
            durability: self.durability,
            tls: match (self.mqtts_addr, &self.tls_cert, &self.tls_key) {
                (Some(addr), Some(cert_chain), Some(key)) => {
                    Some(ferrite_broker::TlsConfig { addr, cert_chain: cert_chain.clone(), key: key.clone() })
                }
                _ => None,
            },
            ..ferrite_broker::Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let secrets = ServiceSecrets { ingester_secret: Some("hunter2-ingester".into()), ..ServiceSecrets::default() };
        let client = ClientArgs {
            broker_url: "mqtt://127.0.0.1:1883".parse().expect("a broker URL"),
            mqtt_username: Some("service:gateway".into()),
            mqtt_password: Some("hunter2-gateway".into()),
        };
        let printed = format!("{secrets:?} {client:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("service:gateway") && printed.contains("<redacted>"), "{printed}");
    }
}
