//! [`Clients`]: what the rest of the platform may ask of the broker about connected clients,
//! without anything of rmqtt in its signature.
//!
//! The commands API asks whether a device is connected (the broker knows at once; the ingester's presence table
//! learns it only after the device's `online` message was stored), and the registry closes the connections of a
//! device it deleted or whose secret it rotated (credentials are only checked at CONNECT).

use rmqtt::context::ServerContext;
use rmqtt::types::{ClientId, Id, Message, Reason};
use tokio::runtime::Handle;

/// A cheap, cloneable handle on the broker's connected clients; valid while the broker runs
/// (afterwards every client counts as disconnected and nothing is closed).
#[derive(Clone)]
pub struct Clients {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Rmqtt {
        scx: ServerContext,
        /// The broker's own runtime, where rmqtt's state lives and its tasks run.
        runtime: Handle,
    },
    Ferrite(crate::native::NativeClients),
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients").finish_non_exhaustive()
    }
}

impl Clients {
    pub(crate) fn rmqtt(scx: ServerContext, runtime: Handle) -> Self {
        Clients { inner: Inner::Rmqtt { scx, runtime } }
    }

    pub(crate) fn ferrite(clients: crate::native::NativeClients) -> Self {
        Clients { inner: Inner::Ferrite(clients) }
    }

    /// Whether a client is connected under exactly this client id now: one lookup in the broker's client table.
    pub async fn is_connected(&self, client_id: &str) -> bool {
        let (scx, runtime) = match &self.inner {
            Inner::Rmqtt { scx, runtime } => (scx.clone(), runtime),
            Inner::Ferrite(clients) => return clients.is_connected(client_id),
        };
        let client_id = ClientId::from(client_id);
        let asked = runtime.spawn(async move {
            let id = Id::from(scx.node.id(), client_id);
            // `session()` clones the session out of the table before anything is awaited (see `router.rs`).
            let session = scx.extends.shared().await.entry(id).session();
            match session {
                Some(session) => session.connected().await.unwrap_or(false),
                None => false,
            }
        });
        asked.await.unwrap_or(false)
    }

    /// Closes the connection of every client whose client id `matches` (v5 clients get DISCONNECT 0x87
    /// "Not authorized"); returns how many were told to close. Persistent sessions are kept, as after a lost
    /// connection: a device whose secret was rotated gets its queued messages once it reconnects with the new one.
    pub async fn disconnect_where(&self, matches: impl Fn(&str) -> bool + Send + 'static) -> usize {
        let (scx, runtime) = match &self.inner {
            Inner::Rmqtt { scx, runtime } => (scx.clone(), runtime),
            Inner::Ferrite(clients) => {
                let closed = clients.disconnect_where(&matches);
                if closed > 0 {
                    metrics::counter!("ferrite_broker_clients_disconnected_total").increment(closed as u64);
                }
                return closed;
            }
        };
        let closing = runtime.spawn(async move {
            // Cloned out of the table first: rmqtt's own `is_connected` awaits while holding the table's guard.
            let candidates: Vec<_> = {
                let shared = scx.extends.shared().await;
                shared
                    .iter()
                    .filter(|entry| matches(&entry.id().client_id))
                    .filter_map(|entry| entry.session().zip(entry.tx()))
                    .collect()
            };
            let mut closed = 0;
            for (session, tx) in candidates {
                // An offline persistent session has no connection to close, and is left as it is.
                if !session.connected().await.unwrap_or(false) {
                    continue;
                }
                // An error means the connection ended meanwhile, which is what we want anyway.
                if tx.unbounded_send(Message::Closed(Reason::ConnectKicked(false))).is_ok() {
                    closed += 1;
                }
            }
            closed
        });
        let closed = closing.await.unwrap_or(0);
        if closed > 0 {
            metrics::counter!("ferrite_broker_clients_disconnected_total").increment(closed as u64);
        }
        closed
    }
}
