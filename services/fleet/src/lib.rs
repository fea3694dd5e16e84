//! The simulated fleet: devices `sim-0001`, `sim-0002`, ... that behave like real sensors.
//!
//! Each device holds its own MQTT connection with a retained Last Will `offline` on
//! `devices/{id}/status`, announces `online` (retained), publishes temperature, humidity and battery
//! as random walks on `sensors/{id}/{metric}`, and answers commands from `commands/{id}`.
//! On request it misbehaves (abrupt drops, bursts, bad payloads) so the platform's handling of them
//! can be watched; with a reading count it doubles as a load generator that knows exactly what it sent.
//!
//! # Layout
//! - [`Config`], [`Fleet`] (`bind` / `run`), [`Stats`].
//! - [`device`]: one simulated device: its connection, its readings and its command handling.
//! - [`walk`]: the random walks behind plausible readings.

pub mod device;
pub mod walk;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferrite_mqtt::{BrokerUrl, QoS};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A reading per metric every this often: lively on a dashboard, light on a laptop.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// How often the progress line is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Devices connect at most this many per second, so a thousand devices do not arrive as one storm.
const CONNECTS_PER_SECOND: u64 = 500;

/// Deliberate faults, each a probability per device and per interval.
#[derive(Clone, Debug, Default)]
pub struct Misbehaviour {
    /// Drop the connection without DISCONNECT (the broker publishes the Last Will), then come back.
    pub drop_rate: f64,
    /// Publish ten intervals' worth of readings at once.
    pub burst_rate: f64,
    /// Publish a payload the ingester cannot parse (it must dead-letter it).
    pub bad_payload_rate: f64,
}

/// A device's MQTT login, `(username, password)`.
pub type Credentials = (String, String);

/// What [`Provisioner::credentials`] returns.
pub type ProvisionFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Credentials>> + Send + 'a>>;

/// Issues a device its MQTT credentials; the registry implements it.
pub trait Provisioner: Send + Sync + 'static {
    fn credentials<'a>(&'a self, device_id: &'a str) -> ProvisionFuture<'a>;
}

/// What the fleet simulates.
#[derive(Clone)]
pub struct Config {
    pub broker: BrokerUrl,
    pub devices: usize,
    /// Device ids are `{prefix}-{n:04}`.
    pub prefix: String,
    /// The first device number (so two fleets can run side by side without sharing ids).
    pub first: usize,
    pub interval: Duration,
    pub qos: QoS,
    /// Readings per device and metric before the device stops; `None` runs until shutdown.
    pub count: Option<u64>,
    pub misbehaviour: Misbehaviour,
    /// `(username, password)` shared by every device (e.g. the `service:fleet` account).
    pub credentials: Option<(String, String)>,
    /// When set, each device gets its own credentials from here before it connects (and `credentials` is ignored).
    pub provisioner: Option<Arc<dyn Provisioner>>,
}

impl std::fmt::Debug for Config {
    // By hand: credentials never reach a log line, and the provisioner has no Debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("broker", &self.broker)
            .field("devices", &self.devices)
            .field("prefix", &self.prefix)
            .field("interval", &self.interval)
            .field("qos", &self.qos)
            .field("count", &self.count)
            .field("provisioned", &self.provisioner.is_some())
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn new(broker: BrokerUrl, devices: usize) -> Self {
        Self {
            broker,
            devices,
            prefix: "sim".into(),
            first: 1,
            interval: DEFAULT_INTERVAL,
            qos: QoS::AtLeastOnce,
            count: None,
            misbehaviour: Misbehaviour::default(),
            credentials: None,
            provisioner: None,
        }
    }

    /// The id of the `n`-th device (0-based).
    pub fn device_id(&self, n: usize) -> String {
        format!("{}-{:04}", self.prefix, self.first + n)
    }
}

/// Counters across the whole fleet.
#[derive(Debug, Default)]
pub struct Stats {
    pub connected: AtomicU64,
    /// Readings handed to the MQTT client (one per metric).
    pub readings: AtomicU64,
    pub bad_payloads: AtomicU64,
    pub drops: AtomicU64,
    pub commands: AtomicU64,
    /// Devices that finished their `count` and disconnected cleanly.
    pub finished: AtomicU64,
    /// Publishes still unacknowledged when their device stopped.
    pub unacknowledged: AtomicU64,
}

impl Stats {
    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A configured fleet.
pub struct Fleet {
    config: Arc<Config>,
    stats: Arc<Stats>,
}

impl Fleet {
    /// Validates the configuration; devices connect in `run`.
    pub fn bind(config: Config) -> anyhow::Result<Fleet> {
        anyhow::ensure!(config.devices > 0, "a fleet needs at least one device");
        anyhow::ensure!(!config.interval.is_zero(), "the reading interval must be above zero");
        let last = config.device_id(config.devices - 1);
        ferrite_core::DeviceId::new(&last).map_err(|error| anyhow::anyhow!("device prefix gives bad ids: {error}"))?;
        for rate in
            [config.misbehaviour.drop_rate, config.misbehaviour.burst_rate, config.misbehaviour.bad_payload_rate]
        {
            anyhow::ensure!(
                (0.0..=1.0).contains(&rate),
                "misbehaviour rates are probabilities between 0 and 1, got {rate}"
            );
        }
        Ok(Fleet { config: Arc::new(config), stats: Arc::default() })
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Runs every device until shutdown (or until each has sent `count` readings), then
    /// disconnects them cleanly after their last publishes are acknowledged.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Fleet { config, stats } = self;
        tracing::info!(devices = config.devices, first = %config.device_id(0), broker = %config.broker, "fleet starting");
        let tracker = TaskTracker::new();
        let progress = tokio::spawn(progress(stats.clone(), config.devices, shutdown.clone()));
        let pace = Duration::from_micros(1_000_000 / CONNECTS_PER_SECOND);
        for n in 0..config.devices {
            if shutdown.is_cancelled() {
                break;
            }
            let device = device::Device::new(config.clone(), n, stats.clone());
            tracker.spawn(device.run(shutdown.clone()));
            tokio::time::sleep(pace).await;
        }
        tracker.close();
        tracker.wait().await;
        progress.abort();
        tracing::info!(
            readings = Stats::get(&stats.readings),
            bad_payloads = Stats::get(&stats.bad_payloads),
            drops = Stats::get(&stats.drops),
            commands = Stats::get(&stats.commands),
            unacknowledged = Stats::get(&stats.unacknowledged),
            "fleet stopped"
        );
        Ok(())
    }
}

/// Logs one line every few seconds: connections, readings and their rate.
async fn progress(stats: Arc<Stats>, devices: usize, shutdown: CancellationToken) {
    let mut last = 0;
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let readings = Stats::get(&stats.readings);
        let rate = (readings - last) as f64 / PROGRESS_EVERY.as_secs_f64();
        last = readings;
        tracing::info!(
            "fleet: {}/{} devices connected, {} readings sent ({:.0}/s), {} commands answered",
            Stats::get(&stats.connected),
            devices,
            readings,
            rate,
            Stats::get(&stats.commands)
        );
    }
}
