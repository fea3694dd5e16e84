//! Who may connect and what they may do: the [`Authorizer`] an MQTT broker asks, and the default [`AllowAll`].
//!
//! The contract between the broker (which asks) and the device registry (which answers), in a crate of its own
//! so that neither builds the other: std only. `ferrite_broker` re-exports it as `ferrite_broker::auth`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

/// A boxed, sendable future, so that [`Authorizer`] stays object safe without an extra macro crate.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who a connected client is, as decided by [`Authorizer::authenticate`].
///
/// The broker keeps it for the lifetime of the connection and hands it back to
/// [`Authorizer::may_publish`] and [`Authorizer::may_subscribe`], which are synchronous
/// and so must be able to decide from this value alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The MQTT client id of the connection.
    pub client_id: String,
    /// What the credentials proved.
    pub principal: Principal,
}

/// What a client's credentials proved it to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Nothing was proven (no credentials, or an authorizer that does not check them).
    Anonymous,
    /// A device, by its device id.
    Device(String),
    /// A platform service, by its name.
    Service(String),
}

/// The answer to a connection attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    /// Let the client in as this identity.
    Allow(Identity),
    /// Refuse the connection; the client gets the matching CONNACK code.
    Deny(DenyReason),
}

/// Why a connection was refused, which picks the CONNACK code the client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// The client may not connect (v3.1.1 code 5, v5 reason 0x87).
    NotAuthorized,
    /// The username or password is wrong (v3.1.1 code 4, v5 reason 0x86).
    BadCredentials,
}

/// Decides who may connect and what they may do.
///
/// The device registry implements it; the broker calls it for every connection
/// (anonymous ones included), for every SUBSCRIBE filter and every PUBLISH topic,
/// and for the Last Will topic at connect time.
pub trait Authorizer: Send + Sync + 'static {
    /// Checks a client's credentials when it connects.
    ///
    /// The returned future may only borrow `self`: copy what it needs from the arguments.
    fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
        remote: SocketAddr,
    ) -> BoxFuture<'_, AuthDecision>;

    /// Whether `identity` may publish to `topic`; also asked for the Last Will topic at connect time.
    fn may_publish(&self, identity: &Identity, topic: &str) -> bool;

    /// Whether `identity` may subscribe to `filter`, exactly as the client sent it
    /// (a shared subscription arrives as `$share/{group}/{filter}`).
    fn may_subscribe(&self, identity: &Identity, filter: &str) -> bool;
}

/// Lets everyone in and allows everything: the default, like Mosquitto on a loopback listener.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn authenticate(
        &self,
        client_id: &str,
        _username: Option<&str>,
        _password: Option<&[u8]>,
        _remote: SocketAddr,
    ) -> BoxFuture<'_, AuthDecision> {
        // Nothing is checked, so nothing is proven: the client is anonymous whatever username it sent.
        let identity = Identity { client_id: client_id.to_owned(), principal: Principal::Anonymous };
        Box::pin(std::future::ready(AuthDecision::Allow(identity)))
    }

    fn may_publish(&self, _identity: &Identity, _topic: &str) -> bool {
        true
    }

    fn may_subscribe(&self, _identity: &Identity, _filter: &str) -> bool {
        true
    }
}
