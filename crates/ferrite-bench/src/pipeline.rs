//! The pipeline scenario: readings published to a running Ferrite, counted as rows in PostgreSQL and as
//! `sensor-update` frames on the gateway's WebSocket.
//!
//! Each run uses its own metric name (`bench<run id>`), so its rows and frames are told apart from
//! everything else, and devices `fb<run id>-NNNN` (auto-registered by the ingester).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use sqlx::postgres::PgPoolOptions;
use tokio::time::{Instant, sleep};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::config::PipelineArgs;
use crate::progress::Counters;
use crate::progress::Progress;
use crate::sampler::Sampler;
use crate::stats::{BrokerUsage, Latencies, LatencySummary, Pipeline};
use crate::traffic::{Body, Publisher, connect_all};
use crate::wire::ConnectOptions;

/// How often the row count is polled.
const POLL: Duration = Duration::from_millis(500);
/// Read buffer of each dashboard WebSocket; see `dashboard`.
const READ_BUFFER: usize = 16 * 1024;

pub struct PipelineOutcome {
    pub pipeline: Pipeline,
    pub broker: Option<BrokerUsage>,
}

pub async fn run(
    args: &PipelineArgs,
    options: &ConnectOptions,
    sampler: Option<Sampler>,
    progress: Progress,
) -> anyhow::Result<PipelineOutcome> {
    let run = crate::traffic::run_id();
    let metric = format!("bench{run}");
    let devices: Vec<String> = (1..=args.devices).map(|n| format!("fb{run}-{n:04}")).collect();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&args.database_url)
        .await
        .context("cannot connect to --database-url")?;

    let stop = CancellationToken::new();
    let updates = Arc::new(AtomicU64::new(0));
    let mut dashboards = Vec::new();
    for _ in 0..args.dashboards {
        let socket = dashboard(&args.gateway_url, &metric).await?;
        dashboards.push(tokio::spawn(watch(socket, updates.clone(), stop.clone())));
    }
    if args.dashboards > 0 {
        // The gateway subscribes at the broker asynchronously; give it a moment before readings flow
        // (once for all dashboards: they share the one subscription).
        sleep(Duration::from_millis(300)).await;
    }

    progress.message(format!("connecting {} devices", args.devices));
    let conns = connect_all(options, &format!("fb{run}-"), args.devices, |conn| async move { Ok(conn) })
        .await
        .context("cannot connect the devices")?;
    let counters = Arc::new(Counters::default());
    let epoch = std::time::Instant::now();
    let sampling = sampler.map(Sampler::start);
    let start = Instant::now();
    let end = start + args.duration;
    let mut senders = Vec::new();
    for (index, (conn, device)) in conns.into_iter().zip(&devices).enumerate() {
        let job = Publisher {
            index: index as u32,
            topic: format!("sensors/{device}/{metric}"),
            qos: args.qos.level(),
            body: Body::Reading,
            per_second: (args.rate > 0).then(|| args.rate as f64 / args.devices as f64),
            inflight: usize::from(args.inflight),
            drain: Duration::from_secs(30),
        };
        senders.push(tokio::spawn(job.run(conn, epoch, start, end, counters.clone())));
    }
    let ticker = progress.track(args.duration, counters.clone());
    let (mut sent, mut acked) = (0, 0);
    for sender in senders {
        let (s, a) = sender.await.context("a device task panicked")??;
        sent += s;
        acked += a;
    }
    let publish_secs = start.elapsed().as_secs_f64();
    let broker_cpu = sampling.as_ref().map(|s| s.cpu_now());
    ticker.abort();

    // Count rows until all arrived or the count stalls.
    progress.message("waiting for rows".to_owned());
    let mut committed = 0;
    let mut last_growth = Instant::now();
    let mut last_growth_secs = publish_secs;
    loop {
        let count = count_rows(&pool, &devices, &metric).await?;
        if count > committed {
            committed = count;
            last_growth = Instant::now();
            last_growth_secs = start.elapsed().as_secs_f64();
        }
        if committed >= sent || last_growth.elapsed() >= args.drain {
            break;
        }
        sleep(POLL).await;
    }
    // Let the dashboards receive what is still in flight, then stop them.
    sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let mut browser = Latencies::default();
    for dashboard in dashboards {
        browser.merge(&dashboard.await.context("a dashboard task panicked")??);
    }
    progress.finish();
    let publish_to_row = row_latency(&pool, &devices, &metric).await?;
    let broker = match (sampling, broker_cpu) {
        (Some(sampling), Some(cpu)) => Some(sampling.finish(cpu)?),
        _ => None,
    };
    let pipeline = Pipeline {
        devices: args.devices,
        sent,
        acked,
        committed,
        lost: sent.saturating_sub(committed),
        sent_per_s: sent as f64 / publish_secs.max(f64::MIN_POSITIVE),
        committed_per_s: committed as f64 / last_growth_secs.max(f64::MIN_POSITIVE),
        publish_to_row,
        dashboards: args.dashboards,
        browser_updates: updates.load(Ordering::Relaxed),
        publish_to_browser: browser.summary(),
    };
    pool.close().await;
    Ok(PipelineOutcome { pipeline, broker })
}

async fn count_rows(pool: &sqlx::PgPool, devices: &[String], metric: &str) -> anyhow::Result<u64> {
    let count: i64 = sqlx::query_scalar("select count(*) from readings where device_id = any($1) and metric = $2")
        .bind(devices)
        .bind(metric)
        .fetch_one(pool)
        .await
        .context("cannot count readings (is --database-url Ferrite's database?)")?;
    Ok(count.max(0) as u64)
}

/// Publish (the reading's `ts`) to `received_at`, the inserting transaction's `now()`.
async fn row_latency(pool: &sqlx::PgPool, devices: &[String], metric: &str) -> anyhow::Result<Option<LatencySummary>> {
    let row: (i64, Option<Vec<f64>>, Option<f64>, Option<f64>) = sqlx::query_as(
        "select count(*), \
                percentile_cont(array[0.5, 0.99, 0.999]) within group (order by extract(epoch from received_at - ts)::float8), \
                avg(extract(epoch from received_at - ts)::float8), \
                max(extract(epoch from received_at - ts)::float8) \
         from readings where device_id = any($1) and metric = $2",
    )
    .bind(devices)
    .bind(metric)
    .fetch_one(pool)
    .await
    .context("cannot compute publish-to-row latency")?;
    let (samples, Some(quantiles), Some(mean), Some(max)) = row else { return Ok(None) };
    let ms = |secs: f64| secs * 1000.0;
    Ok(Some(LatencySummary {
        samples: samples.max(0) as u64,
        mean_ms: ms(mean),
        p50_ms: ms(quantiles.first().copied().unwrap_or_default()),
        p99_ms: ms(quantiles.get(1).copied().unwrap_or_default()),
        p999_ms: ms(quantiles.get(2).copied().unwrap_or_default()),
        max_ms: ms(max),
    }))
}

/// How a `sensor-update` frame starts: the gateway writes `type` first (serde's internal tag).
const SENSOR_UPDATE_START: &str = r#"{"type":"sensor-update""#;
/// The same, anywhere in a frame, for a gateway that orders its fields differently.
const SENSOR_UPDATE: &str = r#""type":"sensor-update""#;
/// The key before a frame's timestamp.
const TS_KEY: &[u8] = br#""ts":""#;

/// The `ts` of a `sensor-update` frame in milliseconds since the Unix epoch, found without building a JSON tree:
/// with 100 dashboards the client reads up to a million frames a second on the machine it measures, so this must
/// cost little (a profile showed substring searches, RFC 3339 parsing and the clock at about a quarter of the client's CPU).
/// The gateway's own `YYYY-MM-DDTHH:MM:SS.mmmZ` is read field by field; any other RFC 3339 form goes through chrono.
fn update_ts_ms(frame: &str) -> Option<i64> {
    if !frame.starts_with(SENSOR_UPDATE_START) && !frame.contains(SENSOR_UPDATE) {
        return None;
    }
    // `ts` is among the last fields: searching from the end finds it after a few bytes.
    let bytes = frame.as_bytes();
    let start = bytes.windows(TS_KEY.len()).rposition(|window| window == TS_KEY)? + TS_KEY.len();
    let len = frame[start..].find('"')?;
    let text = &frame[start..start + len];
    gateway_ts_ms(text).or_else(|| chrono::DateTime::parse_from_rfc3339(text).ok().map(|ts| ts.timestamp_millis()))
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (what the gateway sends) in milliseconds since the Unix epoch.
fn gateway_ts_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (19, b'.'), (23, b'Z')];
    if b.len() != 24 || separators.iter().any(|&(at, byte)| b[at] != byte) {
        return None;
    }
    let number = |from: usize, to: usize| -> Option<u32> {
        b[from..to].iter().try_fold(0u32, |n, &digit| digit.is_ascii_digit().then(|| n * 10 + u32::from(digit - b'0')))
    };
    let date = chrono::NaiveDate::from_ymd_opt(i32::try_from(number(0, 4)?).ok()?, number(5, 7)?, number(8, 10)?)?;
    let time = date.and_hms_milli_opt(number(11, 13)?, number(14, 16)?, number(17, 19)?, number(20, 23)?)?;
    Some(time.and_utc().timestamp_millis())
}

/// Now, in nanoseconds since the Unix epoch (the clock the gateway's `ts` is on).
fn now_ns() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_nanos()).unwrap_or(i64::MAX)
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a dashboard WebSocket subscribed to this run's readings, once the gateway confirmed.
async fn dashboard(url: &str, metric: &str) -> anyhow::Result<Socket> {
    // A small read buffer: tungstenite zero-fills the free part of it before every read, and with 128 KiB
    // (its default) that memset was the client's hottest function (12 % of its CPU); frames are ~150 bytes and arrive a few KiB at a time.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .with_context(|| format!("cannot open the gateway WebSocket {url}"))?;
    let request = serde_json::json!({"type": "subscribe", "topics": [format!("sensors/+/{metric}")]});
    socket.send(Message::text(request.to_string())).await?;
    let confirmed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(frame) = socket.next().await {
            if let Message::Text(text) = frame? {
                let value: serde_json::Value = serde_json::from_str(&text)?;
                match value["type"].as_str() {
                    Some("subscribed") => return Ok(()),
                    Some("error") => bail!("the gateway refused the subscription: {}", value["message"]),
                    _ => {}
                }
            }
        }
        bail!("the gateway closed the WebSocket")
    })
    .await
    .context("no `subscribed` from the gateway within 10 s")?;
    confirmed?;
    Ok(socket)
}

/// Records the latency of every `sensor-update` until `stop`.
async fn watch(mut socket: Socket, updates: Arc<AtomicU64>, stop: CancellationToken) -> anyhow::Result<Latencies> {
    let mut latencies = Latencies::default();
    loop {
        let frame = tokio::select! {
            () = stop.cancelled() => break,
            frame = socket.next() => frame,
        };
        let Some(frame) = frame else { break };
        let Message::Text(text) = frame.context("dashboard WebSocket failed")? else { continue };
        let now = now_ns();
        if let Some(ts) = update_ts_ms(&text) {
            let ns = now.saturating_sub(ts.saturating_mul(1_000_000)).max(0) as u64;
            latencies.record_ns(ns);
            updates.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = socket.close(None).await;
    Ok(latencies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_timestamp_of_sensor_updates_only() {
        let frame = r#"{"type":"sensor-update","topic":"sensors/d/m","deviceId":"d","metric":"m","value":1.0,"ts":"2026-11-25T12:00:00.123Z"}"#;
        assert_eq!(update_ts_ms(frame), Some(1_795_608_000_123));
        let with_unit = r#"{"type":"sensor-update","topic":"sensors/d/m","deviceId":"d","metric":"m","value":1.0,"ts":"2026-11-25T12:00:00.123Z","unit":"C"}"#;
        assert_eq!(update_ts_ms(with_unit), Some(1_795_608_000_123));
        // Another field order, and RFC 3339 forms other than the gateway's own.
        let reordered = r#"{"ts":"2026-11-25T13:00:00.5+01:00","type":"sensor-update"}"#;
        assert_eq!(update_ts_ms(reordered), Some(1_795_608_000_500));
        assert_eq!(update_ts_ms(r#"{"type":"sensor-update","ts":"2026-11-25T12:00:00Z"}"#), Some(1_795_608_000_000));
        assert_eq!(update_ts_ms(r#"{"type":"status","deviceId":"d","online":true,"ts":"2026-11-25T12:00:00Z"}"#), None);
        assert_eq!(update_ts_ms(r#"{"type":"sensor-update","ts":"not a time"}"#), None);
        assert_eq!(update_ts_ms(r#"{"type":"sensor-update","ts":"2026-13-25T12:00:00.123Z"}"#), None);
        assert_eq!(update_ts_ms(r#"{"type":"sensor-update"}"#), None);
    }
}
