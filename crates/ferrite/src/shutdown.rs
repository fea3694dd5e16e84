//! Shutdown: SIGINT and SIGTERM handled in one place; a second signal exits at once.

use tokio_util::sync::CancellationToken;

/// The longest each stage of shutdown may take before we move on without it.
pub const GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Signals closer together than this count as one.
const REPEAT_WINDOW: std::time::Duration = std::time::Duration::from_millis(500);

/// A token cancelled on the first SIGINT or SIGTERM. A second signal exits the process immediately,
/// for the user who does not want to wait for the drain.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down (press Ctrl-C again to exit at once)");
        cancel.cancel();
        let first = tokio::time::Instant::now();
        // The same signal often arrives twice at once (a supervisor signalling both the process and its
        // group, as `timeout` does); only a deliberate second one, a moment later, skips the drain.
        loop {
            wait_for_signal().await;
            if first.elapsed() > REPEAT_WINDOW {
                break;
            }
        }
        eprintln!("exiting without draining");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Waits for a service task, but no longer than [`GRACE`]; a stuck service is reported and abandoned.
pub async fn join(name: &str, task: tokio::task::JoinHandle<anyhow::Result<()>>) {
    let abort = task.abort_handle();
    match tokio::time::timeout(GRACE, task).await {
        Ok(Ok(Ok(()))) => tracing::debug!(service = name, "stopped"),
        Ok(Ok(Err(error))) => tracing::error!(service = name, error = format!("{error:#}"), "stopped with an error"),
        Ok(Err(error)) => tracing::error!(service = name, %error, "task failed"),
        Err(_) => {
            tracing::warn!(service = name, "did not stop within {GRACE:?}; abandoning it");
            abort.abort();
        }
    }
}
