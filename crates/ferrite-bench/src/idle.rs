//! The idle scenario: open many connections, hold them, and weigh what each costs the broker.

use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::IdleArgs;
use crate::progress::Progress;
use crate::sampler::Sampler;
use crate::stats::{BrokerUsage, Idle, Latencies};
use crate::wire::{Conn, ConnectOptions};

/// Lets the broker's memory settle before and after the connections open.
const SETTLE: Duration = Duration::from_secs(1);

pub struct IdleOutcome {
    pub idle: Idle,
    /// CONNECT to CONNACK.
    pub connect_latencies: Latencies,
    pub broker: Option<BrokerUsage>,
}

pub async fn run(
    args: &IdleArgs,
    options: &ConnectOptions,
    sampler: Option<Sampler>,
    progress: Progress,
) -> anyhow::Result<IdleOutcome> {
    let run = crate::traffic::run_id();
    if sampler.is_some() {
        tokio::time::sleep(SETTLE).await;
    }
    let sampling = sampler.map(Sampler::start);
    let before = sampling.as_ref().and_then(|s| s.cpu_now());
    let stop = CancellationToken::new();
    let start = Instant::now();
    let mut latencies = Latencies::default();
    let mut holders = Vec::with_capacity(args.connections);
    let mut first_error = None;
    let mut attempts = futures::stream::iter(0..args.connections)
        .map(|idx| {
            let id = format!("fb-{run}-i{idx}");
            async move {
                let began = Instant::now();
                let conn = Conn::connect(options, &id).await;
                (conn, began.elapsed())
            }
        })
        .buffer_unordered(args.concurrency);
    while let Some((conn, took)) = attempts.next().await {
        match conn {
            Ok(conn) => {
                latencies.record_ns(took.as_nanos() as u64);
                holders.push(tokio::spawn(hold(conn, args.keep_alive, stop.clone())));
                if holders.len() % 100 == 0 {
                    progress.message(format!("{} of {} connections open", holders.len(), args.connections));
                }
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    let connect_secs = start.elapsed().as_secs_f64();
    let connected = holders.len();
    progress.message(format!("holding {connected} connections"));
    tokio::time::sleep(args.hold.max(SETTLE)).await;
    let after = sampling.as_ref().and_then(|s| s.cpu_now());
    let bytes_per_connection = match (&before, &after) {
        (Some(before), Some(after)) if connected > 0 => {
            Some((after.rss_kb as f64 - before.rss_kb as f64) * 1024.0 / connected as f64)
        }
        _ => None,
    };
    let broker = match sampling {
        Some(sampling) => Some(sampling.finish(after)?),
        None => None,
    };
    stop.cancel();
    let mut dropped = 0;
    for holder in holders {
        if !holder.await.unwrap_or(false) {
            dropped += 1;
        }
    }
    progress.finish();
    if connected == 0 {
        let error = first_error.unwrap_or_else(|| anyhow::anyhow!("no connection"));
        return Err(error.context("no connection could be opened"));
    }
    if let Some(error) = first_error {
        eprintln!("warning: {} connections failed; the first: {error:#}", args.connections - connected);
    }
    if dropped > 0 {
        eprintln!("warning: the broker closed {dropped} of the held connections");
    }
    let idle = Idle {
        connections: args.connections,
        connected: connected - dropped,
        connects_per_s: if connect_secs > 0.0 { connected as f64 / connect_secs } else { 0.0 },
        broker_bytes_per_connection: bytes_per_connection,
    };
    Ok(IdleOutcome { idle, connect_latencies: latencies, broker })
}

/// Keeps one connection alive (pings, discards whatever arrives) until `stop`; false if the broker closed it.
async fn hold(conn: Conn, keep_alive: Duration, stop: CancellationToken) -> bool {
    let Conn { mut stream, .. } = conn;
    let mut scratch = [0u8; 64];
    let ping_every = keep_alive / 2;
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                use tokio::io::AsyncWriteExt;
                let _ = stream.write_all(&[0xe0, 0x00]).await;
                return true;
            }
            read = stream.read(&mut scratch) => {
                if !matches!(read, Ok(n) if n > 0) {
                    return false;
                }
            }
            () = tokio::time::sleep(ping_every) => {
                use tokio::io::AsyncWriteExt;
                if stream.write_all(&[0xc0, 0x00]).await.is_err() {
                    return false;
                }
            }
        }
    }
}
