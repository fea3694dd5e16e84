//! The engine's shared state: sessions by client id, the subscription table, retained messages, and the store.
//!
//! Routing runs in the publisher's task: the subscription table is read under a read lock, each matching session's
//! queue is pushed under that session's own lock, and its connection is woken. No channel or task lies between a
//! publisher and a subscriber's queue.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrite_mqtt_codec::{MqttStr, Properties, ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscriptionOptions};
use smallvec::SmallVec;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::message::{Message, unix_ms};
use super::session::{Dropped, Outgoing, QueueBounds, Session, Subscription};
use super::store::{Commit, Recovered, SessionRecord, Store, StoredSubscription};
use super::topics::{Match, RetainedTable, SubscriptionTable, split_shared};
use crate::auth::{Authorizer, Identity, Principal};

/// What the engine enforces, from [`crate::Config`] and the engine's own constants.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) max_packet_size: u32,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_session_expiry: Duration,
    pub(crate) max_retained_per_client: usize,
    pub(crate) max_subscriptions_per_client: usize,
    pub(crate) server_keep_alive: Option<u16>,
    pub(crate) topic_alias_maximum: u16,
    pub(crate) queue: QueueBounds,
    /// QoS 1/2 messages in flight to a 3.1.1 client (a v5 client states its own Receive Maximum).
    pub(crate) v311_window: u16,
    /// The Receive Maximum the broker announces: QoS 1/2 publishes a client may have unacknowledged at once.
    pub(crate) receive_maximum: u16,
}

/// A subscription in the table: whose, and with what options.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) session: Arc<Session>,
    pub(crate) options: SubscriptionOptions,
    pub(crate) id: Option<u32>,
}

/// Counters for `$SYS` and `/metrics`.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) received: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) connections: AtomicU64,
}

pub(crate) struct Core {
    pub(crate) limits: Limits,
    pub(crate) authorizer: Arc<dyn Authorizer>,
    pub(crate) store: Store,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    subscriptions: RwLock<SubscriptionTable<Arc<str>, Target>>,
    retained: RwLock<RetainedTable<Arc<Message>>>,
    /// The retained topics each owner (a device; all anonymous clients together) holds.
    retained_owners: Mutex<HashMap<String, HashSet<String>>>,
    pub(crate) stats: Stats,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) started: Instant,
}

/// A connection's claim on its session.
pub(crate) struct Attached {
    pub(crate) session: Arc<Session>,
    pub(crate) generation: u64,
    pub(crate) present: bool,
    pub(crate) waker: Arc<Notify>,
}

/// A store write nobody waits for: it happens all the same (dropping a [`Commit`] does not cancel it); only
/// acknowledgements to publishers wait for theirs.
pub(crate) fn unawaited(commit: Commit) {
    let _pending = commit;
}

/// A matching subscription: the session, the delivery's QoS, its RETAIN flag, and the subscription identifier.
type DirectTarget = (Arc<Session>, QoS, bool, Option<u32>);
/// A shared group's pick: the member's session, the delivery's QoS, and the subscription identifier.
type SharedTarget = (Arc<Session>, QoS, Option<u32>);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Core {
    pub(crate) fn new(limits: Limits, authorizer: Arc<dyn Authorizer>, store: Store) -> Core {
        Core {
            limits,
            authorizer,
            store,
            sessions: Mutex::new(HashMap::new()),
            subscriptions: RwLock::new(SubscriptionTable::new()),
            retained: RwLock::new(RetainedTable::new()),
            retained_owners: Mutex::new(HashMap::new()),
            stats: Stats::default(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            started: Instant::now(),
        }
    }

    /// Puts back what the store kept: retained messages, and persistent sessions (offline, with their
    /// subscriptions and queues), whose expiry counts from when they went offline.
    pub(crate) fn recover(self: &Arc<Self>, recovered: Recovered) {
        let mut retained = self.retained.write().unwrap_or_else(|p| p.into_inner());
        for (topic, stored) in recovered.retained {
            if let Some((message, _)) = Message::from_stored(&stored) {
                retained.insert(&topic, Arc::new(message));
            }
        }
        drop(retained);
        let now_ms = unix_ms(std::time::SystemTime::now());
        for (client_id, record, queue) in recovered.sessions {
            let offline_for = record.disconnected_at_unix_ms.map_or(0, |at| now_ms.saturating_sub(at));
            let left = (u64::from(record.expiry_secs) * 1000).saturating_sub(offline_for);
            let client_id: Arc<str> = Arc::from(client_id);
            if left == 0 {
                unawaited(self.store.delete_session(&client_id));
                continue;
            }
            let session = Arc::new(Session::new(client_id.clone(), ProtocolVersion::V5, record.expiry_secs));
            {
                let mut state = session.lock();
                state.stored = true;
                state.disconnected_at = Some(Instant::now());
                for (seq, stored) in queue {
                    state.next_seq = state.next_seq.max(seq + 1);
                    match Message::from_stored(&stored) {
                        Some((message, qos)) => {
                            let retain = message.retain;
                            state.queued_bytes += message.weight();
                            state.queue.push_back(Outgoing {
                                message: Arc::new(message),
                                qos,
                                retain,
                                subscription_ids: SmallVec::new(),
                                seq: Some(seq),
                            });
                        }
                        None => unawaited(self.store.remove(&client_id, seq)),
                    }
                }
            }
            for stored in &record.subscriptions {
                let Some(options) = stored_options(stored) else { continue };
                self.add_subscription(&session, &stored.filter, options, stored.subscription_id);
            }
            lock(&self.sessions).insert(client_id, session.clone());
            self.expire_later(session, 0, Duration::from_millis(left));
        }
    }

    /// Attaches a connection to the client's session, creating or replacing it (clean start), or taking it over
    /// from a connection still attached (which is told by its generation and woken to leave).
    pub(crate) fn attach(
        self: &Arc<Self>,
        client_id: &Arc<str>,
        clean_start: bool,
        expiry_secs: u32,
        version: ProtocolVersion,
        window: u16,
    ) -> Attached {
        let waker = Arc::new(Notify::new());
        let mut sessions = lock(&self.sessions);
        let existing = sessions.get(client_id).cloned();
        if let Some(old) = existing {
            if !clean_start {
                let mut state = old.lock();
                if !state.ended {
                    if let Some(previous) = state.waker.replace(waker.clone()) {
                        previous.notify_one();
                    }
                    state.generation += 1;
                    state.connected = true;
                    old.set_online(true);
                    state.expiry_secs = expiry_secs;
                    state.disconnected_at = None;
                    state.version = version;
                    state.window = window;
                    state.kick = None;
                    let generation = state.generation;
                    drop(state);
                    return Attached { session: old, generation, present: true, waker };
                }
            } else {
                self.end_session(&old, &mut sessions);
            }
        }
        let session = Arc::new(Session::new(client_id.clone(), version, expiry_secs));
        {
            let mut state = session.lock();
            state.generation = 1;
            state.connected = true;
            state.window = window;
            state.waker = Some(waker.clone());
        }
        session.set_online(true);
        sessions.insert(client_id.clone(), session.clone());
        Attached { session, generation: 1, present: false, waker }
    }

    /// The connection of `generation` ended: the session stays (persistent, until it expires) or ends with it.
    pub(crate) fn detach(self: &Arc<Self>, session: &Arc<Session>, generation: u64) {
        let mut state = session.lock();
        if state.generation != generation || state.ended {
            return;
        }
        state.connected = false;
        state.waker = None;
        session.set_online(false);
        state.disconnected_at = Some(Instant::now());
        let expiry = state.expiry_secs;
        if expiry == 0 {
            drop(state);
            let mut sessions = lock(&self.sessions);
            self.end_session(session, &mut sessions);
            return;
        }
        state.stored = true;
        let record = session_record(&state);
        drop(state);
        unawaited(self.store.put_session(&session.client_id, record));
        self.expire_later(session.clone(), generation, Duration::from_secs(u64::from(expiry)));
    }

    /// Writes a persistent session's record (its subscriptions changed).
    pub(crate) fn save_session(&self, session: &Session) -> Option<Commit> {
        let mut state = session.lock();
        if state.expiry_secs == 0 || state.ended {
            return None;
        }
        state.stored = true;
        let record = session_record(&state);
        drop(state);
        Some(self.store.put_session(&session.client_id, record))
    }

    fn expire_later(self: &Arc<Self>, session: Arc<Session>, generation: u64, after: Duration) {
        let core = self.clone();
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(after) => {}
                () = shutdown.cancelled() => return,
            }
            let mut sessions = lock(&core.sessions);
            let expired = {
                let state = session.lock();
                state.generation == generation && !state.connected && !state.ended
            };
            if expired {
                core.end_session(&session, &mut sessions);
                metrics::counter!("ferrite_broker_sessions_expired_total").increment(1);
            }
        });
    }

    /// Ends a session for good: its connection (if any) is told to leave, its subscriptions and store entries go.
    fn end_session(&self, session: &Arc<Session>, sessions: &mut HashMap<Arc<str>, Arc<Session>>) {
        let mut state = session.lock();
        state.ended = true;
        state.kick.get_or_insert(ReasonCode::SessionTakenOver);
        if let Some(waker) = state.waker.take() {
            waker.notify_one();
        }
        session.set_online(false);
        let filters: Vec<String> = state.subscriptions.drain().map(|(filter, _)| filter).collect();
        let dropped = state.queue.len() + state.in_flight.len();
        state.queue.clear();
        state.in_flight.clear();
        state.queued_bytes = 0;
        let stored = std::mem::take(&mut state.stored);
        drop(state);
        if dropped > 0 {
            metrics::counter!("ferrite_broker_messages_dropped_total", "reason" => "session_ended", "qos" => "any")
                .increment(dropped as u64);
        }
        {
            let mut table = self.subscriptions.write().unwrap_or_else(|p| p.into_inner());
            for filter in &filters {
                let (group, bare) = match split_shared(filter) {
                    Some((group, bare)) => (Some(group), bare),
                    None => (None, filter.as_str()),
                };
                table.unsubscribe(bare, group, &session.client_id);
            }
        }
        if sessions.get(&session.client_id).is_some_and(|current| Arc::ptr_eq(current, session)) {
            sessions.remove(&session.client_id);
        }
        if stored {
            unawaited(self.store.delete_session(&session.client_id));
        }
    }

    /// Routes a message to every matching subscription, and keeps it if retained. The commits are what the
    /// publisher's acknowledgement waits for ([`super::Durability::Sync`]).
    pub(crate) fn publish(&self, message: Arc<Message>) -> SmallVec<[Commit; 2]> {
        let mut commits = SmallVec::new();
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        if message.retain {
            self.keep_retained(&message, &mut commits);
        }
        let mut targets: SmallVec<[DirectTarget; 4]> = SmallVec::new();
        let mut shared: SmallVec<[SharedTarget; 2]> = SmallVec::new();
        {
            let table = self.subscriptions.read().unwrap_or_else(|p| p.into_inner());
            table.for_each_match(message.topic.as_str(), |found| match found {
                Match::Direct { key, value, .. } => {
                    if value.options.no_local && message.publisher.as_deref() == Some(&**key) {
                        return;
                    }
                    let retain = value.options.retain_as_published && message.retain;
                    targets.push((value.session.clone(), message.qos.min(value.options.qos), retain, value.id));
                }
                Match::Shared { members, next, .. } => {
                    if members.is_empty() {
                        return;
                    }
                    let start = next.fetch_add(1, Ordering::Relaxed) % members.len();
                    let online = (0..members.len())
                        .map(|i| &members[(start + i) % members.len()])
                        .find(|(_, target)| target.session.is_online());
                    let (_, target) = online.unwrap_or(&members[start]);
                    shared.push((target.session.clone(), message.qos.min(target.options.qos), target.id));
                }
            });
        }
        // One delivery per session for overlapping subscriptions: the highest QoS and every identifier.
        if targets.len() > 1 {
            targets.sort_by_key(|(session, ..)| Arc::as_ptr(session));
        }
        let mut i = 0;
        while i < targets.len() {
            let (session, mut qos, mut retain, id) = targets[i].clone();
            let mut ids: SmallVec<[u32; 1]> = id.into_iter().collect();
            let mut j = i + 1;
            while j < targets.len() && Arc::ptr_eq(&targets[j].0, &session) {
                qos = qos.max(targets[j].1);
                retain |= targets[j].2;
                ids.extend(targets[j].3);
                j += 1;
            }
            i = j;
            self.deliver(
                &session,
                Outgoing { message: message.clone(), qos, retain, subscription_ids: ids, seq: None },
                &mut commits,
            );
        }
        for (session, qos, id) in shared {
            let ids = id.into_iter().collect();
            self.deliver(
                &session,
                Outgoing { message: message.clone(), qos, retain: false, subscription_ids: ids, seq: None },
                &mut commits,
            );
        }
        commits
    }

    fn deliver(&self, session: &Session, outgoing: Outgoing, commits: &mut SmallVec<[Commit; 2]>) {
        let qos = outgoing.qos;
        match session.deliver(outgoing, self.limits.queue, &self.store) {
            Ok(Some(commit)) => commits.push(commit),
            Ok(None) => {}
            Err(Dropped::Offline) => {}
            Err(reason) => self.count_drop(reason.label(), qos),
        }
    }

    pub(crate) fn count_drop(&self, reason: &'static str, qos: QoS) {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        let qos = match qos {
            QoS::AtMostOnce => "0",
            QoS::AtLeastOnce => "1",
            QoS::ExactlyOnce => "2",
        };
        metrics::counter!("ferrite_broker_messages_dropped_total", "reason" => reason, "qos" => qos).increment(1);
    }

    fn keep_retained(&self, message: &Arc<Message>, commits: &mut SmallVec<[Commit; 2]>) {
        let topic = message.topic.as_str();
        let persist = !topic.starts_with('$');
        let mut retained = self.retained.write().unwrap_or_else(|p| p.into_inner());
        if message.payload.is_empty() {
            retained.remove(topic);
            drop(retained);
            if persist {
                commits.push(self.store.set_retained(topic, None));
            }
            return;
        }
        retained.insert(topic, message.clone());
        drop(retained);
        if persist && let Some(stored) = message.to_stored(message.qos, true) {
            commits.push(self.store.set_retained(topic, Some(stored)));
        }
    }

    /// Whether a retained publish fits its owner's allowance of retained topics; records the topic if so.
    /// Clearing a retained value (empty payload) always passes and frees its place.
    pub(crate) fn retained_within_quota(&self, identity: &Identity, topic: &str, clearing: bool) -> bool {
        let owner = match &identity.principal {
            Principal::Device(id) => format!("device:{id}"),
            Principal::Anonymous => "anonymous".to_owned(),
            Principal::Service(_) => return true,
        };
        let mut owners = lock(&self.retained_owners);
        let topics = owners.entry(owner).or_default();
        if clearing {
            topics.remove(topic);
            return true;
        }
        if topics.contains(topic) {
            return true;
        }
        if topics.len() >= self.limits.max_retained_per_client {
            return false;
        }
        topics.insert(topic.to_owned());
        true
    }

    /// Adds (or replaces) a subscription; whether it existed before.
    pub(crate) fn add_subscription(
        &self,
        session: &Arc<Session>,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> bool {
        let existed = session.lock().subscriptions.insert(filter.to_owned(), Subscription { options, id }).is_some();
        let (group, bare) = match split_shared(filter) {
            Some((group, bare)) => (Some(group), bare),
            None => (None, filter),
        };
        let target = Target { session: session.clone(), options, id };
        self.subscriptions.write().unwrap_or_else(|p| p.into_inner()).subscribe(
            bare,
            group,
            session.client_id.clone(),
            target,
        );
        existed
    }

    /// Subscribes and queues the retained messages the subscription asks for.
    pub(crate) fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) {
        let existed = self.add_subscription(session, filter, options, id);
        let wanted = match options.retain_handling {
            RetainHandling::OnSubscribe => true,
            RetainHandling::OnNewSubscribe => !existed,
            RetainHandling::Never => false,
        };
        if !wanted || split_shared(filter).is_some() {
            return;
        }
        let mut found: Vec<Arc<Message>> = Vec::new();
        let now = Instant::now();
        self.retained.read().unwrap_or_else(|p| p.into_inner()).for_each_matching(filter, |_, message| {
            if message.remaining_expiry(now).is_ok() {
                found.push(message.clone());
            }
        });
        let mut commits = SmallVec::new();
        for message in found {
            let qos = message.qos.min(options.qos);
            let ids = id.into_iter().collect();
            self.deliver(
                session,
                Outgoing { message, qos, retain: true, subscription_ids: ids, seq: None },
                &mut commits,
            );
        }
        // Retained deliveries are re-sent from the retained table after a crash, so nothing waits for their commits.
        drop(commits);
    }

    /// Removes a subscription; whether it existed.
    pub(crate) fn unsubscribe(&self, session: &Arc<Session>, filter: &str) -> bool {
        let existed = session.lock().subscriptions.remove(filter).is_some();
        let (group, bare) = match split_shared(filter) {
            Some((group, bare)) => (Some(group), bare),
            None => (None, filter),
        };
        self.subscriptions.write().unwrap_or_else(|p| p.into_inner()).unsubscribe(bare, group, &session.client_id);
        existed
    }

    /// Whether a client is connected under exactly this id.
    pub(crate) fn is_connected(&self, client_id: &str) -> bool {
        lock(&self.sessions).get(client_id).is_some_and(|session| session.is_online())
    }

    /// Asks the connections of the clients whose id matches to close; how many were asked.
    pub(crate) fn disconnect_where(&self, matches: &dyn Fn(&str) -> bool, reason: ReasonCode) -> usize {
        let sessions: Vec<Arc<Session>> = lock(&self.sessions)
            .values()
            .filter(|session| session.is_online() && matches(&session.client_id))
            .cloned()
            .collect();
        let mut closed = 0;
        for session in sessions {
            let mut state = session.lock();
            if let Some(waker) = &state.waker {
                waker.notify_one();
                state.kick = Some(reason);
                closed += 1;
            }
        }
        closed
    }

    pub(crate) fn session_count(&self) -> (usize, usize) {
        let sessions = lock(&self.sessions);
        let online = sessions.values().filter(|s| s.is_online()).count();
        (online, sessions.len())
    }

    pub(crate) fn subscription_count(&self) -> usize {
        self.subscriptions.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub(crate) fn retained_count(&self) -> usize {
        self.retained.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Publishes a broker value under `$SYS/broker/...` as a retained QoS 0 message.
    pub(crate) fn publish_sys(&self, topic: &str, value: String) {
        let Ok(topic) = MqttStr::try_from(format!("$SYS/broker/{topic}")) else { return };
        let message = Message::new(topic, Bytes::from(value), QoS::AtMostOnce, true, Properties::default(), None);
        drop(self.publish(Arc::new(message)));
    }
}

fn session_record(state: &super::session::SessionState) -> SessionRecord {
    SessionRecord {
        expiry_secs: state.expiry_secs,
        disconnected_at_unix_ms: (!state.connected).then(|| unix_ms(std::time::SystemTime::now())),
        subscriptions: state
            .subscriptions
            .iter()
            .map(|(filter, subscription)| StoredSubscription {
                filter: filter.clone(),
                qos: subscription.options.qos as u8,
                no_local: subscription.options.no_local,
                retain_as_published: subscription.options.retain_as_published,
                retain_handling: subscription.options.retain_handling as u8,
                subscription_id: subscription.id,
            })
            .collect(),
    }
}

fn stored_options(stored: &StoredSubscription) -> Option<SubscriptionOptions> {
    Some(SubscriptionOptions {
        qos: QoS::from_bits(stored.qos)?,
        no_local: stored.no_local,
        retain_as_published: stored.retain_as_published,
        retain_handling: match stored.retain_handling {
            0 => RetainHandling::OnSubscribe,
            1 => RetainHandling::OnNewSubscribe,
            _ => RetainHandling::Never,
        },
    })
}
