//! `/readyz` through the real binary: 200 only while the service's database answers and its MQTT sessions are
//! subscribed, 503 naming what is missing otherwise; `/healthz` stays 200 (liveness) throughout.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use ferrite_testkit::{HttpResponse, TestDb, TestMosquitto, http_request, wait_for};
use sqlx::ConnectOptions;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::support::{self, Platform};

async fn readyz(base: &str) -> anyhow::Result<HttpResponse> {
    http_request("GET", &format!("{base}/readyz"), None, None).await
}

/// Waits until `/readyz` answers `status`, and returns that answer's JSON.
async fn wait_for_readyz(base: &str, status: u16) -> anyhow::Result<serde_json::Value> {
    wait_for(&format!("/readyz to answer {status}"), || async move {
        readyz(base).await.is_ok_and(|response| response.status == status)
    })
    .await?;
    let response = readyz(base).await?;
    anyhow::ensure!(response.status == status, "/readyz changed its mind: {response:?}");
    Ok(response.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferrite_up_is_ready_once_subscribed() -> anyhow::Result<()> {
    let platform = Platform::up(&[]).await?;
    let report = wait_for_readyz(&platform.http, 200).await?;
    assert_eq!(report["ready"], true, "{report}");
    for check in ["database", "ingester_mqtt", "gateway_mqtt"] {
        assert_eq!(report["checks"][check], "ok", "{report}");
    }
    assert!(report["not_ready"].as_object().is_some_and(|not_ready| not_ready.is_empty()), "{report}");
    let status = platform.stop().await?;
    assert!(status.success(), "ferrite up exited with {status}");
    Ok(())
}

/// `ferrite ingester` against a database behind a proxy the test cuts, and a real Mosquitto the test stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingester_is_not_ready_without_its_database_or_broker() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let proxy = Proxy::start(db.connect_options().get_port()).await?;
    let database_url = db.connect_options().host("127.0.0.1").port(proxy.port).to_url_lossy().to_string();
    let mosquitto = TestMosquitto::start()?;
    let mut child = support::ferrite()
        .args(["ingester", "--metrics-addr", "127.0.0.1:0", "--ingester-id", "readiness-test"])
        .arg("--broker-url")
        .arg(mosquitto.url().to_string())
        .env("DATABASE_URL", &database_url)
        .env("RUST_LOG", std::env::var("TEST_LOG").unwrap_or_else(|_| "error".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout is piped")?;
    let base = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let line = lines.by_ref().map_while(Result::ok).find(|line| line.contains("/metrics"));
        // Keep reading, so the child never writes into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        line
    })
    .await?
    .context("the ingester printed no metrics address")?;
    let base = base.split_whitespace().find(|word| word.starts_with("http://")).context("an address")?;
    let base = base.trim_end_matches("/metrics").to_owned();

    let report = wait_for_readyz(&base, 200).await?;
    assert_eq!((&report["checks"]["database"], &report["checks"]["ingester_mqtt"]), (&"ok".into(), &"ok".into()));

    // The database becomes unreachable: not ready, naming the database only; still alive.
    proxy.cut();
    let report = wait_for_readyz(&base, 503).await?;
    let not_ready = report["not_ready"].as_object().context("not_ready is an object")?;
    assert_eq!(not_ready.keys().collect::<Vec<_>>(), ["database"], "{report}");
    assert_eq!(http_request("GET", &format!("{base}/healthz"), None, None).await?.status, 200);

    // It comes back: ready again, without a restart.
    proxy.restore();
    wait_for_readyz(&base, 200).await?;

    // The broker goes away: not ready, naming the ingester's sessions.
    drop(mosquitto);
    let report = wait_for_readyz(&base, 503).await?;
    let reason = report["not_ready"]["ingester_mqtt"].as_str().context("ingester_mqtt is not ready")?;
    assert!(reason.contains("not connected"), "{report}");

    let status = support::terminate(child).await?;
    assert!(status.success(), "the ingester exited with {status}");
    Ok(())
}

/// A TCP proxy to a local port whose traffic the test can cut (refusing new connections and closing live ones)
/// and restore, standing in for a database server that becomes unreachable.
struct Proxy {
    port: u16,
    blocked: Arc<AtomicBool>,
    cut: Arc<std::sync::Mutex<CancellationToken>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: u16) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let blocked = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let task = tokio::spawn({
            let (blocked, cut) = (blocked.clone(), cut.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if blocked.load(Ordering::SeqCst) {
                        continue;
                    }
                    let cancelled = cut.lock().expect("proxy lock").clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else { return };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            () = cancelled.cancelled() => {}
                        }
                    });
                }
            }
        });
        Ok(Proxy { port, blocked, cut, task })
    }

    fn cut(&self) {
        self.blocked.store(true, Ordering::SeqCst);
        let mut cut = self.cut.lock().expect("proxy lock");
        cut.cancel();
        *cut = CancellationToken::new();
    }

    fn restore(&self) {
        self.blocked.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut.lock().expect("proxy lock").cancel();
    }
}
