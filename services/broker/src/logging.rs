//! Forwards the `log` records of rmqtt and sled into `tracing`, keeping them at warn and above unless asked.
//!
//! rmqtt logs every connection and refusal at info and much more at debug, so its records are
//! cut to warnings unless `RUST_LOG` names one of its crates. Records of other crates pass through.
//!
//! Only one `log` logger can exist per process. tracing-subscriber's `try_init` installs its own
//! bridge (`tracing_log::LogTracer`); when that happened first, this one is not installed and
//! the subscriber's filter alone decides (give it `rmqtt=warn,sled=warn` to stay quiet).
//! When no tracing subscriber is set yet, nothing is installed either, because a subscriber set up
//! later with `init()` would panic on finding a `log` logger already in place.

use std::sync::Once;

use tracing_log::LogTracer;
use tracing_log::log;

/// The `log` targets that are noisy below warn: rmqtt's crates and the sled database under them.
const QUIET_TARGETS: [&str; 2] = ["rmqtt", "sled"];

/// Installs the bridge once per process, if the conditions in the module docs allow it.
pub(crate) fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if !tracing::dispatcher::has_been_set() {
            return;
        }
        let verbose = std::env::var("RUST_LOG")
            .map(|directives| QUIET_TARGETS.iter().any(|target| directives.contains(target)))
            .unwrap_or(false);
        let bridge = QuietBridge { inner: LogTracer::new(), verbose };
        if log::set_boxed_logger(Box::new(bridge)).is_ok() {
            // Records more verbose than the subscriber wants are then skipped at the call site.
            log::set_max_level(max_level_of_subscriber());
        }
    });
}

fn max_level_of_subscriber() -> log::LevelFilter {
    match tracing::level_filters::LevelFilter::current().into_level() {
        None => log::LevelFilter::Off,
        Some(tracing::Level::ERROR) => log::LevelFilter::Error,
        Some(tracing::Level::WARN) => log::LevelFilter::Warn,
        Some(tracing::Level::INFO) => log::LevelFilter::Info,
        Some(tracing::Level::DEBUG) => log::LevelFilter::Debug,
        Some(tracing::Level::TRACE) => log::LevelFilter::Trace,
    }
}

struct QuietBridge {
    inner: LogTracer,
    /// `RUST_LOG` names a quiet target, so its filter decides instead of us.
    verbose: bool,
}

impl QuietBridge {
    fn muted(&self, metadata: &log::Metadata<'_>) -> bool {
        !self.verbose
            && metadata.level() > log::Level::Warn
            && QUIET_TARGETS.iter().any(|target| metadata.target().starts_with(target))
    }
}

impl log::Log for QuietBridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        !self.muted(metadata) && self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.muted(record.metadata()) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn muted(bridge: &QuietBridge, target: &str, level: log::Level) -> bool {
        bridge.muted(&log::MetadataBuilder::new().target(target).level(level).build())
    }

    #[test]
    fn rmqtt_and_sled_are_cut_to_warnings_and_other_crates_pass() {
        let quiet = QuietBridge { inner: LogTracer::new(), verbose: false };
        assert!(muted(&quiet, "rmqtt::session", log::Level::Info));
        assert!(muted(&quiet, "rmqtt_retainer::storage", log::Level::Debug));
        assert!(muted(&quiet, "sled::pagecache", log::Level::Info));
        assert!(!muted(&quiet, "rmqtt::session", log::Level::Warn));
        assert!(!muted(&quiet, "rmqtt::plugin", log::Level::Error));
        assert!(!muted(&quiet, "rumqttc::state", log::Level::Debug));

        let verbose = QuietBridge { inner: LogTracer::new(), verbose: true };
        assert!(!muted(&verbose, "rmqtt::session", log::Level::Debug));
    }
}
