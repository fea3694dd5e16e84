//! The progress bar while a run goes (on stderr, hidden when stderr is not a terminal or with --quiet).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Live counters for the progress bar and the drain.
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    /// Nanoseconds since the run's epoch of the last delivery seen.
    pub last_delivery_ns: AtomicU64,
}

/// How often the bar's rates are refreshed.
const TICK: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct Progress(ProgressBar);

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress(bar)
    }

    pub fn message(&self, message: String) {
        self.0.set_message(message);
    }

    /// Shows elapsed time over `duration` and the live rates until the returned task is aborted.
    pub fn track(&self, duration: Duration, counters: Arc<Counters>) -> tokio::task::JoinHandle<()> {
        let bar = self.0.clone();
        bar.set_length(duration.as_millis() as u64);
        bar.set_position(0);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {elapsed:>4} / {duration:4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(TICK);
            let (mut last_sent, mut last_delivered) = (0u64, 0u64);
            loop {
                tick.tick().await;
                let sent = counters.sent.load(Ordering::Relaxed);
                let delivered = counters.delivered.load(Ordering::Relaxed);
                let per_sec = |now: u64, before: u64| (now - before) as f64 / TICK.as_secs_f64();
                bar.set_position((start.elapsed().as_millis() as u64).min(duration.as_millis() as u64));
                bar.set_message(format!(
                    "sent {} ({:.0}/s)  delivered {} ({:.0}/s)",
                    crate::stats::group(sent),
                    per_sec(sent, last_sent),
                    crate::stats::group(delivered),
                    per_sec(delivered, last_delivered)
                ));
                (last_sent, last_delivered) = (sent, delivered);
            }
        })
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}
