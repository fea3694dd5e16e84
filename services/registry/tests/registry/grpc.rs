//! The gRPC face over a real socket: every operation, its error codes, tokens, health, reflection and presence streams.

use ferrite_proto::v1 as pb;
use ferrite_proto::v1::api_tokens_client::ApiTokensClient;
use ferrite_proto::v1::device_registry_client::DeviceRegistryClient;
use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::support::{TestRegistry, set_presence};

fn create_request(id: &str, tags: &[&str]) -> pb::CreateDeviceRequest {
    let metadata = ferrite_proto::prost_types::Struct {
        fields: [(
            "floor".to_owned(),
            ferrite_proto::prost_types::Value { kind: Some(ferrite_proto::prost_types::value::Kind::NumberValue(2.0)) },
        )]
        .into(),
    };
    pb::CreateDeviceRequest {
        id: id.to_owned(),
        name: format!("device {id}"),
        tags: tags.iter().map(|tag| (*tag).to_owned()).collect(),
        metadata: Some(metadata),
    }
}

#[tokio::test]
async fn every_operation_round_trips() -> anyhow::Result<()> {
    let registry = TestRegistry::start(false).await?;
    let mut client = registry.devices().await?;

    let created = client.create_device(create_request("hall-1", &["hall"])).await?.into_inner();
    let device = created.device.expect("device");
    let credentials = created.credentials.expect("credentials");
    assert_eq!(device.id, "hall-1");
    assert_eq!(device.name, "device hall-1");
    assert!(device.has_credentials);
    assert!(device.created_at.is_some());
    assert_eq!((credentials.username.as_str(), credentials.secret.len()), ("hall-1", 64));
    assert!(registry.service.verify_device_secret("hall-1", credentials.secret.as_bytes()).await?);

    let fetched = client.get_device(pb::GetDeviceRequest { id: "hall-1".into() }).await?.into_inner();
    assert_eq!(fetched, device);

    let updated = client
        .update_device(pb::UpdateDeviceRequest {
            id: "hall-1".into(),
            name: None,
            tags: Some(pb::Tags { tags: vec!["moved".into()] }),
            metadata: None,
        })
        .await?
        .into_inner();
    assert_eq!(updated.name, "device hall-1", "unset fields stay");
    assert_eq!(updated.tags, vec!["moved"]);
    assert_eq!(updated.metadata, device.metadata);
    let cleared = client
        .update_device(pb::UpdateDeviceRequest {
            id: "hall-1".into(),
            name: Some(String::new()),
            tags: None,
            metadata: None,
        })
        .await?
        .into_inner();
    assert_eq!(cleared.name, "");

    let rotated = client.rotate_credentials(pb::RotateCredentialsRequest { id: "hall-1".into() }).await?.into_inner();
    assert_ne!(rotated.secret, credentials.secret);
    assert!(!registry.service.verify_device_secret("hall-1", credentials.secret.as_bytes()).await?);
    assert!(registry.service.verify_device_secret("hall-1", rotated.secret.as_bytes()).await?);

    client.delete_device(pb::DeleteDeviceRequest { id: "hall-1".into() }).await?;
    let gone = client.get_device(pb::GetDeviceRequest { id: "hall-1".into() }).await.expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);
    registry.stop().await
}

#[tokio::test]
async fn errors_have_the_right_codes() -> anyhow::Result<()> {
    let registry = TestRegistry::start(false).await?;
    let mut client = registry.devices().await?;
    client.create_device(create_request("dup-1", &[])).await?;

    let check = |result: Result<tonic::Response<_>, tonic::Status>, code: Code| {
        let status = result.map(|_: tonic::Response<pb::Device>| ()).expect_err("should fail");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(!status.message().is_empty());
    };
    let duplicate = client.create_device(create_request("dup-1", &[])).await.expect_err("duplicate");
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    let invalid = client.create_device(create_request("bad/id", &[])).await.expect_err("invalid");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    check(client.get_device(pb::GetDeviceRequest { id: "nobody".into() }).await, Code::NotFound);
    check(client.get_device(pb::GetDeviceRequest { id: "a b".into() }).await, Code::InvalidArgument);
    check(
        client
            .update_device(pb::UpdateDeviceRequest {
                id: "nobody".into(),
                name: Some("x".into()),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    let bad_cursor = client
        .list_devices(pb::ListDevicesRequest { page_token: "#".into(), ..Default::default() })
        .await
        .expect_err("bad cursor");
    assert_eq!(bad_cursor.code(), Code::InvalidArgument);
    let rotate = client.rotate_credentials(pb::RotateCredentialsRequest { id: "nobody".into() }).await.expect_err("x");
    assert_eq!(rotate.code(), Code::NotFound);
    let delete = client.delete_device(pb::DeleteDeviceRequest { id: "nobody".into() }).await.expect_err("x");
    assert_eq!(delete.code(), Code::NotFound);
    registry.stop().await
}

#[tokio::test]
async fn paging_and_filters() -> anyhow::Result<()> {
    let registry = TestRegistry::start(false).await?;
    let mut client = registry.devices().await?;
    for n in 1..=5 {
        let tags: &[&str] = if n <= 2 { &["roof"] } else { &["cellar"] };
        client.create_device(create_request(&format!("pump-{n}"), tags)).await?;
    }
    client.create_device(create_request("valve-1", &["roof"])).await?;
    set_presence(registry.pool(), "pump-4", true).await?;

    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_devices(pb::ListDevicesRequest { page_size: 2, page_token, ..Default::default() })
            .await?
            .into_inner();
        assert!(page.devices.len() <= 2);
        ids.extend(page.devices.into_iter().map(|device| device.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(ids, ["pump-1", "pump-2", "pump-3", "pump-4", "pump-5", "valve-1"]);

    let list = |request: pb::ListDevicesRequest| {
        let mut client = client.clone();
        async move {
            let page = client.list_devices(request).await?.into_inner();
            anyhow::Ok(page.devices.into_iter().map(|device| device.id).collect::<Vec<_>>())
        }
    };
    let roof = list(pb::ListDevicesRequest { tags: vec!["roof".into()], ..Default::default() }).await?;
    assert_eq!(roof, ["pump-1", "pump-2", "valve-1"]);
    let online =
        list(pb::ListDevicesRequest { presence: pb::PresenceFilter::Online as i32, ..Default::default() }).await?;
    assert_eq!(online, ["pump-4"]);
    let offline_pumps = list(pb::ListDevicesRequest {
        presence: pb::PresenceFilter::Offline as i32,
        id_prefix: "pump".into(),
        tags: vec!["cellar".into()],
        ..Default::default()
    })
    .await?;
    assert_eq!(offline_pumps, ["pump-3", "pump-5"]);
    registry.stop().await
}

#[tokio::test]
async fn tokens_guard_every_call_when_required() -> anyhow::Result<()> {
    let registry = TestRegistry::start(true).await?;
    let mut anonymous = registry.devices().await?;
    let refused = anonymous.list_devices(pb::ListDevicesRequest::default()).await.expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut anonymous_tokens = ApiTokensClient::new(registry.channel().await?);
    let refused = anonymous_tokens.list_tokens(pb::ListTokensRequest::default()).await.expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);

    let issued = registry.service.create_token("test").await?;
    let secret = secrecy::ExposeSecret::expose_secret(&issued.secret).to_owned();
    let header: MetadataValue<_> = format!("Bearer {secret}").parse()?;
    let channel = registry.channel().await?;
    let with_token = {
        let header = header.clone();
        move |mut request: tonic::Request<()>| {
            request.metadata_mut().insert("authorization", header.clone());
            Ok(request)
        }
    };
    let mut devices = DeviceRegistryClient::with_interceptor(channel.clone(), with_token.clone());
    let mut tokens = ApiTokensClient::with_interceptor(channel, with_token);
    devices.list_devices(pb::ListDevicesRequest::default()).await?;

    let second = tokens.create_token(pb::CreateTokenRequest { name: "second".into() }).await?.into_inner();
    assert!(second.secret.starts_with("fer_"));
    let listed = tokens.list_tokens(pb::ListTokensRequest::default()).await?.into_inner();
    assert_eq!(listed.tokens.len(), 2);
    tokens.revoke_token(pb::RevokeTokenRequest { id: issued.token.id.to_string() }).await?;
    let refused = devices.list_devices(pb::ListDevicesRequest::default()).await.expect_err("revoked");
    assert_eq!(refused.code(), Code::Unauthenticated);
    registry.stop().await
}

#[tokio::test]
async fn health_and_reflection_answer() -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    // Both stay open when tokens are required, so that probes and tools work without one.
    let registry = TestRegistry::start(true).await?;
    let mut health = HealthClient::new(registry.channel().await?);
    for service in ["", "ferrite.v1.DeviceRegistry", "ferrite.v1.ApiTokens"] {
        let request = tonic_health::pb::HealthCheckRequest { service: service.into() };
        let status = health.check(request).await?.into_inner().status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(registry.channel().await?);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("ferrite.v1.DeviceRegistry".into()),
    ]
    .map(|message| ServerReflectionRequest { host: String::new(), message_request: Some(message) });
    let mut answers = reflection.server_reflection_info(tokio_stream::iter(requests)).await?.into_inner();

    let Some(MessageResponse::ListServicesResponse(listed)) = answers.message().await?.and_then(|r| r.message_response)
    else {
        anyhow::bail!("no service list");
    };
    let names: Vec<String> = listed.service.into_iter().map(|service| service.name).collect();
    for expected in ["ferrite.v1.DeviceRegistry", "ferrite.v1.ApiTokens", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|name| name == expected), "{expected} missing from {names:?}");
    }
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        answers.message().await?.and_then(|r| r.message_response)
    else {
        anyhow::bail!("no file descriptor");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    registry.stop().await
}

#[tokio::test]
async fn presence_stream_reports_going_offline() -> anyhow::Result<()> {
    let registry = TestRegistry::start(false).await?;
    let mut client = registry.devices().await?;
    client.create_device(create_request("lamp-1", &[])).await?;
    set_presence(registry.pool(), "lamp-1", true).await?;

    let request = pb::WatchPresenceRequest { device_ids: vec!["lamp-1".into()], include_current: true };
    let mut stream = client.watch_presence(request).await?.into_inner();
    let first = next_event(&mut stream).await?;
    assert_eq!((first.device_id.as_str(), first.online), ("lamp-1", true));

    set_presence(registry.pool(), "lamp-1", false).await?;
    let change = next_event(&mut stream).await?;
    assert_eq!((change.device_id.as_str(), change.online), ("lamp-1", false));
    assert!(change.changed_at.is_some());

    // Shutting down ends open streams instead of waiting for them forever.
    registry.stop().await?;
    let ended = tokio::time::timeout(ferrite_testkit::WAIT_DEADLINE, stream.message()).await?;
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");
    Ok(())
}

async fn next_event(stream: &mut tonic::Streaming<pb::PresenceEvent>) -> anyhow::Result<pb::PresenceEvent> {
    let event = tokio::time::timeout(ferrite_testkit::WAIT_DEADLINE, stream.message()).await??;
    event.ok_or_else(|| anyhow::anyhow!("stream ended"))
}
