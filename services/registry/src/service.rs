//! [`RegistryService`]: the one implementation of every registry operation; REST and gRPC only translate.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cache::CredentialCache;
use crate::model::{
    ApiToken, DEFAULT_PAGE_SIZE, DEFAULT_PRESENCE_HISTORY, Device, DeviceChanges, DeviceFilter, IssuedCredentials,
    IssuedToken, MAX_PAGE_SIZE, MAX_PRESENCE_HISTORY, MAX_TOKEN_NAME_LEN, NewDevice, Page, PageRequest, PresenceChange,
    PresenceEvent, PresenceState, check_device_id, check_name, check_tags, dedup_tags, normalize_metadata,
};
use crate::{RegistryError, secret};

/// Presence changes buffered per watcher before it counts as lagging; a burst of a whole fleet going
/// offline at once fits, a watcher that stopped reading does not hold memory forever.
const PRESENCE_BUFFER: usize = 4096;

/// Closes the live MQTT connections of a device (client id `{id}` or `{id}:suffix`) whose credentials stopped
/// being valid: the broker checks credentials only at CONNECT, so without this a deleted device, or one whose
/// secret was rotated because it leaked, would stay connected until it disconnects by itself.
/// `ferrite up` wires its embedded broker in (a wrapper of the broker's client table in the binary);
/// [`crate::authorizer::device_may_use_client_id`] says which client ids are the device's.
pub trait DeviceConnections: Send + Sync + 'static {
    /// Closes them; returns how many were closed.
    fn disconnect_device<'a>(&'a self, device_id: &'a str) -> ferrite_auth::BoxFuture<'a, usize>;
}

/// Every device query selects these columns, so that one row type serves get, list, create and update.
const DEVICE_COLUMNS: &str = "d.id, d.name, d.tags, d.metadata, d.auto_registered, d.created_at, d.updated_at,
     p.online, p.last_seen, p.changed_at, (c.device_id is not null) as has_credentials
     from devices d
     left join presence p on p.device_id = d.id
     left join device_credentials c on c.device_id = d.id";

/// The device registry's operations over PostgreSQL. Cheap to clone: clones share the pool,
/// the credential cache and the presence feed.
#[derive(Clone)]
pub struct RegistryService {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    credentials: CredentialCache,
    presence: broadcast::Sender<PresenceChange>,
    /// Ends every presence watch, so that servers draining at shutdown do not wait for endless streams.
    watches_stop: CancellationToken,
    /// The broker whose connections a deleted or rotated device loses; unset with an external broker.
    connections: OnceLock<Arc<dyn DeviceConnections>>,
}

#[derive(sqlx::FromRow)]
struct DeviceRow {
    id: String,
    name: Option<String>,
    tags: Vec<String>,
    metadata: serde_json::Value,
    auto_registered: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    online: Option<bool>,
    last_seen: Option<DateTime<Utc>>,
    changed_at: Option<DateTime<Utc>>,
    has_credentials: bool,
}

impl From<DeviceRow> for Device {
    fn from(row: DeviceRow) -> Self {
        let presence = match (row.online, row.last_seen, row.changed_at) {
            (Some(online), Some(last_seen), Some(changed_at)) => Some(PresenceState { online, last_seen, changed_at }),
            _ => None,
        };
        Device {
            id: row.id,
            name: row.name,
            tags: row.tags,
            metadata: row.metadata,
            auto_registered: row.auto_registered,
            created_at: row.created_at,
            updated_at: row.updated_at,
            presence,
            has_credentials: row.has_credentials,
        }
    }
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: Uuid,
    name: String,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

impl From<TokenRow> for ApiToken {
    fn from(row: TokenRow) -> Self {
        ApiToken { id: row.id, name: row.name, created_at: row.created_at, revoked_at: row.revoked_at }
    }
}

impl RegistryService {
    /// A service over a migrated database. Presence watches receive changes once a
    /// [`crate::presence::PresenceListener`] runs for this service (as [`crate::Registry::run`] does).
    pub fn new(pool: PgPool) -> Self {
        let (presence, _) = broadcast::channel(PRESENCE_BUFFER);
        RegistryService {
            inner: Arc::new(Inner {
                pool,
                credentials: CredentialCache::default(),
                presence,
                watches_stop: CancellationToken::new(),
                connections: OnceLock::new(),
            }),
        }
    }

    /// Lets deletions and rotations close the device's live connections at `connections` (the embedded broker).
    /// Set once; a later call is ignored (and returns false). Without it (a registry beside an external broker),
    /// a deleted or rotated device's connection stays up until it ends, and only its next CONNECT is refused.
    pub fn set_device_connections(&self, connections: Arc<dyn DeviceConnections>) -> bool {
        self.inner.connections.set(connections).is_ok()
    }

    /// Closes the device's live connections, if a broker was given (see [`Self::set_device_connections`]).
    async fn disconnect(&self, id: &str) {
        if let Some(connections) = self.inner.connections.get() {
            let closed = connections.disconnect_device(id).await;
            if closed > 0 {
                tracing::info!(device_id = %id, closed, "closed the device's live connections");
            }
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    pub(crate) fn presence_sender(&self) -> &broadcast::Sender<PresenceChange> {
        &self.inner.presence
    }

    /// Ends all presence watches now and refuses new ones.
    pub fn stop_watches(&self) {
        self.inner.watches_stop.cancel();
    }

    /// Registers a device and issues its MQTT credentials.
    ///
    /// A device that the ingester auto-registered (it published before anyone created it) is adopted:
    /// it takes the given name, tags and metadata and is no longer marked auto-registered.
    #[tracing::instrument(skip_all, fields(device_id = %new.id))]
    pub async fn create_device(&self, new: NewDevice) -> Result<(Device, IssuedCredentials), RegistryError> {
        check_device_id(&new.id)?;
        check_name(new.name.as_deref())?;
        check_tags(&new.tags)?;
        let metadata = normalize_metadata(new.metadata)?;
        let tags = dedup_tags(new.tags);
        let name = new.name.filter(|name| !name.is_empty());

        // Hashing is slow on purpose: do it before the transaction, which then stays short.
        let secret = secret::new_device_secret()?;
        let hash = secret::hash_secret(&secret).await?;

        let mut tx = self.inner.pool.begin().await?;
        let created: Option<String> = sqlx::query_scalar(
            "insert into devices (id, name, tags, metadata) values ($1, $2, $3, $4)
             on conflict (id) do update
                 set name = excluded.name, tags = excluded.tags, metadata = excluded.metadata,
                     auto_registered = false, updated_at = now()
                 where devices.auto_registered
             returning id",
        )
        .bind(&new.id)
        .bind(&name)
        .bind(&tags)
        .bind(&metadata)
        .fetch_optional(&mut *tx)
        .await?;
        if created.is_none() {
            return Err(RegistryError::DeviceExists(new.id));
        }
        store_secret_hash(&mut tx, &new.id, &hash).await?;
        tx.commit().await?;
        // A refusal cached while the device did not exist must not outlive its creation.
        self.inner.credentials.invalidate(&new.id);
        tracing::info!("device created");
        let device = self.get_device(&new.id).await?;
        Ok((device, IssuedCredentials { device_id: new.id, secret }))
    }

    pub async fn get_device(&self, id: &str) -> Result<Device, RegistryError> {
        check_device_id(id)?;
        let row: Option<DeviceRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("select {DEVICE_COLUMNS} where d.id = $1")))
                .bind(id)
                .fetch_optional(&self.inner.pool)
                .await?;
        row.map(Device::from).ok_or_else(|| RegistryError::DeviceNotFound(id.to_owned()))
    }

    /// The newest `limit` changes of a device's presence (at most [`MAX_PRESENCE_HISTORY`]), newest first.
    pub async fn presence_history(&self, id: &str, limit: u32) -> Result<Vec<PresenceEvent>, RegistryError> {
        check_device_id(id)?;
        let limit = match limit {
            0 => DEFAULT_PRESENCE_HISTORY,
            limit => limit.min(MAX_PRESENCE_HISTORY),
        };
        let mut tx = self.inner.pool.begin().await?;
        let exists: bool = sqlx::query_scalar("select exists (select 1 from devices where id = $1)")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        if !exists {
            return Err(RegistryError::DeviceNotFound(id.to_owned()));
        }
        let rows: Vec<(bool, DateTime<Utc>)> = sqlx::query_as(
            "select online, changed_at from presence_history where device_id = $1 order by changed_at desc limit $2",
        )
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows.into_iter().map(|(online, changed_at)| PresenceEvent { online, changed_at }).collect())
    }

    /// One page of devices in id order. The cursor is the last id of the previous page, so pages stay
    /// consistent while devices are added or removed (keyset paging, no OFFSET scans).
    pub async fn list_devices(&self, filter: &DeviceFilter, page: &PageRequest) -> Result<Page<Device>, RegistryError> {
        let size = match page.size {
            0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        };
        if let Some(cursor) = &page.cursor {
            check_device_id(cursor)
                .map_err(|_| RegistryError::InvalidArgument(format!("invalid cursor {cursor:?}")))?;
        }
        check_tags(&filter.tags)?;
        let prefix = filter.id_prefix.as_deref().filter(|prefix| !prefix.is_empty());
        // One more than asked tells whether another page follows.
        let rows: Vec<DeviceRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {DEVICE_COLUMNS}
             where ($1::text is null or d.id > $1)
               and (cardinality($2::text[]) = 0 or d.tags @> $2)
               and ($3::boolean is null or coalesce(p.online, false) = $3)
               and ($4::text is null or starts_with(d.id, $4))
             order by d.id
             limit $5"
        )))
        .bind(page.cursor.as_deref())
        .bind(&filter.tags)
        .bind(filter.online)
        .bind(prefix)
        .bind(i64::from(size) + 1)
        .fetch_all(&self.inner.pool)
        .await?;
        let mut items: Vec<Device> = rows.into_iter().map(Device::from).collect();
        let next_cursor = if items.len() > size as usize {
            items.truncate(size as usize);
            items.last().map(|device| device.id.clone())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    #[tracing::instrument(skip_all, fields(device_id = %id))]
    pub async fn update_device(&self, id: &str, changes: DeviceChanges) -> Result<Device, RegistryError> {
        check_device_id(id)?;
        let name = changes.name.map(|name| name.filter(|name| !name.is_empty()));
        if let Some(name) = &name {
            check_name(name.as_deref())?;
        }
        if let Some(tags) = &changes.tags {
            check_tags(tags)?;
        }
        let tags = changes.tags.map(dedup_tags);
        let metadata = changes.metadata.map(normalize_metadata).transpose()?;
        let updated = sqlx::query(
            "update devices set
                 name = case when $2 then $3 else name end,
                 tags = coalesce($4, tags),
                 metadata = coalesce($5, metadata),
                 updated_at = now()
             where id = $1",
        )
        .bind(id)
        .bind(name.is_some())
        .bind(name.flatten())
        .bind(tags)
        .bind(metadata)
        .execute(&self.inner.pool)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(RegistryError::DeviceNotFound(id.to_owned()));
        }
        self.get_device(id).await
    }

    /// Deletes a device with its credentials and presence; new MQTT connections with its credentials are refused at once,
    /// and its live ones are closed when the broker is known ([`Self::set_device_connections`]).
    #[tracing::instrument(skip_all, fields(device_id = %id))]
    pub async fn delete_device(&self, id: &str) -> Result<(), RegistryError> {
        check_device_id(id)?;
        let deleted = sqlx::query("delete from devices where id = $1").bind(id).execute(&self.inner.pool).await?;
        self.inner.credentials.invalidate(id);
        if deleted.rows_affected() == 0 {
            return Err(RegistryError::DeviceNotFound(id.to_owned()));
        }
        self.disconnect(id).await;
        tracing::info!("device deleted");
        Ok(())
    }

    /// Issues a new secret; the old one stops working for new connections at once, and connections made with it are
    /// closed when the broker is known ([`Self::set_device_connections`]).
    #[tracing::instrument(skip_all, fields(device_id = %id))]
    pub async fn rotate_credentials(&self, id: &str) -> Result<IssuedCredentials, RegistryError> {
        check_device_id(id)?;
        let secret = secret::new_device_secret()?;
        let hash = secret::hash_secret(&secret).await?;
        let mut tx = self.inner.pool.begin().await?;
        let exists: Option<i32> = sqlx::query_scalar("select 1 from devices where id = $1 for update")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(RegistryError::DeviceNotFound(id.to_owned()));
        }
        store_secret_hash(&mut tx, id, &hash).await?;
        tx.commit().await?;
        self.inner.credentials.invalidate(id);
        self.disconnect(id).await;
        tracing::info!("device credentials rotated");
        Ok(IssuedCredentials { device_id: id.to_owned(), secret })
    }

    /// The cached verdict on this device and password, if one is fresh; never checks anything itself.
    pub fn cached_device_verdict(&self, id: &str, password: &[u8]) -> Option<bool> {
        self.inner.credentials.peek(id, password)
    }

    /// Checks a device's MQTT password, through the short-lived cache.
    pub async fn verify_device_secret(&self, id: &str, password: &[u8]) -> Result<bool, RegistryError> {
        if check_device_id(id).is_err() {
            return Ok(false);
        }
        self.inner
            .credentials
            .check(id, password, || async {
                let stored: Option<String> =
                    sqlx::query_scalar("select secret_hash from device_credentials where device_id = $1")
                        .bind(id)
                        .fetch_optional(&self.inner.pool)
                        .await?;
                match stored {
                    Some(stored) => secret::verify_secret(password.to_vec(), stored).await,
                    None => Ok(false),
                }
            })
            .await
    }

    /// Streams presence changes of the given devices (all when empty), first the current presence
    /// of each when `include_current`. The stream ends with [`RegistryError::Lagged`] if the reader falls behind.
    pub async fn watch_presence(
        &self,
        device_ids: Vec<String>,
        include_current: bool,
    ) -> Result<mpsc::Receiver<Result<PresenceChange, RegistryError>>, RegistryError> {
        for id in &device_ids {
            check_device_id(id)?;
        }
        // Subscribe before reading the current state, so that nothing falls between the two.
        let mut changes = self.inner.presence.subscribe();
        let current: Vec<PresenceChange> = if include_current {
            sqlx::query_as::<_, (String, bool, DateTime<Utc>, DateTime<Utc>)>(
                "select device_id, online, changed_at, last_seen from presence
                 where cardinality($1::text[]) = 0 or device_id = any($1)
                 order by device_id",
            )
            .bind(&device_ids)
            .fetch_all(&self.inner.pool)
            .await?
            .into_iter()
            .map(|(device_id, online, changed_at, last_seen)| PresenceChange {
                device_id,
                online,
                changed_at,
                last_seen,
            })
            .collect()
        } else {
            Vec::new()
        };

        // A change committed before the snapshot was read may still be on its way through NOTIFY: the snapshot holds
        // it already, so it is not sent a second time, after the snapshot (it would look like a new change).
        let seen: HashMap<String, (bool, DateTime<Utc>)> =
            current.iter().map(|change| (change.device_id.clone(), (change.online, change.changed_at))).collect();
        let (tx, rx) = mpsc::channel(64);
        let stop = self.inner.watches_stop.clone();
        let wanted = move |change: &PresenceChange| {
            (device_ids.is_empty() || device_ids.contains(&change.device_id))
                && seen.get(&change.device_id) != Some(&(change.online, change.changed_at))
        };
        tokio::spawn(async move {
            for change in current {
                if tx.send(Ok(change)).await.is_err() {
                    return;
                }
            }
            loop {
                let next = tokio::select! {
                    () = stop.cancelled() => return,
                    () = tx.closed() => return,
                    next = changes.recv() => next,
                };
                let item = match next {
                    Ok(change) if wanted(&change) => Ok(change),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(missed)) => Err(RegistryError::Lagged(missed)),
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let last = item.is_err();
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(rx)
    }

    #[tracing::instrument(skip_all)]
    pub async fn create_token(&self, name: &str) -> Result<IssuedToken, RegistryError> {
        if name.is_empty() || name.len() > MAX_TOKEN_NAME_LEN || name.chars().any(char::is_control) {
            return Err(RegistryError::InvalidArgument(format!(
                "invalid token name: expected 1 to {MAX_TOKEN_NAME_LEN} bytes without control characters"
            )));
        }
        let secret = secret::new_api_token()?;
        let row: TokenRow = sqlx::query_as(
            "insert into api_tokens (id, name, token_sha256) values ($1, $2, $3)
             returning id, name, created_at, revoked_at",
        )
        .bind(Uuid::new_v4())
        .bind(name)
        .bind(secret::token_digest(secret.expose_secret()))
        .fetch_one(&self.inner.pool)
        .await?;
        tracing::info!(token_id = %row.id, "api token created");
        Ok(IssuedToken { token: row.into(), secret })
    }

    pub async fn list_tokens(&self, include_revoked: bool) -> Result<Vec<ApiToken>, RegistryError> {
        let rows: Vec<TokenRow> = sqlx::query_as(
            "select id, name, created_at, revoked_at from api_tokens
             where $1 or revoked_at is null
             order by created_at, id",
        )
        .bind(include_revoked)
        .fetch_all(&self.inner.pool)
        .await?;
        Ok(rows.into_iter().map(ApiToken::from).collect())
    }

    /// Revokes a token; revoking one twice is not an error.
    pub async fn revoke_token(&self, id: &str) -> Result<(), RegistryError> {
        let uuid =
            Uuid::parse_str(id).map_err(|_| RegistryError::InvalidArgument(format!("invalid token id {id:?}")))?;
        let updated = sqlx::query("update api_tokens set revoked_at = coalesce(revoked_at, now()) where id = $1")
            .bind(uuid)
            .execute(&self.inner.pool)
            .await?;
        if updated.rows_affected() == 0 {
            return Err(RegistryError::TokenNotFound(id.to_owned()));
        }
        tracing::info!(token_id = %uuid, "api token revoked");
        Ok(())
    }

    /// The id of the valid token `token`, or [`RegistryError::Unauthenticated`].
    pub async fn authenticate_token(&self, token: &str) -> Result<Uuid, RegistryError> {
        if !token.starts_with(secret::TOKEN_PREFIX) {
            return Err(RegistryError::Unauthenticated);
        }
        let id: Option<Uuid> =
            sqlx::query_scalar("select id from api_tokens where token_sha256 = $1 and revoked_at is null")
                .bind(secret::token_digest(token))
                .fetch_optional(&self.inner.pool)
                .await?;
        id.ok_or(RegistryError::Unauthenticated)
    }
}

async fn store_secret_hash(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: &str,
    hash: &str,
) -> Result<(), RegistryError> {
    sqlx::query(
        "insert into device_credentials (device_id, secret_hash) values ($1, $2)
         on conflict (device_id) do update set secret_hash = excluded.secret_hash, created_at = now()",
    )
    .bind(id)
    .bind(hash)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
