//! The domain service on its own: every operation, paging and filters, tokens, and the presence feed.

use std::time::Duration;

use ferrite_registry::{DeviceChanges, DeviceFilter, PageRequest, PresenceListener, RegistryError};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::support::{new_device, service, set_presence};

#[tokio::test]
async fn devices_round_trip() -> anyhow::Result<()> {
    let (_db, service) = service().await?;
    let (device, credentials) = service.create_device(new_device("kitchen-1", &["room", "room", "floor-1"])).await?;
    assert_eq!(device.id, "kitchen-1");
    assert_eq!(device.tags, vec!["room", "floor-1"], "duplicate tags are dropped");
    assert_eq!(device.metadata, serde_json::json!({"site": "lab"}));
    assert!(device.has_credentials);
    assert!(device.presence.is_none());
    assert_eq!(credentials.device_id, "kitchen-1");
    assert_eq!(credentials.secret.expose_secret().len(), 64);

    let again = service.create_device(new_device("kitchen-1", &[])).await;
    assert!(matches!(again, Err(RegistryError::DeviceExists(_))), "{again:?}");

    let fetched = service.get_device("kitchen-1").await?;
    assert_eq!(fetched, device);

    let changes = DeviceChanges {
        name: Some(None),
        tags: Some(vec!["moved".into()]),
        metadata: Some(serde_json::json!({"site": "attic"})),
    };
    let updated = service.update_device("kitchen-1", changes).await?;
    assert_eq!(updated.name, None);
    assert_eq!(updated.tags, vec!["moved"]);
    assert_eq!(updated.metadata, serde_json::json!({"site": "attic"}));
    assert!(updated.updated_at >= device.updated_at);

    // Only what is set changes.
    let renamed = service
        .update_device("kitchen-1", DeviceChanges { name: Some(Some("Kitchen".into())), ..Default::default() })
        .await?;
    assert_eq!(renamed.name.as_deref(), Some("Kitchen"));
    assert_eq!(renamed.tags, vec!["moved"]);

    service.delete_device("kitchen-1").await?;
    assert!(matches!(service.get_device("kitchen-1").await, Err(RegistryError::DeviceNotFound(_))));
    assert!(matches!(service.delete_device("kitchen-1").await, Err(RegistryError::DeviceNotFound(_))));
    Ok(())
}

#[tokio::test]
async fn bad_input_is_refused_before_the_database() -> anyhow::Result<()> {
    let (_db, service) = service().await?;
    for id in ["", "a/b", "sensors/#", &"x".repeat(65)] {
        let created = service.create_device(new_device(id, &[])).await;
        assert!(matches!(created, Err(RegistryError::InvalidArgument(_))), "{id:?}: {created:?}");
        assert!(matches!(service.get_device(id).await, Err(RegistryError::InvalidArgument(_))), "{id:?}");
    }
    let mut not_object = new_device("ok-1", &[]);
    not_object.metadata = serde_json::json!([1, 2]);
    assert!(matches!(service.create_device(not_object).await, Err(RegistryError::InvalidArgument(_))));
    assert!(matches!(
        service.create_device(new_device("ok-1", &["has space"])).await,
        Err(RegistryError::InvalidArgument(_))
    ));
    let update = service.update_device("missing", DeviceChanges::default()).await;
    assert!(matches!(update, Err(RegistryError::DeviceNotFound(_))), "{update:?}");
    let rotate = service.rotate_credentials("missing").await;
    assert!(matches!(rotate, Err(RegistryError::DeviceNotFound(_))), "{rotate:?}");
    Ok(())
}

#[tokio::test]
async fn auto_registered_devices_are_adopted() -> anyhow::Result<()> {
    let (db, service) = service().await?;
    sqlx::query("insert into devices (id, auto_registered) values ('stray-1', true)").execute(db.pool()).await?;
    let (device, _) = service.create_device(new_device("stray-1", &["adopted"])).await?;
    assert!(!device.auto_registered);
    assert_eq!(device.tags, vec!["adopted"]);
    Ok(())
}

#[tokio::test]
async fn credentials_verify_and_rotate() -> anyhow::Result<()> {
    let (_db, service) = service().await?;
    let (_, first) = service.create_device(new_device("meter-7", &[])).await?;
    let first = first.secret.expose_secret().as_bytes().to_vec();
    assert!(service.verify_device_secret("meter-7", &first).await?);
    assert!(!service.verify_device_secret("meter-7", b"wrong").await?);
    assert!(!service.verify_device_secret("nobody", &first).await?);

    let second = service.rotate_credentials("meter-7").await?;
    let second = second.secret.expose_secret().as_bytes().to_vec();
    assert!(!service.verify_device_secret("meter-7", &first).await?, "the old secret is refused at once");
    assert!(service.verify_device_secret("meter-7", &second).await?);

    service.delete_device("meter-7").await?;
    assert!(!service.verify_device_secret("meter-7", &second).await?, "a deleted device is refused at once");
    Ok(())
}

#[tokio::test]
async fn paging_and_filters() -> anyhow::Result<()> {
    let (db, service) = service().await?;
    for n in 1..=7 {
        let tags: &[&str] = if n % 2 == 0 { &["even", "all"] } else { &["odd", "all"] };
        service.create_device(new_device(&format!("dev-{n:02}"), tags)).await?;
    }
    service.create_device(new_device("other-1", &["all"])).await?;
    set_presence(db.pool(), "dev-02", true).await?;
    set_presence(db.pool(), "dev-03", false).await?;
    set_presence(db.pool(), "other-1", true).await?;

    // Pages of 3 over all 8 devices, in id order, each cursor continuing where the last page ended.
    let mut ids = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = service.list_devices(&DeviceFilter::default(), &PageRequest { size: 3, cursor }).await?;
        assert!(page.items.len() <= 3);
        ids.extend(page.items.into_iter().map(|device| device.id));
        pages += 1;
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> =
        (1..=7).map(|n| format!("dev-{n:02}")).chain(std::iter::once("other-1".to_owned())).collect();
    assert_eq!(ids, expected);

    let check = |filter: DeviceFilter, expected: &'static [&'static str]| {
        let service = service.clone();
        async move {
            let page = service.list_devices(&filter, &PageRequest::default()).await?;
            let ids: Vec<String> = page.items.into_iter().map(|device| device.id).collect();
            assert_eq!(ids, expected, "{filter:?}");
            anyhow::Ok(())
        }
    };
    check(DeviceFilter { tags: vec!["even".into()], ..Default::default() }, &["dev-02", "dev-04", "dev-06"]).await?;
    check(DeviceFilter { tags: vec!["even".into(), "odd".into()], ..Default::default() }, &[]).await?;
    check(DeviceFilter { online: Some(true), ..Default::default() }, &["dev-02", "other-1"]).await?;
    check(
        DeviceFilter { online: Some(false), id_prefix: Some("dev-0".into()), ..Default::default() },
        &["dev-01", "dev-03", "dev-04", "dev-05", "dev-06", "dev-07"],
    )
    .await?;
    check(DeviceFilter { id_prefix: Some("oth".into()), ..Default::default() }, &["other-1"]).await?;
    // Underscores and dots are not pattern characters in a prefix.
    check(DeviceFilter { id_prefix: Some("dev_".into()), ..Default::default() }, &[]).await?;

    let bad_cursor =
        service.list_devices(&DeviceFilter::default(), &PageRequest { size: 1, cursor: Some("a/b".into()) }).await;
    assert!(matches!(bad_cursor, Err(RegistryError::InvalidArgument(_))));
    Ok(())
}

#[tokio::test]
async fn api_tokens_are_shown_once_and_revocable() -> anyhow::Result<()> {
    let (db, service) = service().await?;
    let issued = service.create_token("ci").await?;
    let token = issued.secret.expose_secret().to_owned();
    assert_eq!(service.authenticate_token(&token).await?, issued.token.id);
    assert!(matches!(service.authenticate_token("fer_nope").await, Err(RegistryError::Unauthenticated)));

    // Only a digest is stored.
    let stored: Vec<u8> = sqlx::query_scalar("select token_sha256 from api_tokens").fetch_one(db.pool()).await?;
    assert_eq!(stored.len(), 32);

    let listed = service.list_tokens(false).await?;
    assert_eq!(listed, vec![issued.token.clone()]);
    service.revoke_token(&issued.token.id.to_string()).await?;
    assert!(matches!(service.authenticate_token(&token).await, Err(RegistryError::Unauthenticated)));
    assert!(service.list_tokens(false).await?.is_empty());
    assert!(service.list_tokens(true).await?[0].revoked_at.is_some());
    assert!(matches!(service.revoke_token("not-a-uuid").await, Err(RegistryError::InvalidArgument(_))));
    let unknown = uuid::Uuid::new_v4().to_string();
    assert!(matches!(service.revoke_token(&unknown).await, Err(RegistryError::TokenNotFound(_))));
    assert!(matches!(service.create_token("").await, Err(RegistryError::InvalidArgument(_))));
    Ok(())
}

#[tokio::test]
async fn presence_watch_reports_changes() -> anyhow::Result<()> {
    let (db, service) = service().await?;
    service.create_device(new_device("door-1", &[])).await?;
    service.create_device(new_device("door-2", &[])).await?;
    set_presence(db.pool(), "door-1", true).await?;

    let stop = CancellationToken::new();
    let listener = PresenceListener::listen(service.clone()).await?;
    tokio::spawn(listener.run(stop.clone()));

    let mut watch = service.watch_presence(vec!["door-1".into()], true).await?;
    let current = next(&mut watch).await?;
    assert_eq!((current.device_id.as_str(), current.online), ("door-1", true));

    // A change of another device is filtered out; the watched one going offline arrives.
    set_presence(db.pool(), "door-2", true).await?;
    set_presence(db.pool(), "door-1", false).await?;
    let change = next(&mut watch).await?;
    assert_eq!((change.device_id.as_str(), change.online), ("door-1", false));

    // A repeated `offline` is not a change.
    set_presence(db.pool(), "door-1", false).await?;
    set_presence(db.pool(), "door-1", true).await?;
    let change = next(&mut watch).await?;
    assert!(change.online);

    service.stop_watches();
    let ended = tokio::time::timeout(Duration::from_secs(10), watch.recv()).await?;
    assert!(ended.is_none(), "stopping watches ends the stream");
    stop.cancel();
    Ok(())
}

async fn next(
    watch: &mut tokio::sync::mpsc::Receiver<Result<ferrite_registry::PresenceChange, RegistryError>>,
) -> anyhow::Result<ferrite_registry::PresenceChange> {
    let item = tokio::time::timeout(ferrite_testkit::WAIT_DEADLINE, watch.recv()).await?;
    Ok(item.ok_or_else(|| anyhow::anyhow!("watch ended"))??)
}
