//! [`Clients`]: what the rest of the platform may ask of the broker about connected clients.
//!
//! The commands API asks whether a device is connected (the broker knows at once; the ingester's presence table
//! learns it only after the device's `online` message was stored), and the registry closes the connections of a
//! device it deleted or whose secret it rotated (credentials are only checked at CONNECT).

use crate::native::NativeClients;

/// A cheap, cloneable handle on the broker's connected clients; valid while the broker runs
/// (afterwards every client counts as disconnected and nothing is closed).
#[derive(Clone)]
pub struct Clients {
    inner: NativeClients,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients").finish_non_exhaustive()
    }
}

impl Clients {
    pub(crate) fn new(inner: NativeClients) -> Self {
        Clients { inner }
    }

    /// Whether a client is connected under exactly this client id now: one lookup in the broker's session table.
    /// (Async so that a broker elsewhere could answer it one day.)
    pub async fn is_connected(&self, client_id: &str) -> bool {
        self.inner.is_connected(client_id)
    }

    /// Closes the connection of every client whose client id `matches` (v5 clients get DISCONNECT 0x87
    /// "Not authorized"); returns how many were told to close. Persistent sessions are kept, as after a lost
    /// connection: a device whose secret was rotated gets its queued messages once it reconnects with the new one.
    pub async fn disconnect_where(&self, matches: impl Fn(&str) -> bool + Send + 'static) -> usize {
        let closed = self.inner.disconnect_where(&matches);
        if closed > 0 {
            metrics::counter!("ferrite_broker_clients_disconnected_total").increment(closed as u64);
        }
        closed
    }
}
