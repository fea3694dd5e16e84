//! Latency histograms and the report of a run: the table printed at the end and the JSON written with `--json`.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The longest latency a histogram holds (60 s); anything slower is recorded as 60 s.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Latencies in nanoseconds with three significant digits (0.1% error), as HDR histograms do.
#[derive(Clone, Debug)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        // Bounds and precision are constants within hdrhistogram's limits.
        Latencies(Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds"))
    }
}

impl Latencies {
    pub fn record_ns(&mut self, ns: u64) {
        self.0.saturating_record(ns.clamp(1, MAX_LATENCY_NS));
    }

    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The summary in milliseconds; `None` when nothing was recorded.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.0.is_empty() {
            return None;
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        Some(LatencySummary {
            samples: self.0.len(),
            mean_ms: self.0.mean() / 1e6,
            p50_ms: ms(self.0.value_at_quantile(0.5)),
            p99_ms: ms(self.0.value_at_quantile(0.99)),
            p999_ms: ms(self.0.value_at_quantile(0.999)),
            max_ms: ms(self.0.max()),
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    pub samples: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// The broker process during the measured phase.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BrokerUsage {
    pub pid: u32,
    /// CPU while publishers ran, in percent of one core.
    pub cpu_percent: f64,
    pub rss_start_kb: u64,
    pub rss_max_kb: u64,
    pub rss_end_kb: u64,
}

/// Message counts and rates of a traffic scenario.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Traffic {
    pub publishers: usize,
    pub subscribers: usize,
    pub qos: u8,
    pub payload_bytes: usize,
    /// Target publish rate over all publishers; `None` is open loop (as fast as the broker takes them).
    pub target_rate: Option<u64>,
    pub duration_s: f64,
    pub sent: u64,
    /// QoS 1/2 publishes the broker acknowledged (PUBACK / PUBCOMP).
    pub acked: u64,
    /// What the subscribers should receive: sent, times the subscribers unless the subscription is shared.
    pub expected: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub lost: u64,
    pub sent_per_s: f64,
    /// Delivered messages over the time from the first publish to the last delivery.
    pub delivered_per_s: f64,
    /// This benchmark process's own CPU while publishers ran, in percent of one core: on a shared machine
    /// it shows how much the client took from the broker.
    #[serde(default)]
    pub client_cpu_percent: Option<f64>,
}

/// Connection holding of the idle scenario.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Idle {
    pub connections: usize,
    pub connected: usize,
    pub connects_per_s: f64,
    /// Broker resident memory growth divided by the connections held, when the pid is known.
    pub broker_bytes_per_connection: Option<f64>,
}

/// The platform pipeline: MQTT into PostgreSQL and out to browsers.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Pipeline {
    pub devices: usize,
    pub sent: u64,
    pub acked: u64,
    /// Rows of this run found in `readings` at the end.
    pub committed: u64,
    pub lost: u64,
    pub sent_per_s: f64,
    /// Rows over the time from the first publish until the count stopped growing.
    pub committed_per_s: f64,
    /// Publish to `received_at` (the inserting transaction's start, so a lower bound of publish-to-commit).
    pub publish_to_row: Option<LatencySummary>,
    pub dashboards: usize,
    /// `sensor-update` frames the dashboards received for this run's readings.
    pub browser_updates: u64,
    /// Publish to a dashboard's WebSocket frame (the reading's `ts` is carried with milliseconds).
    pub publish_to_browser: Option<LatencySummary>,
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// A name for the broker under test (`--label`), e.g. "ferrite" or "mosquitto".
    pub label: String,
    pub scenario: String,
    pub broker_url: String,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Traffic>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<Idle>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<Pipeline>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencySummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<BrokerUsage>,
}

impl Report {
    /// The rows of the end-of-run table.
    pub fn rows(&self) -> Vec<(String, String)> {
        let mut rows = vec![
            ("broker".to_owned(), format!("{} ({})", self.label, self.broker_url)),
            ("scenario".to_owned(), self.scenario.clone()),
        ];
        let mut row = |key: &str, value: String| rows.push((key.to_owned(), value));
        if let Some(t) = &self.traffic {
            row("publishers -> subscribers", format!("{} -> {}", t.publishers, t.subscribers));
            row("qos / payload", format!("{} / {} B", t.qos, t.payload_bytes));
            row(
                "target rate",
                t.target_rate.map_or_else(|| "open loop".to_owned(), |rate| format!("{} msg/s", group(rate))),
            );
            row("duration", format!("{:.1} s", t.duration_s));
            row("sent", format!("{} ({}/s)", group(t.sent), group(t.sent_per_s as u64)));
            if t.qos > 0 {
                row("acknowledged", group(t.acked));
            }
            row("delivered / expected", format!("{} / {}", group(t.delivered), group(t.expected)));
            row("delivered rate", format!("{} msg/s", group(t.delivered_per_s as u64)));
            row("lost / duplicates", format!("{} / {}", group(t.lost), group(t.duplicates)));
            if let Some(cpu) = t.client_cpu_percent {
                row("client cpu", format!("{cpu:.0} % of a core"));
            }
        }
        if let Some(i) = &self.idle {
            row("connections held", format!("{} of {}", group(i.connected as u64), group(i.connections as u64)));
            row("connect rate", format!("{} conn/s", group(i.connects_per_s as u64)));
            if let Some(bytes) = i.broker_bytes_per_connection {
                row("broker memory / connection", format!("{:.2} KB", bytes / 1024.0));
            }
        }
        if let Some(p) = &self.pipeline {
            row("devices", group(p.devices as u64));
            row(
                "sent / acknowledged",
                format!("{} / {} ({}/s)", group(p.sent), group(p.acked), group(p.sent_per_s as u64)),
            );
            row("rows committed", format!("{} (lost {})", group(p.committed), group(p.lost)));
            row("commit rate", format!("{} rows/s", group(p.committed_per_s as u64)));
            if let Some(l) = &p.publish_to_row {
                row("publish -> row p50/p99/max", format!("{:.2} / {:.2} / {:.2} ms", l.p50_ms, l.p99_ms, l.max_ms));
            }
            if p.dashboards > 0 {
                row("dashboards / updates", format!("{} / {}", p.dashboards, group(p.browser_updates)));
            }
            if let Some(l) = &p.publish_to_browser {
                row(
                    "publish -> browser p50/p99/max",
                    format!("{:.2} / {:.2} / {:.2} ms", l.p50_ms, l.p99_ms, l.max_ms),
                );
            }
        }
        if let Some(l) = &self.latency {
            // The idle scenario's latency is CONNECT to CONNACK; the others' publish to delivery.
            let what = if self.idle.is_some() { "connect latency" } else { "latency" };
            row(&format!("{what} p50"), format!("{:.3} ms", l.p50_ms));
            row(&format!("{what} p99"), format!("{:.3} ms", l.p99_ms));
            row(&format!("{what} p99.9"), format!("{:.3} ms", l.p999_ms));
            row(&format!("{what} max"), format!("{:.3} ms", l.max_ms));
        }
        if let Some(b) = &self.broker {
            row("broker cpu", format!("{:.0} % of a core", b.cpu_percent));
            row(
                "broker rss start/max/end",
                format!("{:.1} / {:.1} / {:.1} MB", mb(b.rss_start_kb), mb(b.rss_max_kb), mb(b.rss_end_kb)),
            );
        }
        rows
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        table(&["", ""], &self.rows().into_iter().map(|(k, v)| vec![k, v]).collect::<Vec<_>>())
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// 1234567 -> "1,234,567".
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (idx, ch) in digits.chars().enumerate() {
        if idx > 0 && (digits.len() - idx).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A plain text table with a header row (omitted when all header cells are empty).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (idx, cell) in row.iter().enumerate().take(columns) {
            widths[idx] = widths[idx].max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::from("|");
        for (idx, cell) in cells.enumerate() {
            out.push_str(&format!(" {cell:<width$} |", width = widths[idx]));
        }
        out.push('\n');
        out
    };
    let rule = {
        let mut out = String::from("+");
        for width in &widths {
            out.push_str(&"-".repeat(width + 2));
            out.push('+');
        }
        out.push('\n');
        out
    };
    let mut out = rule.clone();
    if header.iter().any(|h| !h.is_empty()) {
        out.push_str(&line(&mut header.iter().copied()));
        out.push_str(&rule);
    }
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out.push_str(&rule);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut latencies = Latencies::default();
        // 1..=1000 microseconds, once each.
        for us in 1..=1000u64 {
            latencies.record_ns(us * 1000);
        }
        let summary = latencies.summary().expect("samples recorded");
        assert_eq!(summary.samples, 1000);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.002;
        assert!(close(summary.p50_ms, 0.5), "{summary:?}");
        assert!(close(summary.p99_ms, 0.99), "{summary:?}");
        assert!(close(summary.p999_ms, 0.999), "{summary:?}");
        assert!(close(summary.max_ms, 1.0), "{summary:?}");
        assert!(close(summary.mean_ms, 0.5005), "{summary:?}");
    }

    #[test]
    fn merging_and_clamping() {
        let mut a = Latencies::default();
        let mut b = Latencies::default();
        assert!(a.summary().is_none());
        a.record_ns(0);
        b.record_ns(u64::MAX);
        a.merge(&b);
        assert_eq!(a.len(), 2);
        let summary = a.summary().expect("samples recorded");
        assert!(summary.max_ms >= 59_000.0 && summary.max_ms <= 60_100.0, "{summary:?}");
    }

    #[test]
    fn groups_thousands() {
        for (n, text) in [(0, "0"), (999, "999"), (1000, "1,000"), (1_234_567, "1,234,567")] {
            assert_eq!(group(n), text);
        }
    }

    #[test]
    fn tables_align_columns() {
        let text = table(&["a", "bb"], &[vec!["long cell".into(), "x".into()]]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines.iter().all(|line| line.chars().count() == lines[0].chars().count()), "{text}");
        assert!(text.contains("| long cell | x  |"), "{text}");
    }
}
