//! A short fan-in run against the embedded broker: at QoS 1 every message sent must be delivered once.

use clap::Parser;
use ferrite_bench::{BenchArgs, BenchCommand, Shape};
use ferrite_testkit_broker::TestBroker;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn traffic_args(url: &str, extra: &[&str]) -> ferrite_bench::config::TrafficArgs {
    let args = ["bench", "fan-in", "--url", url, "--quiet"].into_iter().chain(extra.iter().copied());
    match Cli::try_parse_from(args).expect("valid arguments").bench.scenario {
        BenchCommand::FanIn(args) => args,
        other => panic!("parsed as {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_in_at_qos1_delivers_everything_sent() -> anyhow::Result<()> {
    ferrite_testkit::init_test_tracing();
    let broker = TestBroker::start().await?;
    let url = broker.url().to_string();
    let pid = std::process::id().to_string();
    // The embedded broker runs in this process, so its pid is ours.
    let args = traffic_args(
        &url,
        &[
            "--publishers",
            "4",
            "--qos",
            "1",
            "--rate",
            "2000",
            "--duration",
            "1s",
            "--drain",
            "10s",
            "--broker-pid",
            &pid,
        ],
    );
    let report = ferrite_bench::run_traffic(Shape::FanIn, &args).await?;
    let traffic = report.traffic.expect("a traffic report");
    assert!(traffic.sent > 0, "nothing was sent: {traffic:?}");
    assert_eq!(traffic.acked, traffic.sent, "every QoS 1 publish is acknowledged: {traffic:?}");
    assert_eq!(traffic.expected, traffic.sent);
    assert_eq!(traffic.delivered, traffic.sent, "{traffic:?}");
    assert_eq!(traffic.lost, 0);
    let latency = report.latency.expect("latencies recorded");
    assert_eq!(latency.samples, traffic.delivered);
    let usage = report.broker.expect("broker usage sampled");
    assert!(usage.rss_max_kb >= usage.rss_start_kb);
    broker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_splits_without_loss_at_qos2() -> anyhow::Result<()> {
    ferrite_testkit::init_test_tracing();
    let broker = TestBroker::start().await?;
    let url = broker.url().to_string();
    let cli = Cli::try_parse_from([
        "bench", "shared", "--url", &url, "--quiet", "-p", "2", "-s", "2", "--qos", "2", "--rate", "1000", "-d", "1s",
        "--drain", "10s",
    ])?;
    let BenchCommand::Shared(args) = cli.bench.scenario else { panic!("parsed as another scenario") };
    let report = ferrite_bench::run_traffic(Shape::Shared, &args).await?;
    let traffic = report.traffic.expect("a traffic report");
    assert!(traffic.sent > 0);
    assert_eq!(traffic.expected, traffic.sent, "a shared subscription delivers each message once");
    assert_eq!(traffic.delivered, traffic.sent, "{traffic:?}");
    assert_eq!(traffic.duplicates, 0);
    broker.stop().await;
    Ok(())
}
