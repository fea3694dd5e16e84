//! The command line of `ferrite bench` and its validation into plans.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure};
use clap::{Args, Subcommand, ValueEnum};
use ferrite_mqtt::BrokerUrl;

use crate::stamp::STAMP_LEN;

/// Default run length: long enough for a stable rate, short enough that `just bench` takes minutes.
pub const DEFAULT_DURATION: &str = "10s";

/// Default QoS 1/2 publishes in flight per publisher: a window like Mosquitto's default max_inflight (20)
/// would measure round trips, not the broker; 1,000 keeps every broker busy without unbounded queues.
pub const DEFAULT_INFLIGHT: u16 = 1000;

/// Load generation and benchmarks against any MQTT broker (ours, Mosquitto, EMQX...) by URL.
///
/// Every scenario connects plain MQTT 3.1.1 clients over TCP; the latency of each message comes
/// from a timestamp in its payload, on this process's monotonic clock, into an HDR histogram.
/// Pass --broker-pid to sample the broker's CPU and resident memory from /proc.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    ferrite bench fan-in --url mqtt://127.0.0.1:1883 --publishers 8 --qos 1\n  \
    ferrite bench fan-out --subscribers 50 --rate 1000 --broker-pid $(pidof mosquitto)\n  \
    ferrite bench shared --publishers 8 --subscribers 4 --json shared.json\n  \
    ferrite bench idle --connections 10000 --broker-pid 1234\n  \
    ferrite bench pipeline --database-url postgres://... --rate 10000 --dashboards 10\n  \
    ferrite bench compare --ours a1.json a2.json --theirs b1.json b2.json")]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: BenchCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum BenchCommand {
    /// N publishers -> 1 subscriber on `<prefix>/#` (default 8 publishers).
    FanIn(TrafficArgs),
    /// 1 publisher -> N subscribers of the same topic (default 50 subscribers).
    FanOut(TrafficArgs),
    /// N publishers -> M subscribers sharing `$share/bench/<prefix>/#` (default 8 -> 4).
    Shared(TrafficArgs),
    /// Hold N idle connections and report the broker's memory per connection.
    Idle(IdleArgs),
    /// Readings into a running Ferrite (`ferrite up`): rows committed per second, publish-to-row and
    /// publish-to-browser latency.
    Pipeline(PipelineArgs),
    /// Ratios ours/theirs of JSON reports written with --json (means over the files of each side).
    Compare(CompareArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QosLevel {
    #[value(name = "0")]
    Zero,
    #[value(name = "1")]
    One,
    #[value(name = "2")]
    Two,
}

impl QosLevel {
    pub fn level(self) -> u8 {
        match self {
            QosLevel::Zero => 0,
            QosLevel::One => 1,
            QosLevel::Two => 2,
        }
    }
}

/// What every scenario shares: the broker and how the results are reported.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// The broker under test: mqtt://host:port.
    #[arg(long, env = "FERRITE_BENCH_URL", default_value = "mqtt://127.0.0.1:1883")]
    pub url: BrokerUrl,
    /// MQTT username, when the broker requires one.
    #[arg(long, requires = "password")]
    pub username: Option<String>,
    /// MQTT password.
    #[arg(long, requires = "username", hide_env_values = true)]
    pub password: Option<String>,
    /// The broker's process id: its CPU and resident memory are sampled from /proc while the run goes.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// A name for the broker in the report (e.g. ferrite, mosquitto).
    #[arg(long, default_value = "broker")]
    pub label: String,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress bar (it is hidden anyway when stderr is not a terminal).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct TrafficArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Publishing clients (default: the scenario's).
    #[arg(long, short = 'p')]
    pub publishers: Option<usize>,
    /// Subscribing clients (default: the scenario's).
    #[arg(long, short = 's')]
    pub subscribers: Option<usize>,
    /// QoS of publishes and subscriptions.
    #[arg(long, short = 'q', default_value = "0")]
    pub qos: QosLevel,
    /// Payload size in bytes (at least 20: the timestamp header).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Messages per second over all publishers; 0 publishes as fast as the broker takes them (open loop).
    #[arg(long, short = 'r', default_value_t = 0)]
    pub rate: u64,
    /// How long publishers publish (e.g. 10s, 1m).
    #[arg(long, short = 'd', default_value = DEFAULT_DURATION, value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// QoS 1/2 publishes in flight per publisher.
    #[arg(long, default_value_t = DEFAULT_INFLIGHT)]
    pub inflight: u16,
    /// After publishing stops, how long to wait without a new delivery before counting the rest lost.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Connections to open and hold.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub connections: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long to hold them once all are open, before measuring.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// Keep-alive the clients announce; they ping at half of it.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub keep_alive: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct PipelineArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The PostgreSQL Ferrite writes to (`ferrite up` prints it; for its private cluster the password is in the cluster directory).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// The gateway's live WebSocket; with --dashboards 0 it is not used.
    #[arg(long, default_value = "ws://127.0.0.1:8080/dashboard")]
    pub gateway_url: String,
    /// Browsers to emulate on the gateway, each subscribed to this run's readings.
    #[arg(long, default_value_t = 1)]
    pub dashboards: usize,
    /// Simulated devices, one MQTT connection each.
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Readings per second over all devices; 0 publishes as fast as the broker takes them.
    #[arg(long, short = 'r', default_value_t = 0)]
    pub rate: u64,
    /// How long the devices publish.
    #[arg(long, short = 'd', default_value = DEFAULT_DURATION, value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// QoS of the readings (the ingester commits before it acknowledges QoS 1).
    #[arg(long, short = 'q', default_value = "1")]
    pub qos: QosLevel,
    /// QoS 1/2 readings in flight per device.
    #[arg(long, default_value_t = 100)]
    pub inflight: u16,
    /// Give up waiting for rows this long after the count stopped growing.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Reports of our broker.
    #[arg(long, num_args = 1.., required = true)]
    pub ours: Vec<PathBuf>,
    /// Reports of the broker compared against, in the same scenario.
    #[arg(long, num_args = 1.., required = true)]
    pub theirs: Vec<PathBuf>,
}

/// Which traffic shape a [`TrafficPlan`] has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    FanIn,
    FanOut,
    Shared,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::FanIn => "fan-in",
            Shape::FanOut => "fan-out",
            Shape::Shared => "shared",
        }
    }

    /// Default (publishers, subscribers).
    pub fn default_clients(self) -> (usize, usize) {
        match self {
            Shape::FanIn => (8, 1),
            Shape::FanOut => (1, 50),
            Shape::Shared => (8, 4),
        }
    }
}

/// A validated traffic scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct TrafficPlan {
    pub shape: Shape,
    pub host: String,
    pub port: u16,
    pub publishers: usize,
    pub subscribers: usize,
    pub qos: u8,
    pub payload: usize,
    pub rate: Option<u64>,
    pub duration: Duration,
    pub inflight: u16,
    pub drain: Duration,
}

impl TrafficPlan {
    /// Messages each subscriber should receive in total, per message sent.
    pub fn copies_per_message(&self) -> u64 {
        if self.shape == Shape::Shared { 1 } else { self.subscribers as u64 }
    }
}

/// host and port of a TCP broker URL.
pub fn tcp_endpoint(url: &BrokerUrl) -> anyhow::Result<(String, u16)> {
    match url {
        BrokerUrl::Tcp { host, port } => Ok((host.clone(), *port)),
        BrokerUrl::Ws { .. } => bail!("ferrite bench drives brokers over TCP only: use mqtt://host:port"),
    }
}

/// Checks a traffic scenario's arguments and fills in the scenario's defaults.
pub fn traffic_plan(shape: Shape, args: &TrafficArgs) -> anyhow::Result<TrafficPlan> {
    let (host, port) = tcp_endpoint(&args.common.url)?;
    let (default_pubs, default_subs) = shape.default_clients();
    let publishers = args.publishers.unwrap_or(default_pubs);
    let subscribers = args.subscribers.unwrap_or(default_subs);
    ensure!(publishers >= 1, "--publishers must be at least 1");
    ensure!(subscribers >= 1, "--subscribers must be at least 1");
    ensure!(publishers <= 10_000 && subscribers <= 10_000, "at most 10,000 publishers and 10,000 subscribers");
    ensure!(
        args.payload >= STAMP_LEN,
        "--payload must be at least {STAMP_LEN} bytes: every message carries its send time and sequence number"
    );
    ensure!(args.payload <= 1024 * 1024, "--payload must be at most 1 MiB");
    ensure!(!args.duration.is_zero(), "--duration must be above zero");
    ensure!(args.inflight >= 1 && args.inflight < u16::MAX, "--inflight must be between 1 and 65534");
    if args.rate > 0 {
        ensure!(
            args.rate >= publishers as u64,
            "--rate {} is below one message per second per publisher ({publishers} publishers)",
            args.rate
        );
    }
    Ok(TrafficPlan {
        shape,
        host,
        port,
        publishers,
        subscribers,
        qos: args.qos.level(),
        payload: args.payload,
        rate: (args.rate > 0).then_some(args.rate),
        duration: args.duration,
        inflight: args.inflight,
        drain: args.drain,
    })
}

pub fn check_idle(args: &IdleArgs) -> anyhow::Result<()> {
    tcp_endpoint(&args.common.url)?;
    ensure!(args.connections >= 1, "--connections must be at least 1");
    ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    ensure!(args.keep_alive >= Duration::from_secs(2), "--keep-alive must be at least 2s");
    Ok(())
}

pub fn check_pipeline(args: &PipelineArgs) -> anyhow::Result<()> {
    tcp_endpoint(&args.common.url)?;
    ensure!(args.devices >= 1 && args.devices <= 10_000, "--devices must be between 1 and 10,000");
    ensure!(!args.duration.is_zero(), "--duration must be above zero");
    ensure!(args.inflight >= 1 && args.inflight < u16::MAX, "--inflight must be between 1 and 65534");
    if args.rate > 0 {
        ensure!(args.rate >= args.devices as u64, "--rate is below one reading per second per device");
    }
    if args.dashboards > 0 {
        ensure!(
            args.gateway_url.starts_with("ws://"),
            "--gateway-url must be a ws:// URL such as ws://127.0.0.1:8080/dashboard"
        );
    }
    Ok(())
}

impl BenchArgs {
    /// Validates before anything connects, so a bad flag fails with one line.
    pub fn validate(&self) -> anyhow::Result<()> {
        match &self.scenario {
            BenchCommand::FanIn(args) => traffic_plan(Shape::FanIn, args).map(drop),
            BenchCommand::FanOut(args) => traffic_plan(Shape::FanOut, args).map(drop),
            BenchCommand::Shared(args) => traffic_plan(Shape::Shared, args).map(drop),
            BenchCommand::Idle(args) => check_idle(args),
            BenchCommand::Pipeline(args) => check_pipeline(args),
            BenchCommand::Compare(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> anyhow::Result<BenchArgs> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))?;
        cli.bench.validate()?;
        Ok(cli.bench)
    }

    fn plan(args: &[&str]) -> anyhow::Result<TrafficPlan> {
        match parse(args)?.scenario {
            BenchCommand::FanIn(a) => traffic_plan(Shape::FanIn, &a),
            BenchCommand::FanOut(a) => traffic_plan(Shape::FanOut, &a),
            BenchCommand::Shared(a) => traffic_plan(Shape::Shared, &a),
            other => bail!("not a traffic scenario: {other:?}"),
        }
    }

    /// `Ok(())` when valid, else a fragment of the error.
    fn check(args: &[&str], expected: Result<(), &str>) {
        match (parse(args), expected) {
            (Ok(_), Ok(())) => {}
            (Err(error), Err(fragment)) => {
                assert!(format!("{error:#}").contains(fragment), "{args:?}: {error:#} lacks {fragment:?}")
            }
            (got, want) => panic!("{args:?}: got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn validates_scenarios() {
        check(&["fan-in"], Ok(()));
        check(&["fan-out", "--qos", "2", "--rate", "1000"], Ok(()));
        check(&["shared", "--url", "mqtt://h:1884"], Ok(()));
        check(&["fan-in", "--payload", "19"], Err("--payload must be at least 20"));
        check(&["fan-in", "--publishers", "0"], Err("--publishers must be at least 1"));
        check(&["fan-in", "--duration", "0s"], Err("--duration must be above zero"));
        check(&["fan-in", "--rate", "3", "-p", "8"], Err("below one message per second"));
        check(&["fan-in", "--inflight", "0"], Err("--inflight"));
        check(&["fan-in", "--url", "ws://h:8083/mqtt"], Err("over TCP only"));
        check(&["fan-in", "--qos", "3"], Err("invalid value"));
        check(&["idle", "--connections", "0"], Err("--connections"));
        check(&["idle", "--keep-alive", "1s"], Err("--keep-alive"));
        check(&["pipeline", "--database-url", "postgres://x/y", "--gateway-url", "http://x"], Err("ws://"));
        check(&["pipeline", "--database-url", "postgres://x/y", "--dashboards", "0", "--gateway-url", "x"], Ok(()));
        check(&["compare", "--ours", "a.json"], Err("--theirs"));
    }

    #[test]
    fn scenario_defaults_and_copies() {
        let fan_in = plan(&["fan-in"]).expect("valid");
        assert_eq!((fan_in.publishers, fan_in.subscribers, fan_in.copies_per_message()), (8, 1, 1));
        assert_eq!(fan_in.rate, None);
        assert_eq!((fan_in.host.as_str(), fan_in.port), ("127.0.0.1", 1883));
        let fan_out = plan(&["fan-out", "-r", "500"]).expect("valid");
        assert_eq!((fan_out.publishers, fan_out.subscribers, fan_out.copies_per_message()), (1, 50, 50));
        assert_eq!(fan_out.rate, Some(500));
        let shared = plan(&["shared", "-s", "3"]).expect("valid");
        assert_eq!((shared.publishers, shared.subscribers, shared.copies_per_message()), (8, 3, 1));
    }
}
