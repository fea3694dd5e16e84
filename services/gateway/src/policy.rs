//! Who may publish through the gateway: the seam where the registry's API tokens will plug in.
//!
//! [`AllowAll`] lets every browser publish, which is right on loopback. DESIGN.md asks that publishing obey
//! the same rights as the REST API (a token when not on loopback): `ferrite` passes a policy backed by the
//! registry's API tokens in [`crate::Config::publish_policy`], which looks the token up in [`PublishPolicy::admit`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

/// What [`PublishPolicy::admit`] returns.
pub type AdmitFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// What the gateway knows about a browser when it decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The peer's address, when the server knows it (tests that drive the router directly have none).
    pub peer: Option<SocketAddr>,
    /// A bearer token from `Authorization: Bearer ...` or the `token` query parameter (browsers cannot set
    /// headers on a WebSocket, so the query is how a dashboard sends it).
    pub token: Option<String>,
}

impl ClientInfo {
    /// True when the browser connected from a loopback address.
    pub fn is_loopback(&self) -> bool {
        self.peer.is_some_and(|peer| peer.ip().is_loopback())
    }
}

/// Decides whether a browser may publish a message.
pub trait PublishPolicy: Send + Sync + 'static {
    /// `Ok` to publish; `Err` with the reason, which the browser receives as an `error` message.
    fn check(&self, client: &ClientInfo, topic: &str, retain: bool) -> Result<(), String>;

    /// Called once when a browser connects, before it is served: the place for slow, asynchronous
    /// work such as looking its token up, whose outcome [`PublishPolicy::check`] then uses.
    fn admit<'a>(&'a self, _client: &'a ClientInfo) -> AdmitFuture<'a> {
        Box::pin(std::future::ready(()))
    }
}

/// Every browser may publish anywhere (but `$` topics, which the gateway refuses anyway).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl PublishPolicy for AllowAll {
    fn check(&self, _client: &ClientInfo, _topic: &str, _retain: bool) -> Result<(), String> {
        Ok(())
    }
}
