//! `ferrite bench compare`: ratios ours/theirs over JSON reports of the same scenario.

use std::path::PathBuf;

use anyhow::Context;

use crate::stats::{Report, table};

/// One compared figure: its name, how to read it from a report, and which direction is better.
struct Metric {
    name: &'static str,
    read: fn(&Report) -> Option<f64>,
    higher_is_better: bool,
}

const METRICS: &[Metric] = &[
    Metric { name: "delivered msg/s", read: |r| r.traffic.as_ref().map(|t| t.delivered_per_s), higher_is_better: true },
    Metric { name: "sent msg/s", read: |r| r.traffic.as_ref().map(|t| t.sent_per_s), higher_is_better: true },
    Metric {
        name: "lost %",
        read: |r| r.traffic.as_ref().map(|t| 100.0 * t.lost as f64 / t.expected.max(1) as f64),
        higher_is_better: false,
    },
    Metric { name: "latency p50 ms", read: |r| r.latency.as_ref().map(|l| l.p50_ms), higher_is_better: false },
    Metric { name: "latency p99 ms", read: |r| r.latency.as_ref().map(|l| l.p99_ms), higher_is_better: false },
    Metric { name: "latency p99.9 ms", read: |r| r.latency.as_ref().map(|l| l.p999_ms), higher_is_better: false },
    Metric { name: "connects/s", read: |r| r.idle.as_ref().map(|i| i.connects_per_s), higher_is_better: true },
    Metric {
        name: "broker KB/connection",
        read: |r| r.idle.as_ref().and_then(|i| i.broker_bytes_per_connection).map(|b| b / 1024.0),
        higher_is_better: false,
    },
    Metric {
        name: "client cpu %",
        read: |r| r.traffic.as_ref().and_then(|t| t.client_cpu_percent),
        higher_is_better: false,
    },
    Metric { name: "broker cpu %", read: |r| r.broker.as_ref().map(|b| b.cpu_percent), higher_is_better: false },
    Metric {
        name: "broker rss max MB",
        read: |r| r.broker.as_ref().map(|b| b.rss_max_kb as f64 / 1024.0),
        higher_is_better: false,
    },
];

pub fn load(paths: &[PathBuf]) -> anyhow::Result<Vec<Report>> {
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{} is not a ferrite bench report", path.display()))
        })
        .collect()
}

fn mean(reports: &[Report], read: fn(&Report) -> Option<f64>) -> Option<f64> {
    let values: Vec<f64> = reports.iter().filter_map(read).collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The comparison table: each side's mean and the ratio ours/theirs.
pub fn compare(ours: &[Report], theirs: &[Report]) -> anyhow::Result<String> {
    let scenario = |reports: &[Report]| reports.first().map(|r| r.scenario.clone()).unwrap_or_default();
    anyhow::ensure!(
        ours.iter().chain(theirs).all(|r| r.scenario == scenario(ours)),
        "the reports are of different scenarios"
    );
    let label =
        |reports: &[Report], default: &str| reports.first().map_or_else(|| default.to_owned(), |r| r.label.clone());
    let (our_label, their_label) = (label(ours, "ours"), label(theirs, "theirs"));
    let mut rows = Vec::new();
    for metric in METRICS {
        let (Some(a), Some(b)) = (mean(ours, metric.read), mean(theirs, metric.read)) else { continue };
        let ratio = if b != 0.0 { format!("{:.2}x", a / b) } else { "-".to_owned() };
        let better = if metric.higher_is_better { "higher" } else { "lower" };
        rows.push(vec![metric.name.to_owned(), format!("{a:.3}"), format!("{b:.3}"), ratio, better.to_owned()]);
    }
    let header =
        format!("{} ({} runs of {}, {} of {})\n", scenario(ours), ours.len(), our_label, theirs.len(), their_label);
    let ratio_header = format!("{our_label}/{their_label}");
    Ok(header + &table(&["", &our_label, &their_label, &ratio_header, "better"], &rows))
}
