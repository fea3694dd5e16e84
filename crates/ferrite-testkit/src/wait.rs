//! Polling for a condition with a generous deadline: tests wait for outcomes, they never assert timings.

use std::future::Future;
use std::time::Duration;

/// Long enough for a loaded 2-core CI machine; reaching it means the outcome is not coming.
pub const WAIT_DEADLINE: Duration = Duration::from_secs(30);

/// Polls `condition` every 20 ms until it holds; fails, naming `what`, after [`WAIT_DEADLINE`].
pub async fn wait_for<F, Fut>(what: &str, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT_DEADLINE;
    loop {
        if condition().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("gave up waiting for {what} after {WAIT_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
