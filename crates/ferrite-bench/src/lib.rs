//! `ferrite bench`: measures any MQTT broker by URL, so that ours and Mosquitto are driven by the same
//! client in the same run, and the Ferrite pipeline from MQTT into PostgreSQL and browsers.
//!
//! The client is built to cost little next to the broker: each publisher and subscriber is one task
//! with its own connection, publishes are encoded into one buffer and written in batches, and
//! incoming messages are decoded in place (see [`wire`]). Latency comes from a send time in each
//! payload ([`stamp`]) on one monotonic clock, recorded into HDR histograms ([`stats`]).
//!
//! # Layout
//! - [`config`]: the command line ([`BenchArgs`]) and its validation into plans.
//! - [`wire`]: a lean MQTT 3.1.1 connection (hand-encoded PUBLISH, rumqttc's codec for the rest).
//! - [`stamp`]: the payload header (publisher, sequence number, send time) and duplicate tracking.
//! - [`traffic`]: fan-in, fan-out and shared-subscription runs.
//! - [`idle`]: many idle connections and the broker's memory per connection.
//! - [`pipeline`]: readings into a running Ferrite, rows per second, publish-to-row and -browser latency.
//! - [`procfs`], [`sampler`]: the broker's CPU and resident memory from /proc.
//! - [`stats`]: histograms, the report, its table and JSON; [`compare`]: ratios between reports.

pub mod compare;
pub mod config;
pub mod idle;
pub mod pipeline;
pub mod procfs;
mod progress;
pub mod sampler;
pub mod stamp;
pub mod stats;
pub mod traffic;
pub mod wire;

use anyhow::Context;

pub use config::{BenchArgs, BenchCommand, Shape, TrafficPlan};
pub use stats::Report;

use crate::config::CommonArgs;
use crate::progress::Progress;
use crate::sampler::Sampler;
use crate::wire::ConnectOptions;

fn connect_options(common: &CommonArgs) -> anyhow::Result<ConnectOptions> {
    let (host, port) = config::tcp_endpoint(&common.url)?;
    Ok(ConnectOptions {
        addr: format!("{host}:{port}"),
        keep_alive: traffic::KEEP_ALIVE,
        credentials: common.username.clone().zip(common.password.clone()),
    })
}

fn sampler(common: &CommonArgs) -> anyhow::Result<Option<Sampler>> {
    common.broker_pid.map(Sampler::new).transpose()
}

fn report(common: &CommonArgs, scenario: &str) -> Report {
    Report {
        label: common.label.clone(),
        scenario: scenario.to_owned(),
        broker_url: common.url.to_string(),
        started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        traffic: None,
        idle: None,
        pipeline: None,
        latency: None,
        broker: None,
    }
}

/// Runs one traffic scenario and returns its report (what the tests call).
pub async fn run_traffic(shape: Shape, args: &config::TrafficArgs) -> anyhow::Result<Report> {
    let plan = config::traffic_plan(shape, args)?;
    let mut options = connect_options(&args.common)?;
    options.addr = format!("{}:{}", plan.host, plan.port);
    let sampler = sampler(&args.common)?;
    let mut report = report(&args.common, &scenario_name(&plan));
    let outcome = traffic::run(&plan, &options, sampler, Progress::new(args.common.quiet)).await?;
    report.traffic = Some(outcome.traffic);
    report.latency = outcome.latencies.summary();
    report.broker = outcome.broker;
    Ok(report)
}

/// e.g. `fan-in 8->1 qos1 64B open-loop`: the scenario with its parameters, so that reports of different set-ups are never compared.
fn scenario_name(plan: &TrafficPlan) -> String {
    let rate = plan.rate.map_or_else(|| "open-loop".to_owned(), |rate| format!("{rate}/s"));
    format!(
        "{} {}->{} qos{} {}B {}",
        plan.shape.name(),
        plan.publishers,
        plan.subscribers,
        plan.qos,
        plan.payload,
        rate
    )
}

/// Runs `ferrite bench ...`: the scenario, then the table on stdout and the JSON file if asked.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    args.validate()?;
    let (report, common) = match args.scenario {
        BenchCommand::FanIn(args) => (run_traffic(Shape::FanIn, &args).await?, args.common),
        BenchCommand::FanOut(args) => (run_traffic(Shape::FanOut, &args).await?, args.common),
        BenchCommand::Shared(args) => (run_traffic(Shape::Shared, &args).await?, args.common),
        BenchCommand::Idle(args) => {
            let options = ConnectOptions { keep_alive: args.keep_alive, ..connect_options(&args.common)? };
            let name = format!("idle {}", args.connections);
            let outcome = idle::run(&args, &options, sampler(&args.common)?, Progress::new(args.common.quiet)).await?;
            let mut report = report(&args.common, &name);
            report.idle = Some(outcome.idle);
            report.latency = outcome.connect_latencies.summary();
            report.broker = outcome.broker;
            (report, args.common)
        }
        BenchCommand::Pipeline(args) => {
            let options = connect_options(&args.common)?;
            let rate = if args.rate > 0 { format!("{}/s", args.rate) } else { "open-loop".to_owned() };
            let name = format!("pipeline {} devices qos{} {rate}", args.devices, args.qos.level());
            let outcome =
                pipeline::run(&args, &options, sampler(&args.common)?, Progress::new(args.common.quiet)).await?;
            let mut report = report(&args.common, &name);
            report.pipeline = Some(outcome.pipeline);
            report.broker = outcome.broker;
            (report, args.common)
        }
        BenchCommand::Compare(args) => {
            let ours = compare::load(&args.ours)?;
            let theirs = compare::load(&args.theirs)?;
            print!("{}", compare::compare(&ours, &theirs)?);
            return Ok(());
        }
    };
    print!("{}", report.table());
    if let Some(path) = &common.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
