//! The dashboard in a real headless Chromium (Debian's), driven by playwright-core from `tests/js/dashboard.mjs`,
//! against a gateway without a REST API (live data only); the whole platform's dashboard is tested through the
//! binary (`crates/ferrite/tests/hardening/dashboard.rs`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use ferrite_fleet::Fleet;
use ferrite_testkit::WAIT_DEADLINE;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::{Harness, NodeScript, require_node};

/// Where Debian's `chromium` package puts the browser; `CHROMIUM` names another.
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";
/// Devices in the simulated fleet: more than the 24 cards of a page, so the grid pages.
const FLEET: usize = 30;
/// A device only the test publishes for, so its values are the test's own.
const LAB_DEVICE: &str = "lab-1";

fn chromium() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from(DEFAULT_CHROMIUM), PathBuf::from);
    if !path.exists() {
        bail!("chromium not found at {}: apt install chromium (or set CHROMIUM to a Chromium binary)", path.display());
    }
    Ok(path)
}

/// `target/test-artifacts` of the workspace, created if needed.
fn artifacts_dir() -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"), PathBuf::from);
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    dir.canonicalize().context("cannot resolve the artifacts directory")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_chromium() -> anyhow::Result<()> {
    let chromium = chromium()?;
    require_node(&["playwright-core", "mqtt"])?;
    let screenshot = artifacts_dir()?.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);

    let harness = Harness::start().await?;
    let fleet_stop = CancellationToken::new();
    let fleet_config = ferrite_fleet::Config::new(harness.broker().url(), FLEET);
    let fleet_device = fleet_config.device_id(1);
    let fleet = tokio::spawn(Fleet::bind(fleet_config)?.run(fleet_stop.clone()));
    let mqtt = harness.mqtt().await?;

    let screenshot_arg = screenshot.to_string_lossy().into_owned();
    let fleet_arg = FLEET.to_string();
    let url = harness.dashboard_url();
    let args = [url.as_str(), &screenshot_arg, &fleet_arg, LAB_DEVICE, &fleet_device];
    let mut script = NodeScript::spawn_with_env("dashboard.mjs", &args, &[("CHROMIUM", &chromium)])?;
    let step = Duration::from_secs(120);

    script.expect("connected", step).await?;
    let grid = script.expect("grid", step).await?;
    ensure!(grid["online"].as_u64() >= Some(FLEET as u64), "the header counts the fleet online: {grid}");
    ensure!(grid["cards"] == 24, "one page of cards: {grid}");
    let paged = script.expect("paged", step).await?;
    ensure!(paged["pages"] == "1 / 2", "{paged}");
    let second: Vec<&str> = paged["second"].as_array().context("ids")?.iter().filter_map(Value::as_str).collect();
    ensure!(second.len() == FLEET - 24 && second.iter().all(|id| id.starts_with("sim-")), "{paged}");

    let lab_topic = format!("sensors/{LAB_DEVICE}/temperature");
    script.expect("publish", step).await?;
    mqtt.publish(&lab_topic, json!({"value": 21.5, "unit": "C"}).to_string(), false).await?;
    script.tell("published").await?;
    script.expect("value", step).await?;
    script.expect("publish", step).await?;
    mqtt.publish(&lab_topic, json!({"value": 23.25, "unit": "C"}).to_string(), false).await?;
    script.tell("published").await?;
    script.expect("value-changed", step).await?;

    let live_only = script.expect("live-only", step).await?;
    ensure!(live_only["banner"].as_str().is_some_and(|text| text.contains("live data only")), "{live_only}");
    script.expect("explorer", step).await?;

    script.expect("publish", step).await?;
    let alert = json!({"rule": "hot", "deviceId": LAB_DEVICE, "metric": "temperature", "value": 23.25,
        "message": "lab-1 temperature above 23", "severity": "critical", "ts": chrono::Utc::now().to_rfc3339()});
    mqtt.publish(&format!("alerts/{LAB_DEVICE}"), alert.to_string(), false).await?;
    script.tell("published").await?;
    script.expect("alert", step).await?;
    script.expect("screenshot", step).await?;
    ensure!(screenshot.exists(), "no screenshot at {}", screenshot.display());
    println!("dashboard screenshot: {}", screenshot.display());
    let seed = script.expect("seed-snippet", step).await?;
    ensure!(seed["text"].as_str().is_some_and(|text| text.ends_with("°C")), "{seed}");
    script.expect("done", step).await?;
    script.finish().await?;

    fleet_stop.cancel();
    tokio::time::timeout(WAIT_DEADLINE, fleet).await.context("the fleet did not stop")???;
    harness.stop().await
}
