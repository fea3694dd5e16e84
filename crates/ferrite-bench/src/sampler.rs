//! Samples the broker process while a run goes: CPU over the measured phase, resident memory at its peak.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::procfs::{ProcSample, ProcWatch};
use crate::stats::BrokerUsage;

/// How often resident memory is read for its maximum.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// A broker to watch, not yet started.
#[derive(Clone, Debug)]
pub struct Sampler {
    pub pid: u32,
    watch: ProcWatch,
}

impl Sampler {
    /// Fails when `pid` is not a readable process.
    pub fn new(pid: u32) -> anyhow::Result<Sampler> {
        Ok(Sampler { pid, watch: ProcWatch::new(pid)? })
    }

    /// Takes the first sample and keeps sampling memory in the background.
    pub fn start(self) -> Sampling {
        let first = self.watch.sample().ok();
        let rss_max = Arc::new(AtomicU64::new(first.map_or(0, |s| s.rss_kb)));
        let task = {
            let watch = self.watch.clone();
            let rss_max = rss_max.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                loop {
                    tick.tick().await;
                    match watch.sample() {
                        Ok(sample) => {
                            rss_max.fetch_max(sample.rss_kb, Ordering::Relaxed);
                        }
                        Err(_) => break,
                    }
                }
            })
        };
        Sampling { sampler: self, first, rss_max, task }
    }

    pub fn sample(&self) -> anyhow::Result<ProcSample> {
        self.watch.sample()
    }
}

/// A broker being watched.
pub struct Sampling {
    sampler: Sampler,
    first: Option<ProcSample>,
    rss_max: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampling {
    /// A sample now, to end the CPU measurement at (e.g. when publishers stop).
    pub fn cpu_now(&self) -> Option<ProcSample> {
        self.sampler.watch.sample().ok()
    }

    /// Stops sampling and summarises; `cpu_end` closes the CPU window.
    pub fn finish(self, cpu_end: Option<ProcSample>) -> anyhow::Result<BrokerUsage> {
        self.task.abort();
        let first = self.first.ok_or_else(|| anyhow::anyhow!("the broker process {} vanished", self.sampler.pid))?;
        let end = match cpu_end {
            Some(end) => end,
            None => self.sampler.watch.sample()?,
        };
        let last = self.sampler.watch.sample().unwrap_or(end);
        Ok(BrokerUsage {
            pid: self.sampler.pid,
            cpu_percent: self.sampler.watch.cpu_percent(&first, &end),
            rss_start_kb: first.rss_kb,
            rss_max_kb: self.rss_max.load(Ordering::Relaxed).max(last.rss_kb),
            rss_end_kb: last.rss_kb,
        })
    }
}
