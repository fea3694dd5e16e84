//! The registry as the broker's authorizer, driven by a real MQTT client (rumqttc) against the embedded broker:
//! credentials and their CONNACK codes, revocation, the topic ACL for v5 and v3.1.1, Last Will checks,
//! service accounts, presence end to end, and a burst of connections.

use std::sync::Arc;
use std::time::Duration;

use ferrite_registry::{AuthorizerConfig, RegistryAuthorizer, RegistryService, ServiceAccount, ServiceRole};
use ferrite_testkit::{TestDb, WAIT_DEADLINE};
use ferrite_testkit_broker::TestBroker;
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as V5Code, LastWill as V5Will, Packet as V5Packet};
use rumqttc::v5::mqttbytes::v5::{PubAckReason, SubscribeReasonCode as V5SubCode};
use rumqttc::{ConnectReturnCode as V4Code, LastWill as V4Will, Packet as V4Packet, QoS};
use secrecy::ExposeSecret;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::new_device;

const INGESTER_SECRET: &str = "ingester-test-secret";

/// A database, the registry service over it, and a broker that asks a [`RegistryAuthorizer`].
struct Setup {
    _db: TestDb,
    service: RegistryService,
    broker: TestBroker,
}

async fn setup(allow_anonymous: bool) -> anyhow::Result<Setup> {
    let db = TestDb::new().await?;
    let service = RegistryService::new(db.pool().clone());
    let config = AuthorizerConfig {
        allow_anonymous,
        services: vec![
            ServiceAccount::new(ServiceRole::Ingester, INGESTER_SECRET),
            ServiceAccount::new(ServiceRole::Admin, "admin-test-secret"),
        ],
    };
    let authorizer = Arc::new(RegistryAuthorizer::new(service.clone(), config)?);
    let broker = TestBroker::start_with(|config| config.authorizer = authorizer).await?;
    Ok(Setup { _db: db, service, broker })
}

impl Setup {
    /// Creates a device and returns its secret.
    async fn device(&self, id: &str) -> anyhow::Result<String> {
        let (_, credentials) = self.service.create_device(new_device(id, &[])).await?;
        Ok(credentials.secret.expose_secret().to_owned())
    }

    fn v5_options(&self, client_id: &str, credentials: Option<(&str, &str)>) -> rumqttc::v5::MqttOptions {
        let addr = self.broker.mqtt_addr();
        let mut options = rumqttc::v5::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        if let Some((username, password)) = credentials {
            options.set_credentials(username, password);
        }
        options
    }

    fn v4_options(&self, client_id: &str, credentials: Option<(&str, &str)>) -> rumqttc::MqttOptions {
        let addr = self.broker.mqtt_addr();
        let mut options = rumqttc::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        if let Some((username, password)) = credentials {
            options.set_credentials(username, password);
        }
        options
    }
}

/// A connected v5 client whose incoming packets arrive on `packets`.
struct V5Client {
    client: rumqttc::v5::AsyncClient,
    packets: mpsc::UnboundedReceiver<V5Packet>,
    driver: tokio::task::JoinHandle<()>,
}

/// Connects; `Err(code)` when the broker refuses with a CONNACK code.
async fn connect_v5(options: rumqttc::v5::MqttOptions) -> anyhow::Result<Result<V5Client, V5Code>> {
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 100);
    loop {
        let event = tokio::time::timeout(WAIT_DEADLINE, eventloop.poll()).await?;
        match event {
            Ok(rumqttc::v5::Event::Incoming(V5Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => return Ok(Err(code)),
            Err(err) => anyhow::bail!("v5 connection failed without a CONNACK code: {err:?}"),
        }
    }
    let (tx, packets) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let rumqttc::v5::Event::Incoming(packet) = event {
                let _ = tx.send(packet);
            }
        }
    });
    Ok(Ok(V5Client { client, packets, driver }))
}

impl V5Client {
    /// The next incoming packet that `pick` accepts.
    async fn expect<T>(&mut self, what: &str, mut pick: impl FnMut(V5Packet) -> Option<T>) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + WAIT_DEADLINE;
        loop {
            let packet = tokio::time::timeout_at(deadline, self.packets.recv())
                .await
                .map_err(|_| anyhow::anyhow!("no {what} within {WAIT_DEADLINE:?}"))?
                .ok_or_else(|| anyhow::anyhow!("connection ended before {what}"))?;
            if let Some(found) = pick(packet) {
                return Ok(found);
            }
        }
    }
}

/// A connected v3.1.1 client whose incoming packets arrive on `packets`.
struct V4Client {
    client: rumqttc::AsyncClient,
    packets: mpsc::UnboundedReceiver<V4Packet>,
}

async fn connect_v4(options: rumqttc::MqttOptions) -> anyhow::Result<Result<V4Client, V4Code>> {
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
    loop {
        let event = tokio::time::timeout(WAIT_DEADLINE, eventloop.poll()).await?;
        match event {
            Ok(rumqttc::Event::Incoming(V4Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Ok(Err(code)),
            Err(err) => anyhow::bail!("v3.1.1 connection failed without a CONNACK code: {err:?}"),
        }
    }
    let (tx, packets) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let rumqttc::Event::Incoming(packet) = event {
                let _ = tx.send(packet);
            }
        }
    });
    Ok(Ok(V4Client { client, packets }))
}

impl V4Client {
    async fn expect<T>(&mut self, what: &str, mut pick: impl FnMut(V4Packet) -> Option<T>) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + WAIT_DEADLINE;
        loop {
            let packet = tokio::time::timeout_at(deadline, self.packets.recv())
                .await
                .map_err(|_| anyhow::anyhow!("no {what} within {WAIT_DEADLINE:?}"))?
                .ok_or_else(|| anyhow::anyhow!("connection ended before {what}"))?;
            if let Some(found) = pick(packet) {
                return Ok(found);
            }
        }
    }
}

fn refused_v5<T>(result: Result<T, V5Code>) -> V5Code {
    match result {
        Ok(_) => panic!("the connection should have been refused"),
        Err(code) => code,
    }
}

fn refused_v4<T>(result: Result<T, V4Code>) -> V4Code {
    match result {
        Ok(_) => panic!("the connection should have been refused"),
        Err(code) => code,
    }
}

#[tokio::test]
async fn credentials_decide_who_connects() -> anyhow::Result<()> {
    let setup = setup(false).await?;
    let secret = setup.device("meter-1").await?;

    // The right secret, in both protocol versions.
    let good = connect_v5(setup.v5_options("meter-1", Some(("meter-1", &secret)))).await?;
    assert!(good.is_ok());
    let good = connect_v4(setup.v4_options("meter-1:v4", Some(("meter-1", &secret)))).await?;
    assert!(good.is_ok());
    // Another client's id, even with the right secret: taking over its session is not allowed.
    let code = refused_v5(connect_v5(setup.v5_options("ferrite-ingester", Some(("meter-1", &secret)))).await?);
    assert_eq!(code, V5Code::NotAuthorized);
    let code = refused_v4(connect_v4(setup.v4_options("meter-10", Some(("meter-1", &secret)))).await?);
    assert_eq!(code, V4Code::NotAuthorized);

    // A wrong password: v5 0x86, v3.1.1 code 4.
    let code = refused_v5(connect_v5(setup.v5_options("meter-1", Some(("meter-1", "wrong")))).await?);
    assert_eq!(code, V5Code::BadUserNamePassword);
    let code = refused_v4(connect_v4(setup.v4_options("meter-1", Some(("meter-1", "wrong")))).await?);
    assert_eq!(code, V4Code::BadUserNamePassword);
    // An unknown device, and a service account with the wrong secret.
    let code = refused_v5(connect_v5(setup.v5_options("ghost-1", Some(("ghost-1", &secret)))).await?);
    assert_eq!(code, V5Code::BadUserNamePassword);
    let code = refused_v5(connect_v5(setup.v5_options("m3", Some(("service:ingester", "nope")))).await?);
    assert_eq!(code, V5Code::BadUserNamePassword);
    // No credentials while anonymous clients are not allowed: v5 0x87, v3.1.1 code 5.
    let code = refused_v5(connect_v5(setup.v5_options("anon", None)).await?);
    assert_eq!(code, V5Code::NotAuthorized);
    let code = refused_v4(connect_v4(setup.v4_options("anon", None)).await?);
    assert_eq!(code, V4Code::NotAuthorized);
    // The service account with its secret.
    let service = connect_v5(setup.v5_options("ferrite-ingester", Some(("service:ingester", INGESTER_SECRET)))).await?;
    assert!(service.is_ok());
    Ok(())
}

#[tokio::test]
async fn anonymous_clients_connect_only_when_allowed() -> anyhow::Result<()> {
    let setup = setup(true).await?;
    let anonymous = connect_v5(setup.v5_options("anon", None)).await?;
    assert!(anonymous.is_ok());
    // Credentials that are sent are still checked.
    setup.device("meter-2").await?;
    let code = refused_v5(connect_v5(setup.v5_options("meter-2", Some(("meter-2", "wrong")))).await?);
    assert_eq!(code, V5Code::BadUserNamePassword);
    Ok(())
}

#[tokio::test]
async fn rotated_and_deleted_devices_are_refused_at_once() -> anyhow::Result<()> {
    let setup = setup(false).await?;
    let old = setup.device("valve-9").await?;
    // Connect once, so that the accepted password sits in the cache.
    assert!(connect_v5(setup.v5_options("valve-9", Some(("valve-9", &old)))).await?.is_ok());

    let new = setup.service.rotate_credentials("valve-9").await?;
    let new = new.secret.expose_secret().to_owned();
    let code = refused_v5(connect_v5(setup.v5_options("valve-9:a", Some(("valve-9", &old)))).await?);
    assert_eq!(code, V5Code::BadUserNamePassword);
    assert!(connect_v5(setup.v5_options("valve-9:b", Some(("valve-9", &new)))).await?.is_ok());

    setup.service.delete_device("valve-9").await?;
    let code = refused_v4(connect_v4(setup.v4_options("valve-9:c", Some(("valve-9", &new)))).await?);
    assert_eq!(code, V4Code::BadUserNamePassword);
    Ok(())
}

#[tokio::test]
async fn v5_publish_and_subscribe_outside_the_acl_are_refused() -> anyhow::Result<()> {
    let setup = setup(false).await?;
    let secret = setup.device("probe-1").await?;
    let mut watcher = connect_v5(setup.v5_options("watcher", Some(("service:admin", "admin-test-secret"))))
        .await?
        .map_err(|code| anyhow::anyhow!("watcher refused: {code:?}"))?;
    watcher.client.subscribe("#", V5QoS::AtLeastOnce).await?;
    watcher.expect("watcher suback", |p| matches!(p, V5Packet::SubAck(_)).then_some(())).await?;

    let mut device = connect_v5(setup.v5_options("probe-1", Some(("probe-1", &secret))))
        .await?
        .map_err(|code| anyhow::anyhow!("device refused: {code:?}"))?;

    // Refused first, allowed after: the watcher sees messages of one connection in order,
    // so once the allowed one arrives the refused ones would already have been there.
    for topic in ["sensors/probe-2/temperature", "devices/probe-2/status", "commands/probe-1", "alerts/probe-1"] {
        device.client.publish(topic, V5QoS::AtLeastOnce, false, "21.5").await?;
        let reason = device.expect("puback", |p| match p {
            V5Packet::PubAck(ack) => Some(ack.reason),
            _ => None,
        });
        assert_eq!(reason.await?, PubAckReason::NotAuthorized, "{topic}");
    }
    for topic in ["sensors/probe-1/temperature", "devices/probe-1/status", "commands/probe-1/response"] {
        device.client.publish(topic, V5QoS::AtLeastOnce, false, "ok").await?;
        let reason = device.expect("puback", |p| match p {
            V5Packet::PubAck(ack) => Some(ack.reason),
            _ => None,
        });
        assert!(matches!(reason.await?, PubAckReason::Success | PubAckReason::NoMatchingSubscribers), "{topic}");
    }
    let mut delivered = Vec::new();
    while delivered.len() < 3 {
        let topic = watcher
            .expect("delivery", |p| match p {
                V5Packet::Publish(publish) => Some(String::from_utf8_lossy(&publish.topic).into_owned()),
                _ => None,
            })
            .await?;
        delivered.push(topic);
    }
    assert_eq!(delivered, ["sensors/probe-1/temperature", "devices/probe-1/status", "commands/probe-1/response"]);

    // Subscriptions: only its own command topic.
    for (filter, allowed) in
        [("commands/probe-2", false), ("#", false), ("sensors/+/temperature", false), ("commands/probe-1", true)]
    {
        device.client.subscribe(filter, V5QoS::AtLeastOnce).await?;
        let codes = device.expect("suback", |p| match p {
            V5Packet::SubAck(ack) => Some(ack.return_codes),
            _ => None,
        });
        let codes = codes.await?;
        if allowed {
            assert!(matches!(codes[..], [V5SubCode::Success(_)]), "{filter}: {codes:?}");
        } else {
            assert_eq!(codes, [V5SubCode::NotAuthorized], "{filter}");
        }
    }
    // Still connected and served after all the refusals.
    watcher.client.publish("commands/probe-1", V5QoS::AtLeastOnce, false, r#"{"id":"1","name":"ping"}"#).await?;
    let topic = device
        .expect("command", |p| match p {
            V5Packet::Publish(publish) => Some(String::from_utf8_lossy(&publish.topic).into_owned()),
            _ => None,
        })
        .await?;
    assert_eq!(topic, "commands/probe-1");
    device.driver.abort();
    Ok(())
}

#[tokio::test]
async fn v311_publish_outside_the_acl_is_dropped_and_subscribe_fails() -> anyhow::Result<()> {
    let setup = setup(false).await?;
    let secret = setup.device("probe-3").await?;
    let mut watcher = connect_v4(setup.v4_options("watcher", Some(("service:admin", "admin-test-secret"))))
        .await?
        .map_err(|code| anyhow::anyhow!("watcher refused: {code:?}"))?;
    watcher.client.subscribe("sensors/#", QoS::AtLeastOnce).await?;
    watcher.expect("watcher suback", |p| matches!(p, V4Packet::SubAck(_)).then_some(())).await?;

    let mut device = connect_v4(setup.v4_options("probe-3", Some(("probe-3", &secret))))
        .await?
        .map_err(|code| anyhow::anyhow!("device refused: {code:?}"))?;
    // v3.1.1 has no refusal code for PUBLISH: the broker acknowledges and drops it; the device stays connected.
    device.client.publish("sensors/probe-4/temperature", QoS::AtLeastOnce, false, "99").await?;
    device.expect("puback", |p| matches!(p, V4Packet::PubAck(_)).then_some(())).await?;
    device.client.publish("sensors/probe-3/temperature", QoS::AtLeastOnce, false, "21").await?;
    device.expect("puback", |p| matches!(p, V4Packet::PubAck(_)).then_some(())).await?;
    let topic = watcher
        .expect("delivery", |p| match p {
            V4Packet::Publish(publish) => Some(publish.topic),
            _ => None,
        })
        .await?;
    assert_eq!(topic, "sensors/probe-3/temperature", "the refused publish was not delivered");

    device.client.subscribe("commands/probe-4", QoS::AtLeastOnce).await?;
    let codes = device
        .expect("suback", |p| match p {
            V4Packet::SubAck(ack) => Some(ack.return_codes),
            _ => None,
        })
        .await?;
    assert_eq!(codes, [rumqttc::SubscribeReasonCode::Failure]);
    Ok(())
}

#[tokio::test]
async fn a_last_will_aimed_at_another_device_is_refused() -> anyhow::Result<()> {
    let setup = setup(false).await?;
    let secret = setup.device("door-5").await?;

    let mut options = setup.v5_options("door-5", Some(("door-5", &secret)));
    options.set_last_will(V5Will::new("devices/door-6/status", "offline", V5QoS::AtLeastOnce, true, None));
    assert_eq!(refused_v5(connect_v5(options).await?), V5Code::NotAuthorized);

    let mut options = setup.v4_options("door-5", Some(("door-5", &secret)));
    options.set_last_will(V4Will::new("devices/door-6/status", "offline", QoS::AtLeastOnce, true));
    assert_eq!(refused_v4(connect_v4(options).await?), V4Code::NotAuthorized);

    let mut options = setup.v5_options("door-5", Some(("door-5", &secret)));
    options.set_last_will(V5Will::new("devices/door-5/status", "offline", V5QoS::AtLeastOnce, true, None));
    assert!(connect_v5(options).await?.is_ok(), "its own status topic is fine");
    Ok(())
}

#[tokio::test]
async fn presence_stream_reports_a_device_whose_socket_dies() -> anyhow::Result<()> {
    let setup = setup(false).await?;
    let secret = setup.device("lamp-7").await?;

    // The ingester turns `devices/+/status` into presence rows, with its service account.
    let mut ingest = ferrite_ingester::Config::new(setup.broker.url());
    ingest.credentials = Some(ferrite_core::Credentials::new("service:ingester", INGESTER_SECRET));
    ingest.client_id = "ferrite-ingester-test".into();
    let ingester = ferrite_ingester::Ingester::bind(ingest, setup.service.pool().clone()).await?;
    let stop = CancellationToken::new();
    let ingesting = tokio::spawn(ingester.run(stop.clone()));
    let listener = ferrite_registry::PresenceListener::listen(setup.service.clone()).await?;
    tokio::spawn(listener.run(stop.clone()));

    let mut watch = setup.service.watch_presence(vec!["lamp-7".into()], false).await?;

    let mut options = setup.v5_options("lamp-7", Some(("lamp-7", &secret)));
    options.set_last_will(V5Will::new("devices/lamp-7/status", "offline", V5QoS::AtLeastOnce, true, None));
    let mut device = connect_v5(options).await?.map_err(|code| anyhow::anyhow!("device refused: {code:?}"))?;
    device.client.publish("devices/lamp-7/status", V5QoS::AtLeastOnce, true, "online").await?;
    device.expect("puback", |p| matches!(p, V5Packet::PubAck(_)).then_some(())).await?;
    let online = tokio::time::timeout(WAIT_DEADLINE, watch.recv()).await?.expect("watching")?;
    assert!(online.online);

    // Kill the connection without DISCONNECT: the broker publishes the Last Will.
    device.driver.abort();
    drop(device);
    let offline = tokio::time::timeout(WAIT_DEADLINE, watch.recv()).await?.expect("watching")?;
    assert_eq!((offline.device_id.as_str(), offline.online), ("lamp-7", false));

    stop.cancel();
    tokio::time::timeout(WAIT_DEADLINE, ingesting).await???;
    Ok(())
}

/// A thousand clients of fifty devices connect at once: every one is let in, and the cache means
/// argon2 runs about once per device rather than once per connection.
#[tokio::test]
async fn a_burst_of_a_thousand_connections_authenticates() -> anyhow::Result<()> {
    const DEVICES: usize = 50;
    const CONNECTIONS: usize = 1000;
    let setup = setup(false).await?;
    let mut secrets = Vec::new();
    for n in 0..DEVICES {
        let id = format!("burst-{n:03}");
        let secret = setup.device(&id).await?;
        secrets.push((id, secret));
    }
    let mut connecting = tokio::task::JoinSet::new();
    for n in 0..CONNECTIONS {
        let (id, secret) = secrets[n % DEVICES].clone();
        let options = setup.v4_options(&format!("{id}:{n}"), Some((&id, &secret)));
        connecting.spawn(async move {
            let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(V4Packet::ConnAck(_))) => return Ok((client, eventloop)),
                    Ok(_) => {}
                    Err(err) => return Err(format!("{id}:{n}: {err:?}")),
                }
            }
        });
    }
    let mut connected = Vec::new();
    let mut failures = Vec::new();
    while let Some(joined) = tokio::time::timeout(Duration::from_secs(120), connecting.join_next()).await? {
        match joined? {
            Ok(connection) => connected.push(connection),
            Err(failure) => failures.push(failure),
        }
    }
    assert!(failures.is_empty(), "{} of {CONNECTIONS} failed, e.g. {:?}", failures.len(), failures.first());
    assert_eq!(connected.len(), CONNECTIONS);
    Ok(())
}

/// The new user's path: create a device with the CLI, publish with mosquitto_pub and the issued credentials,
/// find the reading stored, and the device over REST.
#[tokio::test]
async fn mosquitto_pub_with_issued_credentials_gets_its_reading_stored() -> anyhow::Result<()> {
    use clap::Parser;

    let registry = crate::support::TestRegistry::start(false).await?;
    let config = AuthorizerConfig {
        allow_anonymous: false,
        services: vec![ServiceAccount::new(ServiceRole::Ingester, INGESTER_SECRET)],
    };
    let authorizer = Arc::new(RegistryAuthorizer::new(registry.service.clone(), config)?);
    let broker = TestBroker::start_with(|config| config.authorizer = authorizer).await?;
    let mut ingest = ferrite_ingester::Config::new(broker.url());
    ingest.credentials = Some(ferrite_core::Credentials::new("service:ingester", INGESTER_SECRET));
    let ingester = ferrite_ingester::Ingester::bind(ingest, registry.pool().clone()).await?;
    let stop = CancellationToken::new();
    let ingesting = tokio::spawn(ingester.run(stop.clone()));

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        device: ferrite_registry::cli::DeviceArgs,
    }
    let url = registry.grpc_url();
    let cli = Cli::try_parse_from(["device", "--registry", &url, "create", "kitchen-1", "--name", "Kitchen"])?;
    let mut out = Vec::new();
    ferrite_registry::cli::run_device_command(cli.device, &mut out).await?;
    let out = String::from_utf8(out)?;
    let password = out.lines().find_map(|line| line.strip_prefix("MQTT password: ")).expect("password printed");

    let addr = broker.mqtt_addr();
    let published = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string(), "-V", "mqttv5", "-q", "1"])
        .args(["-i", "kitchen-1", "-u", "kitchen-1", "-P", password])
        .args(["-t", "sensors/kitchen-1/temperature", "-m", "21.5"])
        .output()
        .await;
    let published = match published {
        Ok(output) => output,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            panic!("mosquitto_pub not found: apt-get install mosquitto-clients (.ci/run does)")
        }
        Err(err) => return Err(err.into()),
    };
    assert!(published.status.success(), "mosquitto_pub failed: {}", String::from_utf8_lossy(&published.stderr));

    // The wrong password gets "not authorized"-style refusal from mosquitto_pub too.
    let refused = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string(), "-V", "mqttv5", "-q", "1"])
        .args(["-i", "kitchen-1", "-u", "kitchen-1", "-P", "wrong", "-t", "sensors/kitchen-1/temperature", "-m", "1"])
        .output()
        .await?;
    assert!(!refused.status.success());

    let pool = registry.pool().clone();
    ferrite_testkit::wait_for("the reading to be stored", || {
        let pool = pool.clone();
        async move {
            let stored: Option<f64> = sqlx::query_scalar(
                "select value from readings where device_id = 'kitchen-1' and metric = 'temperature'",
            )
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten();
            stored == Some(21.5)
        }
    })
    .await?;

    let device = crate::support::http("GET", &registry.url("/api/v1/devices/kitchen-1"), None, None).await?;
    assert_eq!(device.status, 200);
    assert_eq!(device.json()["name"], "Kitchen");
    assert_eq!(device.json()["autoRegistered"], false);

    stop.cancel();
    tokio::time::timeout(WAIT_DEADLINE, ingesting).await???;
    Ok(())
}
