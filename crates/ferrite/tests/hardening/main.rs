//! Hostile input through the real binary: every item of the hardening issue has a test here that runs
//! `ferrite up` as a user would and attacks it as a device, a browser or an API client could.
//!
//! - `api`: hostile query parameters and slow clients against the registry's REST and gRPC APIs.
//! - `browser`: the gateway's `/dashboard` (Origin, `subscribed` after the broker's grant, retained commands,
//!   the browser cap, half-open HTTP connections).
//! - `dashboard`: the whole dashboard in Chromium against `ferrite up --fleet 12` (history, commands, rules, alerts).
//! - `support`: one `ferrite up` on free ports, its addresses read from the banner, its database.
//! - `identity`: who may connect as what (client-id rules, anonymous rights, a password-guessing flood, quotas,
//!   closing a deleted device's connection, command presence, the broker's `/mqtt` Origin check).
//! - `ingest`: poison messages and input bounds of the ingestion path (items 1 to 3).
//! - `readiness`: `/readyz` answers 503 naming the database or the MQTT session while either is unreachable.

mod api;
mod browser;
mod dashboard;
mod identity;
mod ingest;
mod readiness;
mod support;

use support::Platform;

/// The harness itself: every address read from the banner answers, and SIGTERM stops the platform cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_reaches_every_listener() -> anyhow::Result<()> {
    let platform = Platform::up(&[]).await?;
    let health = ferrite_testkit::http_request("GET", &format!("{}/healthz", platform.http), None, None).await?;
    assert_eq!(health.status, 200, "{:?}", platform.banner);
    let devices = ferrite_testkit::http_request("GET", &format!("{}/devices", platform.api), None, None).await?;
    assert_eq!(devices.status, 200, "{:?}", platform.banner);
    let pool = platform.pool().await?;
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename = 'dead_letters'").fetch_one(&pool).await?;
    assert_eq!(tables, 1);
    pool.close().await;
    tokio::net::TcpStream::connect(&platform.mqtt).await?;
    let status = platform.stop().await?;
    assert!(status.success(), "ferrite up exited with {status}");
    Ok(())
}

/// Nobody reading stdout any more (a closed terminal, `ferrite up | head`) must not turn a clean stop into a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_does_not_spoil_the_stop() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut child = support::spawn(&support::up_args(&[]), &dir.path().join("state"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    // Read the banner, then close our end of the pipe: the goodbye line meets a closed pipe.
    tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        lines.by_ref().map_while(Result::ok).find(|line| line.starts_with("Press Ctrl-C"))
    })
    .await?
    .expect("the banner ends with Press Ctrl-C");
    let status = support::terminate(child).await?;
    assert!(status.success(), "ferrite up exited with {status} after its stdout closed");
    Ok(())
}
