//! Traffic scenarios: fan-in, fan-out and shared subscriptions, each publisher and subscriber its own
//! connection and task.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use bytes::Buf;
use futures::StreamExt;
use rumqttc::Packet;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::config::{Shape, TrafficPlan};
use crate::progress::{Counters, Progress};
use crate::sampler::Sampler;
use crate::stamp::{SeqTracker, Stamp};
use crate::stats::{Latencies, Traffic};
use crate::wire::{Conn, ConnectOptions, Incoming, encode_publish, peek_packet};

/// Publishes encoded into one buffer before it is written: one system call per batch instead of per message.
const BATCH: u64 = 64;

/// Keep-alive our clients announce; they ping at half of it when otherwise silent.
pub const KEEP_ALIVE: Duration = Duration::from_secs(60);

/// Connections opened at once while a run sets up.
const CONNECT_CONCURRENCY: usize = 32;

/// Pause between the last SUBACK and the first publish, so a broker that installs subscriptions
/// asynchronously (shared groups, clusters) routes the first messages too.
const SETTLE: Duration = Duration::from_millis(200);

/// What one subscriber measured.
#[derive(Default)]
struct Received {
    latencies: Latencies,
    delivered: u64,
    duplicates: u64,
}

/// The result of a traffic run, before it becomes a [`crate::stats::Report`].
pub struct TrafficOutcome {
    pub traffic: Traffic,
    pub latencies: Latencies,
    pub broker: Option<crate::stats::BrokerUsage>,
}

/// A short random id so that concurrent or repeated runs never share topics or client ids.
pub fn run_id() -> String {
    format!("{:08x}", fastrand::u32(..))
}

/// Runs a traffic scenario against the broker in `plan`.
pub async fn run(
    plan: &TrafficPlan,
    options: &ConnectOptions,
    sampler: Option<Sampler>,
    progress: Progress,
) -> anyhow::Result<TrafficOutcome> {
    let run = run_id();
    let prefix = format!("bench/{run}");
    let filter = match plan.shape {
        Shape::Shared => format!("$share/bench/{prefix}/#"),
        Shape::FanIn | Shape::FanOut => format!("{prefix}/#"),
    };
    let qos = match plan.qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    };

    progress.message(format!("connecting {} subscribers", plan.subscribers));
    let subscribers = connect_all(options, &format!("fb-{run}-s"), plan.subscribers, |conn| {
        let filter = filter.clone();
        async move {
            let mut conn = conn;
            conn.subscribe(&filter, qos).await?;
            Ok(conn)
        }
    })
    .await
    .context("cannot set up the subscribers")?;
    progress.message(format!("connecting {} publishers", plan.publishers));
    let publishers = connect_all(options, &format!("fb-{run}-p"), plan.publishers, |conn| async move { Ok(conn) })
        .await
        .context("cannot set up the publishers")?;
    sleep(SETTLE).await;

    let counters = Arc::new(Counters::default());
    let stop_subscribers = CancellationToken::new();
    let epoch = std::time::Instant::now();
    let mut receivers = Vec::with_capacity(subscribers.len());
    for conn in subscribers {
        receivers.push(tokio::spawn(receive(conn, plan.publishers, epoch, counters.clone(), stop_subscribers.clone())));
    }

    let sampling = sampler.map(Sampler::start);
    let client = crate::procfs::ProcWatch::new(std::process::id()).ok();
    let client_start = client.as_ref().and_then(|watch| watch.sample().ok());
    let start = Instant::now();
    let end = start + plan.duration;
    let mut senders = Vec::with_capacity(publishers.len());
    for (index, conn) in publishers.into_iter().enumerate() {
        let job = Publisher {
            index: index as u32,
            topic: format!("{prefix}/p{index}"),
            qos: plan.qos,
            body: Body::Stamped(plan.payload),
            per_second: plan.rate.map(|rate| rate as f64 / plan.publishers as f64),
            inflight: usize::from(plan.inflight),
            drain: plan.drain.max(Duration::from_secs(5)),
        };
        senders.push(tokio::spawn(job.run(conn, epoch, start, end, counters.clone())));
    }

    let ticker = progress.track(plan.duration, counters.clone());
    let mut sent = 0;
    let mut acked = 0;
    let mut failure = None;
    for sender in senders {
        match sender.await.context("a publisher task panicked")? {
            Ok((s, a)) => {
                sent += s;
                acked += a;
            }
            Err(error) => failure = failure.or(Some(error)),
        }
    }
    let publish_end = Instant::now();
    let broker_cpu = sampling.as_ref().map(|s| s.cpu_now());
    let client_cpu_percent = match (&client, client_start) {
        (Some(watch), Some(first)) => watch.sample().ok().map(|end| watch.cpu_percent(&first, &end)),
        _ => None,
    };

    // Wait until everything expected arrived, or deliveries stalled for the drain period.
    let expected = sent * plan.copies_per_message();
    progress.message("draining".to_owned());
    let mut last = counters.delivered.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    while last < expected && last_change.elapsed() < plan.drain {
        sleep(Duration::from_millis(20)).await;
        let now = counters.delivered.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
    stop_subscribers.cancel();
    ticker.abort();
    progress.finish();

    let mut latencies = Latencies::default();
    let mut delivered = 0;
    let mut duplicates = 0;
    for receiver in receivers {
        match receiver.await.context("a subscriber task panicked")? {
            Ok(received) => {
                latencies.merge(&received.latencies);
                delivered += received.delivered;
                duplicates += received.duplicates;
            }
            Err(error) => failure = failure.or(Some(error)),
        }
    }
    if let Some(error) = failure {
        return Err(error.context("a client failed during the run"));
    }
    let broker = match (sampling, broker_cpu) {
        (Some(sampling), Some(cpu)) => Some(sampling.finish(cpu)?),
        _ => None,
    };

    let publish_secs = publish_end.duration_since(start).as_secs_f64();
    let last_delivery = Duration::from_nanos(counters.last_delivery_ns.load(Ordering::Relaxed));
    let start_ns = start.into_std().duration_since(epoch);
    let delivery_secs = last_delivery.saturating_sub(start_ns).as_secs_f64();
    let traffic = Traffic {
        publishers: plan.publishers,
        subscribers: plan.subscribers,
        qos: plan.qos,
        payload_bytes: plan.payload,
        target_rate: plan.rate,
        duration_s: publish_secs,
        sent,
        acked,
        expected,
        delivered,
        duplicates,
        lost: expected.saturating_sub(delivered),
        sent_per_s: rate(sent, publish_secs),
        delivered_per_s: rate(delivered, delivery_secs),
        client_cpu_percent,
    };
    Ok(TrafficOutcome { traffic, latencies, broker })
}

fn rate(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// Opens `count` connections `{id_prefix}{i}`, a few at a time, each finished by `setup`.
pub async fn connect_all<F, Fut>(
    options: &ConnectOptions,
    id_prefix: &str,
    count: usize,
    setup: F,
) -> anyhow::Result<Vec<Conn>>
where
    F: Fn(Conn) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Conn>>,
{
    let setup = &setup;
    let results: Vec<anyhow::Result<Conn>> = futures::stream::iter(0..count)
        .map(|idx| async move {
            let conn = Conn::connect(options, &format!("{id_prefix}{idx}")).await?;
            setup(conn).await
        })
        .buffered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// What a publisher puts in its messages.
#[derive(Clone, Copy, Debug)]
pub enum Body {
    /// A [`Stamp`] padded with zeros to this many bytes.
    Stamped(usize),
    /// A Ferrite JSON reading `{"value": seq, "ts": "...µs Z"}`: the timestamp is wall-clock time,
    /// made strictly increasing per publisher so that no two readings share a primary key.
    Reading,
}

/// One publishing client.
pub struct Publisher {
    pub index: u32,
    pub topic: String,
    pub qos: u8,
    pub body: Body,
    /// Target messages per second for this publisher; `None` publishes flat out.
    pub per_second: Option<f64>,
    pub inflight: usize,
    /// How long to wait for the last acknowledgements.
    pub drain: Duration,
}

/// Acknowledgement bookkeeping of a publisher.
#[derive(Default)]
struct Acks {
    inflight: usize,
    acked: u64,
}

impl Publisher {
    pub async fn run(
        self,
        mut conn: Conn,
        epoch: std::time::Instant,
        start: Instant,
        end: Instant,
        counters: Arc<Counters>,
    ) -> anyhow::Result<(u64, u64)> {
        let mut sent = 0u64;
        let mut acks = Acks::default();
        let mut pkid: u16 = 0;
        let ping_every = KEEP_ALIVE / 2;
        let mut last_write = Instant::now();
        let mut last_ts_us = 0i64;
        let mut text = String::with_capacity(64);
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            let due = match self.per_second {
                Some(per_second) => {
                    ((now.duration_since(start).as_secs_f64() * per_second) as u64).saturating_sub(sent)
                }
                None => BATCH,
            };
            let room = if self.qos == 0 { BATCH } else { (self.inflight - acks.inflight) as u64 };
            let count = due.min(room).min(BATCH);
            if count > 0 {
                let sent_ns = epoch.elapsed().as_nanos() as u64;
                let wall_us = chrono::Utc::now().timestamp_micros();
                for _ in 0..count {
                    sent += 1;
                    let id = if self.qos > 0 {
                        pkid = pkid.checked_add(1).unwrap_or(1);
                        pkid
                    } else {
                        0
                    };
                    match self.body {
                        Body::Stamped(len) => {
                            let stamp = Stamp { publisher: self.index, seq: sent, sent_ns }.encode();
                            encode_publish(&mut conn.wbuf, &self.topic, self.qos, id, &stamp, len);
                        }
                        Body::Reading => {
                            last_ts_us = wall_us.max(last_ts_us + 1);
                            reading_json(&mut text, sent, last_ts_us);
                            encode_publish(&mut conn.wbuf, &self.topic, self.qos, id, text.as_bytes(), text.len());
                        }
                    }
                }
                if self.qos > 0 {
                    acks.inflight += count as usize;
                }
                conn.flush().await?;
                last_write = Instant::now();
                counters.sent.fetch_add(count, Ordering::Relaxed);
            }
            while conn.try_read_more()? {}
            self.process(&mut conn, &mut acks)?;
            if count == 0 {
                // Nothing may go out now: wait for an acknowledgement, the next message's time, or the end.
                let wake = match self.per_second {
                    Some(per_second) if due == 0 => start + Duration::from_secs_f64((sent + 1) as f64 / per_second),
                    _ => end,
                }
                .min(end)
                .min(last_write + ping_every);
                tokio::select! {
                    read = conn.read_more() => read?,
                    () = sleep_until(wake) => {}
                }
                self.process(&mut conn, &mut acks)?;
            }
            if last_write.elapsed() >= ping_every {
                conn.send_pingreq();
            }
            if !conn.wbuf.is_empty() {
                conn.flush().await?;
                last_write = Instant::now();
            }
        }
        // Collect the last acknowledgements.
        let deadline = Instant::now() + self.drain;
        while acks.inflight > 0 {
            tokio::select! {
                read = conn.read_more() => read?,
                () = sleep_until(deadline) => break,
            }
            self.process(&mut conn, &mut acks)?;
            conn.flush().await?;
        }
        conn.send_disconnect();
        // The broker may close first; the counts are already known.
        let _ = conn.flush().await;
        Ok((sent, acks.acked))
    }

    /// Handles acknowledgements in the read buffer; answers PUBREC with PUBREL (QoS 2).
    fn process(&self, conn: &mut Conn, acks: &mut Acks) -> anyhow::Result<()> {
        while let Some((incoming, len)) = peek_packet(&mut conn.rbuf)? {
            let packet = match incoming {
                Incoming::Other(packet) => Some(packet),
                Incoming::Publish { .. } => None,
            };
            conn.rbuf.advance(len);
            match packet {
                Some(Packet::PubAck(_)) | Some(Packet::PubComp(_)) => {
                    acks.inflight = acks.inflight.saturating_sub(1);
                    acks.acked += 1;
                }
                Some(Packet::PubRec(rec)) => conn.send_pubrel(rec.pkid),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Writes `{"value":<seq>,"ts":"<RFC 3339 with microseconds>"}` into `out`.
pub fn reading_json(out: &mut String, seq: u64, ts_us: i64) {
    use std::fmt::Write;
    out.clear();
    let ts = chrono::DateTime::from_timestamp_micros(ts_us).unwrap_or_default();
    // Writing to a String cannot fail.
    let _ = write!(out, "{{\"value\":{seq},\"ts\":\"{}\"}}", ts.format("%Y-%m-%dT%H:%M:%S%.6fZ"));
}

/// What to answer a packet with, decided while the packet still borrows the read buffer.
enum Reply {
    None,
    PubAck(u16),
    PubRec(u16),
    PubComp(u16),
}

/// One subscribing client: records the latency of every message until `stop`.
async fn receive(
    mut conn: Conn,
    publishers: usize,
    epoch: std::time::Instant,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> anyhow::Result<Received> {
    let mut received = Received::default();
    let mut tracker = SeqTracker::new(publishers);
    let ping_every = KEEP_ALIVE / 2;
    let ping = sleep(ping_every);
    tokio::pin!(ping);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = &mut ping => {
                conn.send_pingreq();
                ping.as_mut().reset(Instant::now() + ping_every);
            }
            read = conn.read_more() => read?,
        }
        let now_ns = epoch.elapsed().as_nanos() as u64;
        let mut fresh = 0;
        while let Some((incoming, len)) = peek_packet(&mut conn.rbuf)? {
            let reply = match incoming {
                Incoming::Publish { qos, pkid, payload, .. } => {
                    if let Some(stamp) = Stamp::decode(payload)
                        && tracker.observe(&stamp)
                    {
                        received.latencies.record_ns(now_ns.saturating_sub(stamp.sent_ns));
                        fresh += 1;
                    }
                    match qos {
                        1 => Reply::PubAck(pkid),
                        2 => Reply::PubRec(pkid),
                        _ => Reply::None,
                    }
                }
                Incoming::Other(Packet::PubRel(rel)) => Reply::PubComp(rel.pkid),
                Incoming::Other(_) => Reply::None,
            };
            conn.rbuf.advance(len);
            match reply {
                Reply::None => {}
                Reply::PubAck(pkid) => conn.send_puback(pkid),
                Reply::PubRec(pkid) => conn.send_pubrec(pkid),
                Reply::PubComp(pkid) => conn.send_pubcomp(pkid),
            }
        }
        if fresh > 0 {
            received.delivered += fresh;
            counters.delivered.fetch_add(fresh, Ordering::Relaxed);
            counters.last_delivery_ns.fetch_max(now_ns, Ordering::Relaxed);
        }
        conn.flush().await?;
    }
    received.duplicates = tracker.duplicates;
    conn.send_disconnect();
    let _ = conn.flush().await;
    Ok(received)
}
