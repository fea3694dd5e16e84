//! Tracing for tests: silent by default, `TEST_LOG=1` (filtered by `RUST_LOG`) to see what happened.

use std::sync::Once;

use tracing_subscriber::EnvFilter;

/// What is shown with `TEST_LOG` set and no `RUST_LOG`.
const DEFAULT_FILTER: &str = "info";

/// Installs a tracing subscriber for this test process when `TEST_LOG` is set; does nothing otherwise.
///
/// Safe to call from every test and fixture: only the first call counts.
/// Output goes through the test harness's capture, so a passing test stays quiet even with `TEST_LOG`
/// unless `--nocapture` is given (nextest shows it for failing tests).
pub fn init_test_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if std::env::var_os("TEST_LOG").is_none() {
            return;
        }
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
        // A test may have installed its own subscriber first; then that one wins, which is what it wanted.
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}
