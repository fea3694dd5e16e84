//! [`CommandService`]: stores, publishes and awaits commands (the one implementation both faces call), and takes
//! the devices' responses that the service's MQTT session receives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferrite_core::{DeviceId, Topic};
use ferrite_mqtt::{Message, PublishProperties, QoS, Session};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::CommandError;
use crate::model::{Command, CommandState, SendCommand, check_name};

/// A device's history when the caller names no limit.
pub const DEFAULT_LIMIT: u32 = 100;
/// The longest history one call returns.
pub const MAX_LIMIT: u32 = 1000;

const COLUMNS: &str = "id, device_id, name, params, state, result, timeout_ms, created_at, completed_at";

/// Limits for commands.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a send waits for the answer when the caller names no timeout.
    pub default_timeout: Duration,
    /// The longest timeout a caller may ask for: an HTTP request should not hang for an hour.
    pub max_timeout: Duration,
    /// How long the broker keeps a command for an offline device (MQTT 5 message expiry).
    pub offline_expiry: Duration,
}

/// A send waits for its answer this long unless the caller says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest timeout a caller may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// A command for an offline device expires at the broker after a day, the fleet's session expiry.
pub const OFFLINE_EXPIRY: Duration = Duration::from_secs(24 * 3600);

impl Default for Limits {
    fn default() -> Self {
        Limits { default_timeout: DEFAULT_TIMEOUT, max_timeout: MAX_TIMEOUT, offline_expiry: OFFLINE_EXPIRY }
    }
}

/// A boxed, sendable future, so that [`Presence`] stays object safe.
pub type PresenceFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>>;

/// Who tells whether a device is connected, which decides between `sent` (await the answer) and `pending`.
///
/// Without one, the `presence` table answers; it is written by the ingester when the device's `online` message is
/// stored, so it lags the broker (a command sent right after a device connected came back `pending`).
/// `ferrite up` gives the embedded broker's own answer instead (a lookup in its client table).
pub trait Presence: Send + Sync + 'static {
    /// Whether the device is connected now (under its device id as client id, the platform's convention).
    fn is_connected<'a>(&'a self, device_id: &'a str) -> PresenceFuture<'a>;
}

/// What the service has done, for tests and summaries.
#[derive(Debug, Default)]
pub struct CommandStats {
    /// Whether the broker has granted the `commands/+/response` subscription.
    pub subscribed: AtomicBool,
    pub sent: AtomicU64,
    pub responses: AtomicU64,
}

/// Commands over one database and one MQTT session. Cheap to clone.
#[derive(Clone)]
pub struct CommandService {
    pool: PgPool,
    session: Session,
    limits: Limits,
    /// Asked before the `presence` table when set (see [`Presence`]).
    presence: Option<Arc<dyn Presence>>,
    /// Senders waiting for an answer, by command id; the response handler wakes them after storing the answer.
    waiters: Arc<Mutex<HashMap<Uuid, oneshot::Sender<()>>>>,
    stats: Arc<CommandStats>,
}

impl CommandService {
    pub(crate) fn new(pool: PgPool, session: Session, limits: Limits, presence: Option<Arc<dyn Presence>>) -> Self {
        CommandService { pool, session, limits, presence, waiters: Arc::default(), stats: Arc::default() }
    }

    pub fn stats(&self) -> Arc<CommandStats> {
        self.stats.clone()
    }

    /// Stores and publishes a command. An online device's answer is awaited (with `wait`) up to the timeout;
    /// a command for an offline device is left `pending` with the broker, which delivers it when the device's
    /// persistent session reconnects.
    /// The request's device, params (an object; none is `{}`) and timeout, or why they are refused.
    fn checked(&self, request: &SendCommand) -> Result<(DeviceId, Value, Duration), CommandError> {
        let device = DeviceId::new(request.device_id.trim())?;
        check_name(&request.name)?;
        let params = match &request.params {
            Value::Null => Value::Object(Default::default()),
            object @ Value::Object(_) => object.clone(),
            _ => return Err(CommandError::InvalidArgument("params must be a JSON object".into())),
        };
        let timeout = request.timeout.unwrap_or(self.limits.default_timeout);
        if timeout.is_zero() || timeout > self.limits.max_timeout {
            return Err(CommandError::InvalidArgument(format!(
                "timeout must be above 0 and at most {}",
                humantime::format_duration(self.limits.max_timeout)
            )));
        }
        Ok((device, params, timeout))
    }

    /// Whether a registered device is connected now: the broker's answer when there is one, else the presence table.
    async fn is_online(&self, device: &DeviceId) -> Result<bool, CommandError> {
        let known: Option<Option<bool>> = sqlx::query_scalar(
            "select p.online from devices d left join presence p on p.device_id = d.id where d.id = $1",
        )
        .bind(device.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(match (known, &self.presence) {
            (None, _) => return Err(CommandError::DeviceNotFound(device.as_str().to_owned())),
            (Some(_), Some(presence)) => presence.is_connected(device.as_str()).await,
            (Some(online), None) => online.unwrap_or(false),
        })
    }

    pub async fn send(&self, request: SendCommand) -> Result<Command, CommandError> {
        let (device, params, timeout) = self.checked(&request)?;
        let online = self.is_online(&device).await?;
        let id = Uuid::new_v4();
        let state = if online { CommandState::Sent } else { CommandState::Pending };
        let sql = format!(
            "insert into commands (id, device_id, name, params, state, timeout_ms) values ($1, $2, $3, $4, $5, $6)
             returning {COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(device.as_str())
            .bind(&request.name)
            .bind(&params)
            .bind(state.as_str())
            // At most MAX_TIMEOUT, so it fits.
            .bind(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX))
            .fetch_one(&self.pool)
            .await?;
        let command = command_from_row(&row)?;

        // Registered before publishing, so an answer that comes at once finds its waiter.
        let waiter = (request.wait && online).then(|| {
            let (tx, rx) = oneshot::channel();
            self.lock_waiters().insert(id, tx);
            rx
        });
        let payload = serde_json::json!({"id": id, "name": request.name, "params": params});
        let properties = PublishProperties {
            response_topic: Some(ferrite_core::topic::build::command_response(device.as_str())),
            correlation_data: Some(Bytes::from(id.to_string())),
            content_type: Some("application/json".into()),
            message_expiry_interval: Some(u32::try_from(self.limits.offline_expiry.as_secs()).unwrap_or(u32::MAX)),
            ..PublishProperties::default()
        };
        let topic = ferrite_core::topic::build::command(device.as_str());
        if let Err(err) =
            self.session.publish(topic, QoS::AtLeastOnce, false, payload.to_string(), Some(properties)).await
        {
            self.lock_waiters().remove(&id);
            let _ = self
                .complete(
                    id,
                    device.as_str(),
                    CommandState::Error,
                    Some(serde_json::json!({"message": "not published"})),
                )
                .await;
            return Err(CommandError::Unavailable(err.to_string()));
        }
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        tracing::info!(command = %id, device = %device, name = %request.name, state = state.as_str(), "command sent");
        let Some(waiter) = waiter else {
            return Ok(command);
        };
        match tokio::time::timeout(timeout, waiter).await {
            // Answered (or the service is stopping): what is stored is the outcome.
            Ok(_) => self.get(&id.to_string()).await,
            Err(_) => {
                self.lock_waiters().remove(&id);
                let sql = format!(
                    "update commands set state = 'timed_out', completed_at = now() where id = $1 and state = 'sent'
                     returning {COLUMNS}"
                );
                match sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await? {
                    Some(row) => {
                        tracing::info!(command = %id, device = %device, "command timed out");
                        command_from_row(&row)
                    }
                    // The answer won the race with the timeout.
                    None => self.get(&id.to_string()).await,
                }
            }
        }
    }

    pub async fn get(&self, id: &str) -> Result<Command, CommandError> {
        let uuid = Uuid::parse_str(id.trim())
            .map_err(|_| CommandError::InvalidArgument(format!("invalid command id {id:?}: expected a UUID")))?;
        let sql = format!("select {COLUMNS} from commands where id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(uuid).fetch_optional(&self.pool).await?;
        row.map(|row| command_from_row(&row)).transpose()?.ok_or_else(|| CommandError::CommandNotFound(id.to_owned()))
    }

    /// A device's commands, newest first.
    pub async fn list(&self, device_id: &str, limit: u32) -> Result<Vec<Command>, CommandError> {
        let device = DeviceId::new(device_id.trim())?;
        let limit = match limit {
            0 => DEFAULT_LIMIT,
            limit if limit <= MAX_LIMIT => limit,
            limit => {
                return Err(CommandError::InvalidArgument(format!(
                    "limit {limit} is above the maximum of {MAX_LIMIT}"
                )));
            }
        };
        let exists: Option<String> = sqlx::query_scalar("select id from devices where id = $1")
            .bind(device.as_str())
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_none() {
            return Err(CommandError::DeviceNotFound(device.into_string()));
        }
        let sql = format!("select {COLUMNS} from commands where device_id = $1 order by created_at desc, id limit $2");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(device.as_str())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(command_from_row).collect()
    }

    /// Takes a message from `commands/+/response`: stores the outcome and wakes the sender if it still waits.
    /// The command is found by the MQTT 5 correlation data, or else by the JSON `id`; it must belong to the device
    /// whose response topic carried the answer, so one device cannot answer for another.
    pub(crate) async fn on_response(&self, message: &Message) {
        let topic = message.topic();
        let Topic::CommandResponse { device } = Topic::parse(&topic) else {
            return;
        };
        let body: Option<Value> = serde_json::from_slice(message.payload()).ok();
        let correlated = message
            .publish
            .properties
            .as_ref()
            .and_then(|p| p.correlation_data.as_ref())
            .and_then(|data| std::str::from_utf8(data).ok())
            .and_then(|text| Uuid::parse_str(text).ok());
        let from_body =
            body.as_ref().and_then(|b| b.get("id")).and_then(Value::as_str).and_then(|s| Uuid::parse_str(s).ok());
        let Some(id) = correlated.or(from_body) else {
            tracing::debug!(%device, "a response without a command id; ignored");
            return;
        };
        self.stats.responses.fetch_add(1, Ordering::Relaxed);
        let (state, result) = match &body {
            Some(body) => {
                let ok = body.get("status").and_then(Value::as_str) == Some("ok");
                (if ok { CommandState::Ok } else { CommandState::Error }, body.get("result").cloned())
            }
            None => (
                CommandState::Error,
                Some(
                    serde_json::json!({"message": "response is not JSON", "payload": String::from_utf8_lossy(message.payload())}),
                ),
            ),
        };
        match self.complete(id, device.as_str(), state, result).await {
            Ok(true) => tracing::info!(command = %id, %device, state = state.as_str(), "command answered"),
            Ok(false) => {
                tracing::debug!(command = %id, %device, "a response for no open command of this device; ignored")
            }
            Err(err) => tracing::warn!(cause = %err, command = %id, "cannot store a command's response"),
        }
        if let Some(waiter) = self.lock_waiters().remove(&id) {
            let _ = waiter.send(());
        }
    }

    /// Stores an outcome unless the command is answered already; true when stored.
    async fn complete(
        &self,
        id: Uuid,
        device: &str,
        state: CommandState,
        result: Option<Value>,
    ) -> Result<bool, CommandError> {
        let done = sqlx::query(
            "update commands set state = $3, result = $4, completed_at = now()
             where id = $1 and device_id = $2 and state in ('pending', 'sent', 'timed_out')",
        )
        .bind(id)
        .bind(device)
        .bind(state.as_str())
        .bind(result)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, oneshot::Sender<()>>> {
        // Nothing panics while holding the lock (plain map operations), so a poisoned lock still holds a sound map.
        self.waiters.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn command_from_row(row: &PgRow) -> Result<Command, CommandError> {
    let state: String = row.try_get("state")?;
    let timeout_ms: i64 = row.try_get("timeout_ms")?;
    Ok(Command {
        id: row.try_get("id")?,
        device_id: row.try_get("device_id")?,
        name: row.try_get("name")?,
        params: row.try_get("params")?,
        state: state.parse()?,
        result: row.try_get("result")?,
        timeout: Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0)),
        created_at: row.try_get("created_at")?,
        completed_at: row.try_get("completed_at")?,
    })
}
