//! rmqtt hook handlers that put our [`Authorizer`] in charge of connections, subscriptions and publishes,
//! and that make the takeover of a persistent session lose no message.
//!
//! rmqtt hands a hook the CONNECT at `ClientAuthenticate`, but the `Session` only appears later,
//! at `ClientConnected`. The identity the authorizer returned therefore waits in `pending`
//! (keyed by rmqtt's per-connection `Id`) until the session exists, and then moves into the
//! session's extra attributes, where the ACL hooks find it.
//!
//! # Takeover
//! When a client reconnects to its persistent session, rmqtt (0.24) "kicks" the old session, removes
//! it from its client table, builds the new session and only then registers it and hands it the old
//! session's queue and unacknowledged messages. Measured with a consumer taken over eight times while a
//! publisher streamed 6,000 QoS 1 messages (`tests/broker/takeover.rs`), rmqtt alone lost 14 to 98 of them
//! in every run, and the killed-ingester pipeline test lost 11 to 160 of 3,000 readings in 6 of 6 runs. The gaps:
//! - messages routed while no session was registered for the client id (after the old one was removed,
//!   before the new one was set) were dropped as "the client has disconnected" (most of the loss);
//! - messages routed to the old session after it had answered the kick were left in, or refused by,
//!   its channel, which nobody reads any more;
//! - a kick answered by the old session's *online* loop left the messages queued behind the kick in that
//!   channel (its offline loop moves them into the queue first);
//! - the message being written when the client's socket broke was neither queued nor in flight any more
//!   (one per abrupt disconnect under load).
//!
//! So, while a persistent session is taken over (from the successor's `ClientAuthenticate` to its `ClientConnected`):
//! - publishes to topics the old session subscribes to wait in the publish ACL hook, just before rmqtt routes
//!   them ([`AuthHandler::wait_for_takeovers`]), so that they reach the successor;
//! - a predecessor that is still connected is taken offline first ([`AuthHandler::wait_for_same_client`]);
//! - a message rmqtt drops anyway for that client id is forwarded to the successor ([`AuthHandler::redirect_dropped`]);
//! - the message whose write failed is queued again when the connection ends ([`InHand`]).
//!
//! What is left needs rmqtt itself (the patch is in the ARCHITECTURE notes): a publish that passed the gate
//! before it closed and is still being routed after [`IN_PROGRESS_GRACE`] can still fall into the gap, and
//! the unacknowledged messages are sent again in reverse order (each with DUP set).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferrite_core::filter_matches;
use rmqtt::codec::types::QoS;
use rmqtt::codec::v5::SubscribeAckReason;
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType, Type};
use rmqtt::session::Session;
use rmqtt::types::{
    AuthResult, ClientId, ConnectInfo, From, Id, LastWill, Message, Publish, PublishAclResult, Reason, Subscribe,
    SubscribeAclResult, TopicName,
};

use crate::auth::{AuthDecision, Authorizer, DenyReason, Identity};

/// Where the identity is kept among a session's extra attributes.
const IDENTITY_ATTR: &str = "ferrite.identity";
/// Where the message being written to a session's connection is kept (see [`InHand`]).
const IN_HAND_ATTR: &str = "ferrite.in-hand";

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

/// How long a message dropped for a client whose session is being taken over waits for the successor.
/// rmqtt gives a kicked session 5 s to answer before it goes on anyway; a takeover that outlasts this
/// failed (its handshake ended after authentication), and the message is left dropped.
const TAKEOVER_WAIT: Duration = Duration::from_secs(6);

/// How often a waiting hook looks again; a takeover without a backlog takes about a millisecond.
const POLL_INTERVAL: Duration = Duration::from_millis(1);

/// How long a takeover waits after closing the publish gate before rmqtt kicks the old session.
/// rmqtt has no hook after routing, so a publish already past the gate cannot be waited for exactly;
/// routing takes microseconds, but a publisher's task can be descheduled meanwhile: the chaos test (`crates/ferrite/tests/chaos.rs`)
/// lost 1-3 acknowledged readings in about 1 run in 17 with 5 ms on a loaded 2-core machine. A takeover is rare (a reconnect
/// of a persistent session) and already waits for its predecessor, so 100 ms more cost nothing a client notices.
const IN_PROGRESS_GRACE: Duration = Duration::from_millis(100);

/// Per-client bounds the hooks enforce (see `Config`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quotas {
    /// rmqtt clamps a v5 client's Session Expiry Interval to it; the hook only counts the clamps.
    pub(crate) max_session_expiry: Duration,
    /// Retained topics per device (anonymous clients share one allowance); services are not limited.
    pub(crate) max_retained: usize,
}

/// Registers the authorizer on the hooks that need it.
pub(crate) async fn install(scx: &ServerContext, authorizer: Arc<dyn Authorizer>, quotas: Quotas) {
    let handler = AuthHandler {
        scx: scx.clone(),
        authorizer,
        quotas,
        retained: Arc::new(Mutex::new(HashMap::new())),
        pending: Arc::new(Mutex::new(HashMap::new())),
        takeovers: Arc::new(Mutex::new(HashMap::new())),
        takeover_count: Arc::new(AtomicUsize::new(0)),
    };
    let register = scx.extends.hook_mgr().register();
    for typ in [
        Type::ClientAuthenticate,
        Type::ClientConnected,
        Type::ClientConnack,
        Type::ClientSubscribeCheckAcl,
        Type::MessagePublishCheckAcl,
        Type::MessageDropped,
        Type::MessageDelivered,
        Type::MessageAcked,
        Type::ClientDisconnected,
    ] {
        register.add(typ, Box::new(handler.clone())).await;
    }
    register.start().await;
}

#[derive(Clone)]
struct AuthHandler {
    scx: ServerContext,
    authorizer: Arc<dyn Authorizer>,
    quotas: Quotas,
    /// The retained topics each owner (see [`retained_owner`]) has set since the broker started.
    retained: Arc<Mutex<HashMap<String, std::collections::HashSet<String>>>>,
    pending: Arc<Mutex<HashMap<Id, (Identity, Instant)>>>,
    /// Persistent sessions being taken over: from the successor's authentication to its `ClientConnected`.
    takeovers: Arc<Mutex<HashMap<ClientId, Takeover>>>,
    /// `takeovers.len()`, kept beside the map so that publishes skip its lock while no takeover runs (the usual case).
    takeover_count: Arc<AtomicUsize>,
}

/// A persistent session whose client id is being taken over by a new connection.
struct Takeover {
    since: Instant,
    /// The predecessor's topic filters (without `$share/{group}/`): publishes to matching topics wait.
    filters: Vec<String>,
}

/// The latest QoS 1/2 message rmqtt handed to a session's connection, until the client acknowledges it.
///
/// rmqtt takes a message off the session's queue, writes it to the socket, and only then records it as
/// in flight; when the write fails because the client has gone, that one message is neither queued nor
/// in flight, and rmqtt forgets it. It is found here when the connection ends and queued again.
#[derive(Default)]
struct InHand(Mutex<Option<(From, Publish)>>);

impl Takeover {
    fn active(&self) -> bool {
        self.since.elapsed() < TAKEOVER_WAIT
    }
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
                session
                    .extra_attrs
                    .write()
                    .await
                    .insert(TopicName::from_static(IN_HAND_ATTR), Arc::new(InHand::default()));
                self.takeover_done(&session.id.client_id);
                (true, acc)
            }
            Parameter::ClientConnack(connect_info, reason) => {
                // A handshake refused after authentication never reaches `ClientConnected`.
                if !reason.success() {
                    self.takeover_done(&connect_info.id().client_id);
                }
                (true, acc)
            }
            Parameter::MessageDelivered(session, from, publish) => {
                if publish.qos != QoS::AtMostOnce
                    && let Some(in_hand) = in_hand_of(session).await
                {
                    *in_hand.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
                        Some((from.clone(), (*publish).clone()));
                }
                (true, acc)
            }
            Parameter::MessageAcked(session, _, publish) => {
                if let Some(in_hand) = in_hand_of(session).await {
                    let mut slot = in_hand.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    if slot.as_ref().is_some_and(|(_, held)| held.packet_id == publish.packet_id) {
                        *slot = None;
                    }
                }
                (true, acc)
            }
            Parameter::ClientDisconnected(session, _) => {
                self.requeue_unwritten(session).await;
                (true, acc)
            }
            Parameter::MessageDropped(to, from, publish, reason) => {
                count_dropped(publish, reason);
                if let Some(to) = to {
                    self.redirect_dropped(to, from, publish, reason).await;
                }
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
                let identity = identity_of(session).await;
                let allowed = match &identity {
                    Some(identity) => self.authorizer.may_publish(identity, &publish.topic),
                    None => missing_identity(session),
                };
                if allowed && publish.retain && !self.retained_within_quota(identity.as_deref(), publish) {
                    tracing::debug!(client_id = %session.id.client_id, topic = %publish.topic, "retained publish refused: quota");
                    metrics::counter!("ferrite_broker_quota_refused_total", "quota" => "retained").increment(1);
                    let refused = PublishAclResult::rejected(false, None);
                    return (false, Some(HookResult::PublishAclResult(refused)));
                }
                if allowed {
                    // rmqtt routes the message right after this hook.
                    self.wait_for_takeovers(&publish.topic).await;
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
    /// Whether a retained publish fits its owner's allowance of retained topics; records the topic if so.
    /// Clearing a retained value (empty payload) always passes and frees its place.
    fn retained_within_quota(&self, identity: Option<&Identity>, publish: &Publish) -> bool {
        let Some(owner) = identity.and_then(retained_owner) else {
            return true;
        };
        let mut retained = self.retained.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let topics = retained.entry(owner).or_default();
        if publish.payload.is_empty() {
            topics.remove(publish.topic.as_ref() as &str);
            return true;
        }
        if topics.contains(publish.topic.as_ref() as &str) {
            return true;
        }
        if topics.len() >= self.quotas.max_retained {
            return false;
        }
        topics.insert(publish.topic.to_string());
        true
    }

    async fn authenticate(&self, connect_info: &ConnectInfo) -> AuthResult {
        let id = connect_info.id();
        if let ConnectInfo::V5(_, connect) = connect_info
            && Duration::from_secs(u64::from(connect.session_expiry_interval_secs)) > self.quotas.max_session_expiry
        {
            // rmqtt applies the clamp (its `max_session_expiry_interval`); counted here, where the request is seen.
            metrics::counter!("ferrite_broker_quota_refused_total", "quota" => "session_expiry").increment(1);
        }
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
        // The gate closes first: publishes that would reach the old session now wait for the new one.
        if self.takeover_started(id).await {
            self.wait_for_same_client(id).await;
            // Publishes that passed the gate just before it closed finish routing into the old session
            // (whose queue is handed over) instead of straddling rmqtt's kick.
            tokio::time::sleep(IN_PROGRESS_GRACE).await;
        } else {
            self.wait_for_same_client(id).await;
        }
        self.remember(id.clone(), identity);
        AuthResult::Allow(false, None)
    }

    /// Waits, bounded by [`SAME_CLIENT_WAIT`], until no clean session of the same client id is left,
    /// no persistent one is still connected, and no other handshake holds rmqtt's per-client-id lock.
    ///
    /// A clean session of the same id is closed here instead of being left to rmqtt's kick: it ends
    /// whether or not its loop is still reading, and is gone before rmqtt looks.
    /// A persistent session that is still connected is taken offline the same way, so that rmqtt's kick
    /// reaches its offline loop, which moves the messages queued behind the kick into the session's queue
    /// before it answers; the online loop answers at once and leaves them in a channel that is dropped.
    async fn wait_for_same_client(&self, id: &Id) {
        let deadline = Instant::now() + SAME_CLIENT_WAIT;
        let mut closed_previous = false;
        while Instant::now() < deadline {
            let entry = self.scx.extends.shared().await.entry(id.clone());
            let previous_in_the_way = match entry.session() {
                Some(previous) => will_be_removed(&previous).await || previous.connected().await.unwrap_or(false),
                None => false,
            };
            if previous_in_the_way {
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

    /// Records a takeover when a persistent session of this client id exists (rmqtt kicks it once
    /// authentication is done); true if one was recorded.
    async fn takeover_started(&self, id: &Id) -> bool {
        let Some(previous) = self.scx.extends.shared().await.entry(id.clone()).session() else {
            return false;
        };
        if will_be_removed(&previous).await {
            return false;
        }
        let filters = match previous.subscriptions().await {
            Ok(subscriptions) => subscriptions.to_topic_filters().await.iter().map(ToString::to_string).collect(),
            Err(_) => Vec::new(),
        };
        let mut takeovers = self.takeovers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        takeovers.retain(|_, takeover| takeover.active());
        takeovers.insert(id.client_id.clone(), Takeover { since: Instant::now(), filters });
        self.takeover_count.store(takeovers.len(), Ordering::Release);
        true
    }

    fn takeover_done(&self, client_id: &ClientId) {
        let mut takeovers = self.takeovers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        takeovers.remove(client_id);
        takeovers.retain(|_, takeover| takeover.active());
        self.takeover_count.store(takeovers.len(), Ordering::Release);
    }

    fn taking_over(&self, client_id: &ClientId) -> bool {
        let takeovers = self.takeovers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        takeovers.get(client_id).is_some_and(Takeover::active)
    }

    /// Holds a publish to a topic that a session being taken over subscribes to until the takeover is
    /// done, so that rmqtt routes it to the successor instead of into the gap between the two sessions.
    /// Publishes to other topics pass at once; while no takeover runs the check is one atomic load.
    async fn wait_for_takeovers(&self, topic: &str) {
        if self.takeover_count.load(Ordering::Acquire) == 0 {
            return;
        }
        let deadline = Instant::now() + TAKEOVER_WAIT;
        loop {
            let blocked = {
                let takeovers = self.takeovers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                takeovers.values().any(|takeover| {
                    takeover.active() && takeover.filters.iter().any(|filter| filter_matches(filter, topic))
                })
            };
            if !blocked || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Forwards a message that rmqtt dropped for a session being taken over to its successor.
    ///
    /// rmqtt reports the drop with the id of the session it was meant for (or only its client id when no
    /// session was registered). The message is forwarded when, once no handshake for that client id is
    /// under way any more, a persistent session other than the addressee holds the client id: the
    /// successor that the message would have reached a moment later. A message dropped for the session
    /// that holds the client id (e.g. its queue is full) or for a clean session stays dropped.
    /// This runs on the publisher's task, which waits meanwhile, so its later messages stay behind this one.
    async fn redirect_dropped(&self, to: &Id, from: &From, publish: &Publish, reason: &Reason) {
        let client_id = &to.client_id;
        let mut waited = false;
        let deadline = Instant::now() + TAKEOVER_WAIT;
        while self.taking_over(client_id) && Instant::now() < deadline {
            waited = true;
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        let entry = self.scx.extends.shared().await.entry(to.clone());
        let (Some(successor), Some(tx)) = (entry.session(), entry.tx()) else {
            return;
        };
        if successor.id == *to || will_be_removed(&successor).await {
            return;
        }
        if !waited && !successor.connected().await.unwrap_or(false) {
            // Not part of a takeover: the client id's session is offline and was reachable all along.
            return;
        }
        tracing::debug!(client_id = %client_id, %reason, topic = %publish.topic, "forwarding a message dropped during a takeover");
        if let Err(e) = tx.unbounded_send(Message::Forward(from.clone(), publish.clone())) {
            tracing::warn!(client_id = %client_id, cause = %e, "message dropped during a takeover is lost");
        }
    }

    /// Queues again the message whose write failed when the connection ended (see [`InHand`]).
    ///
    /// rmqtt calls `ClientDisconnected` after the connection's loop ended and before the session goes
    /// offline, on the session's own task; the message sent to the session's channel now is read by its
    /// offline loop (or handed to a successor), behind anything queued before.
    /// A message that was acknowledged, or is still in flight (rmqtt sends it again), is left alone.
    async fn requeue_unwritten(&self, session: &Session) {
        let Some(in_hand) = in_hand_of(session).await else {
            return;
        };
        let Some((from, publish)) = in_hand.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() else {
            return;
        };
        let Some(packet_id) = publish.packet_id else {
            return;
        };
        if session.out_inflight().read().await.get(packet_id.get()).is_some() || will_be_removed(session).await {
            return;
        }
        let entry = self.scx.extends.shared().await.entry(session.id.clone());
        let (Some(holder), Some(tx)) = (entry.session(), entry.tx()) else {
            return;
        };
        // A successor that started clean must not get the old session's messages.
        if holder.id != session.id && will_be_removed(&holder).await {
            return;
        }
        let mut publish = publish;
        // A fresh packet id (the old one may be reused meanwhile); DUP, because part of it may have reached the client.
        publish.packet_id = None;
        publish.dup = true;
        tracing::debug!(client_id = %session.id.client_id, topic = %publish.topic, "queueing again a message whose write failed");
        if let Err(e) = tx.unbounded_send(Message::Forward(from, publish)) {
            tracing::warn!(client_id = %session.id.client_id, cause = %e, "a message whose write failed is lost");
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
/// Counts a message the broker discarded, by why and at which QoS.
///
/// A QoS 1/2 message dropped for a full queue was already acknowledged to its publisher: this counter is
/// the only trace of that loss (the overload case in BENCHMARKS.md). Messages later forwarded to a
/// successor session during a takeover are counted too; they are not lost.
fn count_dropped(publish: &Publish, reason: &Reason) {
    let reason = match reason {
        Reason::MessageQueueFull => "queue_full",
        Reason::MessageExpiration => "expired",
        Reason::SessionExpiration => "session_expired",
        _ => "other",
    };
    let qos = match publish.qos {
        QoS::AtMostOnce => "0",
        QoS::AtLeastOnce => "1",
        QoS::ExactlyOnce => "2",
    };
    metrics::counter!("ferrite_broker_messages_dropped_total", "reason" => reason, "qos" => qos).increment(1);
}

/// Whose allowance of retained topics a publish counts against: a device's own, one shared by every anonymous
/// client (they choose their client ids freely), none for platform services.
fn retained_owner(identity: &Identity) -> Option<String> {
    match &identity.principal {
        crate::auth::Principal::Device(id) => Some(format!("device:{id}")),
        crate::auth::Principal::Anonymous => Some("anonymous".to_owned()),
        crate::auth::Principal::Service(_) => None,
    }
}

async fn will_be_removed(session: &Session) -> bool {
    match session.connect_info().await {
        Ok(connect_info) => match connect_info.as_ref() {
            ConnectInfo::V3(_, connect) => connect.clean_session,
            ConnectInfo::V5(..) => session.fitter.session_expiry_interval(None).is_zero(),
        },
        Err(_) => true,
    }
}

async fn in_hand_of(session: &Session) -> Option<Arc<InHand>> {
    session.extra_attrs.read().await.get::<Arc<InHand>>(IN_HAND_ATTR).cloned()
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
