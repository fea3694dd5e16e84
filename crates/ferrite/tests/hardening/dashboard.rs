//! The dashboard of a whole platform (`ferrite up --fleet 12`) in a real headless Chromium (Debian's), driven by
//! playwright-core from `services/gateway/tests/js/platform.mjs`: every card has values and a sparkline from the
//! REST API on arrival (the time is measured and printed, not asserted), search by id and tag, a restart from a
//! card and a command from the device page through the commands API, the device page's time ranges and presence
//! history, and a rule
//! written in the rule editor firing into the alert list and resolving after an edit, and the `?token=` flow
//! (a wrong token is refused with advice, a right one is sent to the API as a bearer token). What the page did is then
//! checked through the REST API. Screenshots of each view are kept under `target/test-artifacts/`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};
use ferrite_testkit::http_request;
use serde_json::Value;

use crate::support::Platform;

/// Where Debian's `chromium` package puts the browser; `CHROMIUM` names another.
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";
/// The fleet: fewer devices than a page of cards holds, so every card is on the first page.
const FLEET: usize = 12;
/// The device the script restarts, commands and writes a rule for.
const DEVICE: &str = "sim-0003";

fn chromium() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from(DEFAULT_CHROMIUM), PathBuf::from);
    ensure!(
        path.exists(),
        "chromium not found at {}: apt install chromium (or set CHROMIUM to a Chromium binary)",
        path.display()
    );
    Ok(path)
}

/// The gateway's node tests, with playwright-core installed.
fn js_dir() -> anyhow::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../services/gateway/tests/js").canonicalize()?;
    let node = Command::new("node").arg("--version").output();
    ensure!(node.is_ok_and(|out| out.status.success()), "node not found: apt install nodejs (20 or later)");
    ensure!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run npm ci --prefix services/gateway/tests/js"
    );
    Ok(dir)
}

/// `target/test-artifacts` of the workspace, created if needed.
fn artifacts_dir() -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"), PathBuf::from);
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    dir.canonicalize().context("cannot resolve the artifacts directory")
}

/// Runs the script to its end and returns its events in order; a `fail` event or a bad exit is an error.
fn run_script(js: &Path, args: &[&str], chromium: &Path) -> anyhow::Result<Vec<Value>> {
    let mut child = Command::new("node")
        .arg(js.join("platform.mjs"))
        .args(args)
        .env("CHROMIUM", chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start node")?;
    let stdout = child.stdout.take().context("stdout is piped")?;
    let mut events = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("dashboard: {line}");
        let event: Value = serde_json::from_str(&line).with_context(|| format!("not a JSON event: {line}"))?;
        if event["event"] == "fail" {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the dashboard script failed: {}", event["message"]);
        }
        events.push(event);
    }
    let status = child.wait()?;
    ensure!(status.success(), "the dashboard script exited with {status}");
    Ok(events)
}

fn event<'a>(events: &'a [Value], name: &str) -> anyhow::Result<&'a Value> {
    events.iter().find(|event| event["event"] == name).with_context(|| format!("no {name} event in {events:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_of_a_platform() -> anyhow::Result<()> {
    let chromium = chromium()?;
    let js = js_dir()?;
    let shots = artifacts_dir()?;
    let platform = Platform::up(&["--fleet", &FLEET.to_string()]).await?;
    let url = format!("{}/", platform.http);
    let created = http_request(
        "POST",
        &format!("{}/tokens", platform.api),
        None,
        Some(("application/json", r#"{"name":"dashboard"}"#)),
    )
    .await?
    .json();
    let token = created["secret"].as_str().with_context(|| format!("a token: {created}"))?.to_owned();
    let (shots_arg, fleet_arg) = (shots.to_string_lossy().into_owned(), FLEET.to_string());
    let events = tokio::task::spawn_blocking(move || {
        run_script(&js, &[url.as_str(), shots_arg.as_str(), fleet_arg.as_str(), DEVICE, token.as_str()], &chromium)
    })
    .await??;

    let history = event(&events, "history")?;
    println!("history on every card {} ms after opening the page (measured, not asserted)", history["ms"]);
    ensure!(history["api"] == "on" && history["cards"] == FLEET && history["withValues"] == FLEET, "{history}");
    let stats = event(&events, "stats")?;
    let fleet = FLEET.to_string();
    ensure!(stats["devices"] == fleet.as_str() && stats["online"] == fleet.as_str(), "{stats}");
    let search = event(&events, "search")?;
    ensure!(
        search["byPrefix"] == serde_json::json!(["sim-0010", "sim-0011", "sim-0012"]) && search["byTag"] == FLEET,
        "{search}"
    );
    let ranges = event(&events, "ranges")?;
    for range in ["15m", "1h", "24h", "7d"] {
        let metrics = ranges["ranges"][range].as_array().with_context(|| format!("{ranges}"))?;
        ensure!(metrics.iter().any(|metric| metric == "temperature"), "no temperature chart for {range}: {ranges}");
    }
    let presence = ranges["presence"].as_array().with_context(|| format!("{ranges}"))?;
    ensure!(presence.iter().any(|item| item.as_str().is_some_and(|text| text.starts_with("api:online"))), "{ranges}");
    event(&events, "alert-resolved")?;
    let token = event(&events, "token")?;
    ensure!(token["refused"].as_str().is_some_and(|text| text.contains("?token=")), "{token}");
    ensure!(token["allBearer"] == true && token["localhost"] == "on", "{token}");
    event(&events, "done")?;

    // What the page did, as the API sees it.
    let api = &platform.api;
    let commands = http_request("GET", &format!("{api}/devices/{DEVICE}/commands"), None, None).await?.json();
    let outcome = |name: &str| {
        commands
            .as_array()
            .and_then(|all| all.iter().find(|command| command["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    ensure!(outcome("restart")["state"] == "ok", "the restart from the card is stored with its outcome: {commands}");
    let interval = outcome("set-interval");
    ensure!(interval["state"] == "ok" && interval["result"]["interval"] == 1.0, "{commands}");
    let rules = http_request("GET", &format!("{api}/rules"), None, None).await?.json();
    let rule = rules
        .as_array()
        .and_then(|all| all.iter().find(|rule| rule["name"] == "dashboard test"))
        .context("the rule")?;
    ensure!(rule["deviceId"] == DEVICE && rule["value"] == 1_000_000.0 && rule["severity"] == "critical", "{rule}");
    let alerts = http_request("GET", &format!("{api}/alerts?device={DEVICE}"), None, None).await?.json();
    let alert = alerts
        .as_array()
        .and_then(|all| all.iter().find(|alert| alert["rule"] == "dashboard test"))
        .context("the alert")?;
    ensure!(alert["state"] == "resolved", "{alerts}");

    for name in ["dashboard-grid.png", "dashboard-device.png", "dashboard-alerts.png"] {
        let path = shots.join(name);
        ensure!(path.exists(), "no screenshot at {}", path.display());
        println!("dashboard screenshot: {}", path.display());
    }
    let status = platform.stop().await?;
    ensure!(status.success(), "ferrite up exited with {status}");
    Ok(())
}

/// One raw HTTP/1.1 request to `addr` naming `host`, with these headers (bytes, as a hostile browser could send
/// them); the status, the head in lower case, and the body.
async fn raw_request(
    addr: &str,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
) -> anyhow::Result<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n").into_bytes();
    for (name, value) in headers {
        request.extend_from_slice(name.as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    stream.write_all(&request).await?;
    let mut response = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(30), stream.read_to_end(&mut response)).await??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    Ok((status, head.to_ascii_lowercase(), body.to_owned()))
}

/// The REST API answers the dashboard's cross-origin calls, and only its: the gateway's port under the name the
/// browser used, the same origin, and `--allowed-origins`; hostile `Origin` values get no CORS headers (their
/// preflight a 403 naming the flag) and never cost anyone else an answer. `/config.json` tells the page the port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_admits_the_dashboard_beside_it_and_no_other_page() -> anyhow::Result<()> {
    let platform = Platform::up(&["--allowed-origins", "https://dash.example.com"]).await?;
    let rest = platform.api.trim_start_matches("http://").trim_end_matches("/api/v1").to_owned();
    let http = platform.http.trim_start_matches("http://").to_owned();
    let (rest_port, http_port) =
        (rest.rsplit(':').next().context("a port")?, http.rsplit(':').next().context("a port")?);

    let config = http_request("GET", &format!("{}/config.json", platform.http), None, None).await?.json();
    ensure!(config["apiPort"].as_u64() == rest_port.parse().ok(), "{config}");

    let preflight = |origin: Vec<u8>| {
        let rest = rest.clone();
        async move {
            let headers: [(&str, &[u8]); 3] = [
                ("origin", &origin),
                ("access-control-request-method", b"POST"),
                ("access-control-request-headers", b"authorization, content-type"),
            ];
            raw_request(&rest, &rest, "OPTIONS", "/api/v1/devices/sim-0001/commands", &headers).await
        }
    };
    for admitted in [
        format!("http://127.0.0.1:{http_port}"),
        format!("http://localhost:{http_port}"),
        "https://dash.example.com".into(),
    ] {
        // The request's Host must carry the same name for the sibling rule; localhost is sent by a page under localhost.
        let rest_host =
            if admitted.contains("localhost") { rest.replace("127.0.0.1", "localhost") } else { rest.clone() };
        let headers: [(&str, &[u8]); 2] = [("origin", admitted.as_bytes()), ("access-control-request-method", b"GET")];
        let (status, head, _) = raw_request(&rest, &rest_host, "OPTIONS", "/api/v1/devices", &headers).await?;
        ensure!(
            status == 204 && head.contains(&format!("access-control-allow-origin: {admitted}")),
            "{admitted}: {status} {head}"
        );
    }
    let hostile: Vec<Vec<u8>> = vec![
        b"https://evil.example".to_vec(),
        b"null".to_vec(),
        b"http://127.0.0.1:1".to_vec(),
        format!("http://evil.example:{http_port}").into_bytes(),
        b"http://127.0.0.1:99999".to_vec(),
        vec![0xff, 0xfe, b'h', b't'],
        "h".repeat(4000).into_bytes(),
        b"*".to_vec(),
    ];
    for origin in hostile {
        let (status, head, body) = preflight(origin.clone()).await?;
        let shown = String::from_utf8_lossy(&origin);
        ensure!(!head.contains("access-control-allow-origin"), "{shown}: {head}");
        ensure!(status == 403 || status == 400, "{shown}: {status} {head}");
        if status == 403 {
            ensure!(body.contains("--allowed-origins"), "{shown}: {body}");
        }
        // A plain call from that page is served (scripts may call the API), but the browser is not let read it.
        let headers: [(&str, &[u8]); 1] = [("origin", &origin)];
        let (status, head, _) = raw_request(&rest, &rest, "GET", "/api/v1/devices", &headers).await?;
        ensure!(!head.contains("access-control-allow-origin"), "{shown}: {head}");
        ensure!(status == 200 || status == 400, "{shown}: {status}");
    }
    // Nobody else lost anything: the API still answers.
    ensure!(http_request("GET", &format!("{}/devices", platform.api), None, None).await?.status == 200);
    let status = platform.stop().await?;
    ensure!(status.success(), "ferrite up exited with {status}");
    Ok(())
}
