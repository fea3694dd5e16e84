//! Commands to devices: stored, published on `commands/{device_id}` (QoS 1, MQTT 5 response topic and correlation
//! data set), answered on `commands/{device_id}/response`, and returned with their outcome.
//!
//! The crate binds no ports: its REST routes ([`router`], [`openapi`]) and gRPC service ([`grpc`]) are served on the
//! registry's ports through an `ApiExtension`. One MQTT session per process publishes the commands and holds the one
//! `commands/+/response` subscription; answers are matched to waiting requests by command id.
//!
//! # Layout
//! - `model`: [`Command`], its states, and what a client may send.
//! - `service`: [`CommandService`], the one implementation of every operation (PostgreSQL and MQTT).
//! - `error`: [`CommandError`]; converted once for REST (`rest`) and once for gRPC (`grpc`).
//! - `rest`: `/api/v1/devices/{id}/commands` and `/api/v1/commands/{id}` (axum, utoipa).
//! - `grpc`: `ferrite.v1.Commands` (tonic).

#![forbid(unsafe_code)]

mod error;
mod grpc;
pub mod model;
mod rest;
mod service;

use std::sync::atomic::Ordering;
use std::time::Duration;

use ferrite_mqtt::{BrokerUrl, Event, QoS, Session, SessionConfig};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use error::CommandError;
pub use grpc::{CommandsGrpc, grpc};
pub use model::{Command, CommandState, SendCommand};
pub use rest::{openapi, router};
pub use service::{
    CommandService, CommandStats, DEFAULT_TIMEOUT, Limits, MAX_TIMEOUT, OFFLINE_EXPIRY, Presence, PresenceFuture,
};

/// Where responses arrive: one subscription for the whole process.
pub const RESPONSE_FILTER: &str = "commands/+/response";
/// How long a stopping service waits for its command publishes to be acknowledged.
const DRAIN: Duration = Duration::from_secs(5);

/// How the service reaches the broker, and its limits.
#[derive(Clone)]
pub struct Config {
    pub broker: BrokerUrl,
    /// `(username, password)`, e.g. the `service:commands` account; never logged.
    pub credentials: Option<(String, String)>,
    /// Each process needs its own; the default has a random suffix.
    pub client_id: String,
    pub limits: Limits,
    /// Who says whether a device is connected; `None`: the `presence` table (see [`Presence`]).
    pub presence: Option<std::sync::Arc<dyn Presence>>,
}

impl Config {
    pub fn new(broker: BrokerUrl) -> Self {
        Config {
            broker,
            credentials: None,
            client_id: format!("ferrite-commands-{:08x}", fastrand::u32(..)),
            limits: Limits::default(),
            presence: None,
        }
    }
}

impl std::fmt::Debug for Config {
    // By hand: the credentials hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("broker", &self.broker)
            .field("username", &self.credentials.as_ref().map(|(user, _)| user))
            .field("client_id", &self.client_id)
            .field("limits", &self.limits)
            .field("presence", &self.presence.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// The command service with its MQTT session started; [`Commands::run`] takes the responses.
pub struct Commands {
    service: CommandService,
    session: Session,
    events: mpsc::Receiver<Event>,
}

impl Commands {
    /// Checks the limits and starts the MQTT session (it connects in the background).
    pub fn bind(config: Config, pool: PgPool) -> Result<Commands, CommandError> {
        let limits = config.limits;
        if limits.default_timeout.is_zero() || limits.default_timeout > limits.max_timeout {
            return Err(CommandError::InvalidArgument(
                "the default command timeout must be above 0 and at most the maximum".into(),
            ));
        }
        let mut session_config = SessionConfig::new(config.broker, config.client_id);
        session_config.credentials = config.credentials;
        session_config.subscriptions = vec![(RESPONSE_FILTER.to_owned(), QoS::AtLeastOnce)];
        let (session, events) = Session::start(session_config);
        let service = CommandService::new(pool, session.clone(), limits, config.presence);
        Ok(Commands { service, session, events })
    }

    /// The service behind the REST and gRPC faces.
    pub fn service(&self) -> CommandService {
        self.service.clone()
    }

    /// Takes responses until `shutdown`, then lets command publishes be acknowledged and disconnects.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), CommandError> {
        let Commands { service, session, mut events } = self;
        let stats = service.stats();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                event = events.recv() => match event {
                    // Responses are handled one at a time, in arrival order; each is one small UPDATE.
                    Some(Event::Message(message)) => service.on_response(&message).await,
                    Some(Event::Subscribed { refused }) => {
                        stats.subscribed.store(refused == 0, Ordering::Relaxed);
                        if refused > 0 {
                            tracing::error!("the broker refused the subscription to {RESPONSE_FILTER} (check the service's account)");
                        }
                    }
                    Some(Event::Connected { .. }) => {}
                    Some(Event::Disconnected { error }) => {
                        stats.subscribed.store(false, Ordering::Relaxed);
                        tracing::warn!(%error, "command service lost the broker; reconnecting");
                    }
                    None => return Err(CommandError::Internal("the command service's mqtt session ended".into())),
                },
            }
        }
        let left = session.close(DRAIN).await;
        if left > 0 {
            tracing::warn!(left, "command service stopped with command publishes unacknowledged");
        }
        Ok(())
    }
}
