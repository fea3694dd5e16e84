//! The presence feed: PostgreSQL announces every online/offline change (a trigger on `presence`, migration 0003)
//! and one listener per registry process fans the changes out to all watchers.
//!
//! LISTEN/NOTIFY rather than polling: a change reaches watchers within milliseconds of the ingester's commit,
//! and an idle fleet costs nothing. Notifications sent while the listening connection is being re-established
//! are lost; watchers that must not miss a change reconcile with `include_current` when they watch again.

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::model::PresenceChange;
use crate::{RegistryError, RegistryService};

/// The channel the trigger notifies.
pub const PRESENCE_CHANNEL: &str = "ferrite_presence";

/// How long to wait before listening again after the connection failed, so a database outage is not a busy loop.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// A connection that is already listening: changes committed after [`PresenceListener::listen`] returns are not missed.
pub struct PresenceListener {
    listener: PgListener,
    service: RegistryService,
}

impl PresenceListener {
    /// Opens the listening connection now, so that a bad database fails at startup.
    pub async fn listen(service: RegistryService) -> Result<PresenceListener, RegistryError> {
        let mut listener = PgListener::connect_with(service.pool()).await?;
        listener.listen(PRESENCE_CHANNEL).await?;
        Ok(PresenceListener { listener, service })
    }

    /// Forwards changes to the service's watchers until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let sender = self.service.presence_sender().clone();
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                received = self.listener.try_recv() => received,
            };
            match received {
                Ok(Some(notification)) => match serde_json::from_str::<PresenceChange>(notification.payload()) {
                    // No watcher is not an error: the change is simply not wanted right now.
                    Ok(change) => {
                        let _ = sender.send(change);
                    }
                    Err(err) => tracing::warn!(cause = %err, "unreadable presence notification"),
                },
                Ok(None) => {
                    // try_recv reports a lost connection this way; the next call reconnects and listens again.
                    tracing::warn!("presence listener lost its connection; changes until it is back are missed");
                }
                Err(err) => {
                    tracing::warn!(cause = %err, "presence listener failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(RETRY_DELAY) => {}
                    }
                }
            }
        }
    }
}
