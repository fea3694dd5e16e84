//! rmqtt hook handlers that put our [`Authorizer`] in charge of connections, subscriptions and publishes.
//!
//! rmqtt hands a hook the CONNECT at `ClientAuthenticate`, but the `Session` only appears later,
//! at `ClientConnected`. The identity the authorizer returned therefore waits in `pending`
//! (keyed by rmqtt's per-connection `Id`) until the session exists, and then moves into the
//! session's extra attributes, where the ACL hooks find it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rmqtt::codec::v5::SubscribeAckReason;
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType, Type};
use rmqtt::session::Session;
use rmqtt::types::{
    AuthResult, ConnectInfo, Id, LastWill, Message, PublishAclResult, Reason, Subscribe, SubscribeAclResult, TopicName,
};

use crate::auth::{AuthDecision, Authorizer, DenyReason, Identity};

/// Where the identity is kept among a session's extra attributes.
const IDENTITY_ATTR: &str = "ferrite.identity";

/// How long an authenticated identity may wait for its session.
/// A handshake that fails after authentication never reaches `ClientConnected`;
/// its entry is dropped once it is this old, so failed handshakes cannot pile up.
const PENDING_TTL: Duration = Duration::from_secs(120);

/// How long a connecting client waits for an earlier connection with the same client id to get out of the way.
///
/// rmqtt answers "server unavailable" instead of waiting in two cases, both measured with a client that
/// disconnects and at once reconnects under the same id: another handshake for that id still holds
/// rmqtt's per-id lock, or rmqtt's takeover "kick" went to a clean session whose connection was ending
/// anyway (the kick is queued to a loop that exits without reading it, and the new client is refused).
/// Waiting here, just before rmqtt takes the lock and kicks, turns both into a delay of milliseconds.
const SAME_CLIENT_WAIT: Duration = Duration::from_secs(1);

/// Registers the authorizer on the hooks that need it.
pub(crate) async fn install(scx: &ServerContext, authorizer: Arc<dyn Authorizer>) {
    let handler = AuthHandler { scx: scx.clone(), authorizer, pending: Arc::new(Mutex::new(HashMap::new())) };
    let register = scx.extends.hook_mgr().register();
    for typ in
        [Type::ClientAuthenticate, Type::ClientConnected, Type::ClientSubscribeCheckAcl, Type::MessagePublishCheckAcl]
    {
        register.add(typ, Box::new(handler.clone())).await;
    }
    register.start().await;
}

#[derive(Clone)]
struct AuthHandler {
    scx: ServerContext,
    authorizer: Arc<dyn Authorizer>,
    pending: Arc<Mutex<HashMap<Id, (Identity, Instant)>>>,
}

#[async_trait]
impl Handler for AuthHandler {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(connect_info) => {
                let result = self.authenticate(connect_info).await;
                // Not proceeding: our answer is final, no later handler may turn a refusal into a welcome.
                (false, Some(HookResult::AuthResult(result)))
            }
            Parameter::ClientConnected(session) => {
                self.attach_identity(session).await;
                (true, acc)
            }
            Parameter::ClientSubscribeCheckAcl(session, subscribe) => {
                let filter = original_filter(subscribe);
                let allowed = match identity_of(session).await {
                    Some(identity) => self.authorizer.may_subscribe(&identity, &filter),
                    None => missing_identity(session),
                };
                if allowed {
                    (true, acc)
                } else {
                    tracing::debug!(client_id = %session.id.client_id, %filter, "subscription refused");
                    let refused = SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized);
                    (false, Some(HookResult::SubscribeAclResult(refused)))
                }
            }
            Parameter::MessagePublishCheckAcl(session, publish) => {
                let allowed = match identity_of(session).await {
                    Some(identity) => self.authorizer.may_publish(&identity, &publish.topic),
                    None => missing_identity(session),
                };
                if allowed {
                    (true, acc)
                } else {
                    tracing::debug!(client_id = %session.id.client_id, topic = %publish.topic, "publish refused");
                    // Keep the client connected: v5 gets a "not authorized" PUBACK, v3.1.1 has no such code
                    // and rmqtt acknowledges and drops the message.
                    let refused = PublishAclResult::rejected(false, None);
                    (false, Some(HookResult::PublishAclResult(refused)))
                }
            }
            _ => (true, acc),
        }
    }
}

impl AuthHandler {
    async fn authenticate(&self, connect_info: &ConnectInfo) -> AuthResult {
        let id = connect_info.id();
        let remote = id.remote_addr.unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let decision = self
            .authorizer
            .authenticate(
                &id.client_id,
                connect_info.username().map(|name| name.as_ref()),
                connect_info.password().map(|password| password.as_ref()),
                remote,
            )
            .await;
        let identity = match decision {
            AuthDecision::Allow(identity) => identity,
            AuthDecision::Deny(reason) => {
                tracing::debug!(client_id = %id.client_id, %remote, ?reason, "connection refused");
                return match reason {
                    DenyReason::NotAuthorized => AuthResult::NotAuthorized,
                    DenyReason::BadCredentials => AuthResult::BadUsernameOrPassword,
                };
            }
        };
        // rmqtt publishes a Last Will without asking the publish ACL, so the will topic is checked here,
        // where a refusal can still be told to the client.
        if let Some(will) = connect_info.last_will() {
            let topic = match will {
                LastWill::V3(will) => &will.topic,
                LastWill::V5(will) => &will.topic,
            };
            if !self.authorizer.may_publish(&identity, topic) {
                tracing::debug!(client_id = %id.client_id, %topic, "connection refused: will topic not allowed");
                return AuthResult::NotAuthorized;
            }
        }
        self.wait_for_same_client(id).await;
        self.remember(id.clone(), identity);
        AuthResult::Allow(false, None)
    }

    /// Waits, bounded by [`SAME_CLIENT_WAIT`], until no clean session of the same client id is left
    /// and no other handshake holds rmqtt's per-client-id lock.
    ///
    /// A clean session of the same id is closed here instead of being left to rmqtt's kick: it ends
    /// whether or not its loop is still reading, and is gone before rmqtt looks. A persistent session
    /// is left to the kick, which its offline loop answers even when the online loop has ended.
    async fn wait_for_same_client(&self, id: &Id) {
        let deadline = Instant::now() + SAME_CLIENT_WAIT;
        let mut closed_previous = false;
        while Instant::now() < deadline {
            let entry = self.scx.extends.shared().await.entry(id.clone());
            let clean_previous = match entry.session() {
                Some(previous) => will_be_removed(&previous).await,
                None => false,
            };
            if clean_previous {
                if !closed_previous {
                    if let Some(tx) = entry.tx() {
                        // rmqtt maps this reason to the v5 DISCONNECT code 0x8E "Session taken over",
                        // which the spec asks the old connection to get.
                        let _ = tx.unbounded_send(Message::Closed(Reason::SessionExpiration));
                    }
                    closed_previous = true;
                }
            } else if entry.try_lock().await.is_ok() {
                // Taking and at once dropping the lock only proves it is free now; rmqtt takes it right
                // after this hook returns, which leaves a window of microseconds instead of a whole handshake.
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn remember(&self, id: Id, identity: Identity) {
        let now = Instant::now();
        let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pending.retain(|_, (_, since)| now.duration_since(*since) < PENDING_TTL);
        pending.insert(id, (identity, now));
    }

    async fn attach_identity(&self, session: &Session) {
        let identity = {
            let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            pending.remove(&session.id)
        };
        if let Some((identity, _)) = identity {
            // Behind an Arc, so that the check of every publish clones a pointer, not two strings.
            session.extra_attrs.write().await.insert(TopicName::from_static(IDENTITY_ATTR), Arc::new(identity));
        }
    }
}

/// Whether rmqtt removes this session when its connection ends, as it decides in `SessionState::run`:
/// v3.1.1 by the clean session flag, v5 by a session expiry interval of zero.
async fn will_be_removed(session: &Session) -> bool {
    match session.connect_info().await {
        Ok(connect_info) => match connect_info.as_ref() {
            ConnectInfo::V3(_, connect) => connect.clean_session,
            ConnectInfo::V5(..) => session.fitter.session_expiry_interval(None).is_zero(),
        },
        Err(_) => true,
    }
}

async fn identity_of(session: &Session) -> Option<Arc<Identity>> {
    session.extra_attrs.read().await.get::<Arc<Identity>>(IDENTITY_ATTR).cloned()
}

/// A session without an identity should not exist (every connection passes `ClientAuthenticate`);
/// if one does, it is refused rather than trusted.
fn missing_identity(session: &Session) -> bool {
    tracing::warn!(client_id = %session.id.client_id, "session has no identity, refusing");
    false
}

/// The filter as the client wrote it: rmqtt has already split `$share/{group}/` off shared subscriptions.
fn original_filter(subscribe: &Subscribe) -> String {
    match subscribe.opts.shared_group() {
        Some(group) => format!("$share/{group}/{}", subscribe.topic_filter),
        None => subscribe.topic_filter.to_string(),
    }
}
