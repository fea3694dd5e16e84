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
use crate::progress::Progress;
use crate::sampler::Sampler;
use crate::stats::{BrokerUsage, Latencies, LatencySummary, Pipeline};
use crate::traffic::{Body, Counters, Publisher, connect_all};
use crate::wire::ConnectOptions;

/// How often the row count is polled.
const POLL: Duration = Duration::from_millis(500);

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

/// The `ts` of a `sensor-update` frame, found without building a JSON tree: with 100 dashboards the client
/// reads hundreds of thousands of frames a second and must not become the bottleneck it measures.
fn update_ts(frame: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if !frame.contains(r#""type":"sensor-update""#) {
        return None;
    }
    let start = frame.find(r#""ts":""#)? + 6;
    let len = frame[start..].find('"')?;
    let ts = chrono::DateTime::parse_from_rfc3339(&frame[start..start + len]).ok()?;
    Some(ts.with_timezone(&chrono::Utc))
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a dashboard WebSocket subscribed to this run's readings, once the gateway confirmed.
async fn dashboard(url: &str, metric: &str) -> anyhow::Result<Socket> {
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
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
    // The gateway subscribes at the broker asynchronously; give it a moment before readings flow.
    sleep(Duration::from_millis(300)).await;
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
        let now = chrono::Utc::now();
        if let Some(ts) = update_ts(&text) {
            let ns = (now - ts).num_nanoseconds().unwrap_or(0).max(0) as u64;
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
        let ts = update_ts(frame).expect("a sensor update");
        assert_eq!(ts.timestamp_millis(), 1_795_608_000_123);
        assert_eq!(update_ts(r#"{"type":"status","deviceId":"d","online":true,"ts":"2026-11-25T12:00:00Z"}"#), None);
        assert_eq!(update_ts(r#"{"type":"sensor-update","ts":"not a time"}"#), None);
        assert_eq!(update_ts(r#"{"type":"sensor-update"}"#), None);
    }
}
