//! The registry's APIs against hostile clients (issue 12, item 4 and the HTTP/gRPC limits): tampered query
//! parameters are 400s / INVALID_ARGUMENT, and slow or silent sockets neither starve the APIs nor stay open.

use std::time::{Duration, Instant};

use anyhow::Context;
use ferrite_proto::v1::QueryRequest;
use ferrite_proto::v1::device_registry_client::DeviceRegistryClient;
use ferrite_proto::v1::telemetry_client::TelemetryClient;
use ferrite_testkit::http_request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::Platform;

/// The cursor of issue 12 (`b1|8210266876799998999|temperature`): its position lies ~260,000 years ahead.
const TAMPERED_CURSOR: &str = "YjF8ODIxMDI2Njg3Njc5OTk5ODk5OXx0ZW1wZXJhdHVyZQ";

/// Every hostile value of every query parameter is a 400 with a JSON error, never a panic or a 500,
/// over REST and (as INVALID_ARGUMENT) over gRPC; the platform keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_query_parameters_are_400s() -> anyhow::Result<()> {
    let platform = Platform::up(&[]).await?;
    let telemetry = |query: &str| format!("{}/devices/x/telemetry?{query}", platform.api);
    let hostile = [
        format!("metric=temperature&bucket=1m&cursor={TAMPERED_CURSOR}"),
        format!("metric=temperature&cursor={TAMPERED_CURSOR}"),
        format!("cursor={TAMPERED_CURSOR}"),
        "cursor=%00".to_owned(),
        format!("cursor={}", "A".repeat(4000)),
        "from=9223372036854775807".to_owned(),
        "from=-9223372036854775808".to_owned(),
        "to=99999999999999999999999".to_owned(),
        "from=%2B275760-09-13T00:00:00Z".to_owned(),
        "from=-262143-01-01T00:00:00Z".to_owned(),
        "from=1000-01-01T00:00:00Z".to_owned(),
        "from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z".to_owned(),
        "from=%00".to_owned(),
        "bucket=300000years".to_owned(),
        "bucket=18446744073709551615s".to_owned(),
        "bucket=1ns".to_owned(),
        "bucket=1ms&from=1900-01-01T00:00:00Z".to_owned(),
        "bucket=%00".to_owned(),
        "agg=median&bucket=1m".to_owned(),
        "agg=avg".to_owned(),
        "agg=%00".to_owned(),
        "limit=-1".to_owned(),
        "limit=4294967296".to_owned(),
        "limit=10001".to_owned(),
        "metric=%00".to_owned(),
        "metric=a%2Fb".to_owned(),
        format!("metric={}", "m".repeat(65)),
    ];
    for query in &hostile {
        let response = http_request("GET", &telemetry(query), None, None).await?;
        let message = response.expect_error(400);
        println!("{query:.80} -> 400 {message}");
    }
    // A cursor made for another device, bucket or metric is refused too: take a real one from a full page.
    let pool = platform.pool().await?;
    sqlx::query(
        "INSERT INTO readings (device_id, metric, ts, value)
         SELECT 'd1', 'temperature', now() - make_interval(secs => n), n FROM generate_series(1, 5) AS n",
    )
    .execute(&pool)
    .await?;
    sqlx::query("INSERT INTO devices (id) VALUES ('d1'), ('d2') ON CONFLICT DO NOTHING").execute(&pool).await?;
    pool.close().await;
    let page =
        http_request("GET", &format!("{}/devices/d1/telemetry?metric=temperature&limit=2", platform.api), None, None)
            .await?
            .ok();
    let cursor = page["nextCursor"].as_str().context("a full page has a next cursor")?.to_owned();
    let next = format!("{}/devices/d1/telemetry?metric=temperature&limit=2&cursor={cursor}", platform.api);
    assert_eq!(http_request("GET", &next, None, None).await?.ok()["points"].as_array().map(Vec::len), Some(2));
    for (query, why) in [
        (format!("devices/d2/telemetry?metric=temperature&cursor={cursor}"), "another device"),
        (format!("devices/d1/telemetry?metric=humidity&cursor={cursor}"), "another metric"),
        (format!("devices/d1/telemetry?metric=temperature&bucket=1m&cursor={cursor}"), "different bucket"),
    ] {
        let message = http_request("GET", &format!("{}/{query}", platform.api), None, None).await?.expect_error(400);
        assert!(message.contains(why), "{query}: {message}");
    }

    // gRPC: the same cursor, and timestamps and durations at the edges of their types.
    let mut client = TelemetryClient::connect(platform.grpc.clone()).await?;
    let base = QueryRequest { device_id: "x".into(), metric: "temperature".into(), ..QueryRequest::default() };
    let requests = [
        QueryRequest {
            bucket: Some(ferrite_proto::prost_types::Duration { seconds: 60, nanos: 0 }),
            cursor: TAMPERED_CURSOR.into(),
            ..base.clone()
        },
        QueryRequest { cursor: TAMPERED_CURSOR.into(), ..base.clone() },
        QueryRequest {
            from: Some(ferrite_proto::prost_types::Timestamp { seconds: i64::MAX, nanos: 0 }),
            ..base.clone()
        },
        QueryRequest {
            to: Some(ferrite_proto::prost_types::Timestamp { seconds: i64::MIN, nanos: -1 }),
            ..base.clone()
        },
        QueryRequest {
            bucket: Some(ferrite_proto::prost_types::Duration { seconds: i64::MAX, nanos: 999_999_999 }),
            ..base.clone()
        },
        QueryRequest {
            bucket: Some(ferrite_proto::prost_types::Duration { seconds: 9_223_372_036_854_775, nanos: 999_999_999 }),
            ..base.clone()
        },
        QueryRequest { agg: 99, ..base.clone() },
        QueryRequest { limit: u32::MAX, ..base.clone() },
        QueryRequest { metric: "\0".into(), ..base.clone() },
        QueryRequest { device_id: "\0".into(), ..base.clone() },
    ];
    for request in requests {
        let status = client.query(request.clone()).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{request:?}: {status:?}");
    }
    let devices = http_request("GET", &format!("{}/devices", platform.api), None, None).await?;
    assert_eq!(devices.status, 200, "the platform still answers");
    let status = platform.stop().await?;
    assert!(status.success(), "ferrite up exited with {status}");
    Ok(())
}

/// Sockets that send half a request head (REST) or half the HTTP/2 preface (gRPC) and then nothing: the REST and
/// gRPC APIs keep answering others at once, and the REST ones are closed after the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_neither_starve_the_apis_nor_stay_open() -> anyhow::Result<()> {
    const SLOW: usize = 150;
    let platform = Platform::up(&[]).await?;
    let rest_addr = host_port(&platform.api)?;
    let grpc_addr = host_port(&platform.grpc)?;
    let mut rest_sockets = Vec::new();
    let mut grpc_sockets = Vec::new();
    for _ in 0..SLOW {
        let mut socket = TcpStream::connect(&rest_addr).await?;
        socket.write_all(b"GET /api/v1/devices HTTP/1.1\r\nHost: ferrite\r\nX-Slow: ").await?;
        rest_sockets.push(socket);
        let mut socket = TcpStream::connect(&grpc_addr).await?;
        socket.write_all(b"PRI * HTTP/2.0\r\n").await?;
        grpc_sockets.push(socket);
    }
    let opened = Instant::now();

    let started = Instant::now();
    let devices = http_request("GET", &format!("{}/devices", platform.api), None, None).await?;
    assert_eq!(devices.status, 200);
    println!("REST answered in {:?} beside {SLOW} half-sent request heads", started.elapsed());
    let started = Instant::now();
    let mut registry = DeviceRegistryClient::connect(platform.grpc.clone()).await?;
    registry.list_devices(ferrite_proto::v1::ListDevicesRequest::default()).await?;
    println!("gRPC answered in {:?} beside {SLOW} half-sent prefaces", started.elapsed());
    // Answered while every slow socket was still open: nobody had to wait for them to time out.
    assert!(
        opened.elapsed() < ferrite_registry::HEADER_READ_TIMEOUT,
        "the calls took until the slow sockets were closed ({:?})",
        opened.elapsed()
    );

    // Each half-sent head is closed by the server (EOF or reset), well within a generous deadline.
    let closed = futures::future::join_all(rest_sockets.into_iter().map(|mut socket| async move {
        let mut buf = [0u8; 1024];
        let deadline = ferrite_registry::HEADER_READ_TIMEOUT * 4;
        loop {
            match tokio::time::timeout(deadline, socket.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                // hyper may answer 408 before closing; keep reading until the close.
                Ok(Ok(_)) => continue,
            }
        }
    }))
    .await;
    let open = closed.iter().filter(|closed| !**closed).count();
    println!("{} of {SLOW} half-sent REST heads closed after {:?}", SLOW - open, opened.elapsed());
    assert_eq!(open, 0, "half-sent request heads still open after {:?}", opened.elapsed());
    assert!(
        opened.elapsed() >= ferrite_registry::HEADER_READ_TIMEOUT - Duration::from_secs(1),
        "not before the timeout"
    );
    drop(grpc_sockets);

    let devices = http_request("GET", &format!("{}/devices", platform.api), None, None).await?;
    assert_eq!(devices.status, 200);
    let status = platform.stop().await?;
    assert!(status.success(), "ferrite up exited with {status}");
    Ok(())
}

/// `host:port` of an `http://host:port/...` URL.
fn host_port(url: &str) -> anyhow::Result<String> {
    let rest = url.strip_prefix("http://").context("an http:// URL")?;
    Ok(rest.split('/').next().unwrap_or(rest).to_owned())
}

/// Issue 12, item 7: `ferrite up` from a private directory (mode 0700 under a mode-0700 parent, like a clone in
/// `/root`) just works. As root the cluster then lives under `/var/lib/ferrite/postgres`, the data directory's
/// `postgres` is a link to it (so `cat .ferrite/postgres/password` and the port file still work), and the banner
/// says where the data is; a reading is stored, read back over the password and port files as psql would, and
/// is still there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_from_a_private_directory_just_works() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;

    let root = std::fs::metadata("/proc/self").map(|meta| std::os::unix::fs::MetadataExt::uid(&meta) == 0)?;
    if !root {
        println!(
            "SKIPPED (not root): the move of the cluster out of a private directory, which only happens as root; \
             running the private-directory start, store and restart as this user"
        );
    }
    let outer = tempfile::tempdir()?;
    let project = outer.path().join("clone");
    std::fs::create_dir(&project)?;
    for dir in [outer.path(), project.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let data_dir = project.join(".ferrite");
    let cluster_link = data_dir.join("postgres");

    let platform = Platform::up_in(None, data_dir.clone(), &[]).await?;
    let banner = platform.banner.join("\n");
    let postgres_line = platform.banner.iter().find(|line| line.contains("PostgreSQL")).context("a PostgreSQL line")?;
    println!("{postgres_line}");
    let moved_to = if root {
        let target = std::fs::read_link(&cluster_link).context("as root, .ferrite/postgres is a link")?;
        assert!(target.starts_with(ferrite_db::SHARED_BASE), "{target:?}");
        assert!(postgres_line.contains(&target.display().to_string()), "the banner names the data's place: {banner}");
        assert!(postgres_line.contains("linked from"), "{banner}");
        Some(target)
    } else {
        assert!(std::fs::symlink_metadata(&cluster_link)?.is_dir(), "as a user the cluster stays where it was named");
        None
    };
    let (host, port) = platform.mqtt_host_port();
    let published = crate::support::mosquitto_client(
        "mosquitto_pub",
        &["-h", host, "-p", &port.to_string(), "-q", "1", "-t", "sensors/private-1/temperature", "-m", "21.5"],
    );
    assert!(published.status.success(), "{}", String::from_utf8_lossy(&published.stderr));
    // Through the password and port files under the name the README gives, as `psql` would.
    let pool = platform.pool().await?;
    let stored = || async {
        sqlx::query_scalar::<_, f64>("SELECT value FROM readings WHERE device_id = 'private-1'")
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten()
            == Some(21.5)
    };
    ferrite_testkit::wait_for("the reading stored", stored).await?;
    pool.close().await;
    let status = platform.stop().await?;
    assert!(status.success(), "ferrite up exited with {status}");

    // A restart finds the same cluster through the link.
    let platform = Platform::up_in(None, data_dir.clone(), &[]).await?;
    let pool = platform.pool().await?;
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM readings WHERE device_id = 'private-1'").fetch_one(&pool).await?;
    assert_eq!(count, 1, "the reading survived the restart");
    pool.close().await;
    let status = platform.stop().await?;
    assert!(status.success(), "ferrite up exited with {status}");
    if let Some(target) = moved_to {
        std::fs::remove_dir_all(&target)?;
    }
    Ok(())
}
