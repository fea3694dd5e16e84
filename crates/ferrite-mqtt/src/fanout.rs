//! [`Fanout`]: one MQTT [`Session`] shared by many consumers, each with its own bounded [`Queue`].
//!
//! A service that serves many readers from one broker connection (the gateway's browsers, the query service's
//! live streams) keeps one broker subscription per filter, however many consumers want it: the first consumer
//! to ask subscribes at the broker, later ones share it (counted), and the last one to let go unsubscribes.
//! A consumer receives a filter's messages only once the broker has granted it (its SUBACK, through
//! [`Session::subscribe_granted`]), so "subscribed" means a message published from then on reaches it.
//!
//! Messages are matched against the consumers' filters in memory, and a consumer with several matching filters
//! gets a message once. Every consumer has a bounded [`Queue`]: a full queue drops the item for that consumer
//! only (counted), so one slow reader never delays the others nor grows memory.
//!
//! The fan-out is plain data with no I/O but non-blocking sends, so its owner can keep it behind one mutex held
//! only briefly. What a service adds (a retained cache, parsing, per-consumer metadata) wraps it.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ferrite_core::filter_matches;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use rumqttc::v5::mqttbytes::v5::Filter;
use tokio::sync::Notify;

use crate::session::Session;

/// A consumer's number, unique for the life of its [`Fanout`].
pub type ConsumerId = u64;

/// The broker's answer for one filter: `Ok` when granted, `Err` with the reason otherwise. Shared, so consumers
/// asking later for a filter already subscribed find it answered at once.
pub type GrantFuture = Shared<BoxFuture<'static, Result<(), String>>>;

/// Builds the broker subscription (QoS, MQTT 5 options) for a filter a consumer asked for.
pub type SubscriptionOptions = fn(&str) -> Filter;

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("too many subscriptions: at most {0} filters per connection")]
    TooMany(usize),
}

/// What one delivery did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Items queued, summed over consumers.
    pub queued: u64,
    /// Items dropped because a consumer's queue was full, summed over consumers.
    pub dropped: u64,
}

struct ConsumerEntry<T> {
    queue: Arc<Queue<T>>,
    filters: BTreeSet<String>,
}

struct FilterEntry {
    /// The consumers subscribed, which receive its messages.
    subscribers: Vec<ConsumerId>,
    /// The consumers that asked for it and wait for the broker's grant; the broker subscription lives while
    /// `subscribers` or `waiting` is not empty.
    waiting: Vec<ConsumerId>,
    /// The broker's answer to our SUBSCRIBE.
    grant: GrantFuture,
}

/// Broker subscriptions counted per filter, and the consumers' queues.
pub struct Fanout<T> {
    session: Session,
    options: SubscriptionOptions,
    filters: HashMap<String, FilterEntry>,
    consumers: HashMap<ConsumerId, ConsumerEntry<T>>,
    last_consumer: ConsumerId,
    max_filters_per_consumer: usize,
}

impl<T: Clone> Fanout<T> {
    /// A fan-out over `session`; each filter is subscribed at the broker as `options` builds it.
    pub fn new(session: Session, max_filters_per_consumer: usize, options: SubscriptionOptions) -> Fanout<T> {
        Fanout {
            session,
            options,
            filters: HashMap::new(),
            consumers: HashMap::new(),
            last_consumer: 0,
            max_filters_per_consumer,
        }
    }

    /// Adds a consumer whose items go to `queue`.
    pub fn register(&mut self, queue: Arc<Queue<T>>) -> ConsumerId {
        self.last_consumer += 1;
        let id = self.last_consumer;
        self.consumers.insert(id, ConsumerEntry { queue, filters: BTreeSet::new() });
        id
    }

    /// Removes a consumer and its subscriptions. True when a broker subscription ended with it.
    pub fn unregister(&mut self, consumer: ConsumerId) -> bool {
        let Some(entry) = self.consumers.remove(&consumer) else { return false };
        let mut released = false;
        for filter in &entry.filters {
            released |= self.release(consumer, filter);
        }
        released
    }

    /// Takes a consumer's request for `filters` (already validated, each once) and returns, per filter it did not
    /// hold yet, the broker's grant to wait for: the consumer receives the filter's messages only once
    /// [`Fanout::activate`] is called, after the grant (a filter another consumer holds is granted already).
    pub fn subscribe(
        &mut self,
        consumer: ConsumerId,
        filters: &[String],
    ) -> Result<Vec<(String, GrantFuture)>, SubscribeError> {
        let Some(entry) = self.consumers.get_mut(&consumer) else { return Ok(Vec::new()) };
        let fresh: Vec<&String> = filters.iter().filter(|filter| !entry.filters.contains(*filter)).collect();
        if entry.filters.len() + fresh.len() > self.max_filters_per_consumer {
            return Err(SubscribeError::TooMany(self.max_filters_per_consumer));
        }
        entry.filters.extend(fresh.iter().map(|filter| (*filter).clone()));
        Ok(fresh.into_iter().map(|filter| (filter.clone(), self.acquire(consumer, filter))).collect())
    }

    /// The broker granted what `consumer` waited for: it receives those filters' messages from now on.
    /// False when the consumer is gone.
    pub fn activate(&mut self, consumer: ConsumerId, filters: &[String]) -> bool {
        if !self.consumers.contains_key(&consumer) {
            return false;
        }
        for filter in filters {
            if let Some(entry) = self.filters.get_mut(filter)
                && let Some(pos) = entry.waiting.iter().position(|waiting| *waiting == consumer)
            {
                entry.waiting.swap_remove(pos);
                entry.subscribers.push(consumer);
            }
        }
        true
    }

    /// Unsubscribes a consumer from `filters`; filters it does not hold are ignored, as MQTT does.
    /// True when a broker subscription ended.
    pub fn unsubscribe(&mut self, consumer: ConsumerId, filters: &[String]) -> bool {
        let Some(entry) = self.consumers.get_mut(&consumer) else { return false };
        let removed: Vec<String> = filters.iter().filter(|filter| entry.filters.remove(*filter)).cloned().collect();
        let mut released = false;
        for filter in &removed {
            released |= self.release(consumer, filter);
        }
        released
    }

    /// One more consumer waits for `filter`; the first one makes the broker subscription.
    fn acquire(&mut self, consumer: ConsumerId, filter: &str) -> GrantFuture {
        if let Some(entry) = self.filters.get_mut(filter) {
            entry.waiting.push(consumer);
            return entry.grant.clone();
        }
        let grant: BoxFuture<'static, Result<(), String>> = match self.session.subscribe_granted((self.options)(filter))
        {
            Ok(grant) => Box::pin(async move {
                match grant.await {
                    Ok(Ok(_qos)) => Ok(()),
                    Ok(Err(reason)) => Err(format!("the broker refused it ({reason})")),
                    Err(_) => Err("the broker session ended before the broker answered".to_owned()),
                }
            }),
            Err(_) => {
                tracing::warn!(filter, "the mqtt session has stopped; cannot subscribe");
                Box::pin(std::future::ready(Err("the broker session has stopped".to_owned())))
            }
        };
        let grant = grant.shared();
        self.filters.insert(
            filter.to_owned(),
            FilterEntry { subscribers: Vec::new(), waiting: vec![consumer], grant: grant.clone() },
        );
        grant
    }

    /// One consumer less wants `filter`; the last one removes the broker subscription. True when it did.
    fn release(&mut self, consumer: ConsumerId, filter: &str) -> bool {
        let Entry::Occupied(mut entry) = self.filters.entry(filter.to_owned()) else { return false };
        entry.get_mut().subscribers.retain(|subscriber| *subscriber != consumer);
        entry.get_mut().waiting.retain(|waiting| *waiting != consumer);
        if !entry.get().subscribers.is_empty() || !entry.get().waiting.is_empty() {
            return false;
        }
        entry.remove();
        if self.session.unsubscribe(filter).is_err() {
            tracing::warn!(filter, "the mqtt session has stopped; cannot unsubscribe");
        }
        true
    }

    /// Whether any filter subscribed (granted or waiting) covers `topic`.
    pub fn covers(&self, topic: &str) -> bool {
        self.filters.keys().any(|filter| filter_matches(filter, topic))
    }

    /// Queues `items`, in order, for every consumer subscribed to a filter matching `topic`, once per consumer.
    pub fn deliver(&self, topic: &str, items: &[T]) -> Delivered {
        let targets: Vec<&FilterEntry> =
            self.filters.iter().filter(|(filter, _)| filter_matches(filter, topic)).map(|(_, entry)| entry).collect();
        let mut delivered = Delivered::default();
        // A consumer with several matching filters gets the message once, as an MQTT 5 client would.
        let mut seen: Option<HashSet<ConsumerId>> = (targets.len() > 1).then(HashSet::new);
        for target in targets {
            for consumer in &target.subscribers {
                if let Some(seen) = seen.as_mut()
                    && !seen.insert(*consumer)
                {
                    continue;
                }
                let Some(entry) = self.consumers.get(consumer) else { continue };
                for item in items {
                    match entry.queue.push(item) {
                        Pushed::Queued => delivered.queued += 1,
                        Pushed::Full => delivered.dropped += 1,
                        // The consumer is leaving; its entry goes with it.
                        Pushed::Closed => {}
                    }
                }
            }
        }
        delivered
    }

    /// The filters a consumer holds (granted or waiting), sorted; `None` for an unknown consumer.
    pub fn filters_of(&self, consumer: ConsumerId) -> Option<&BTreeSet<String>> {
        self.consumers.get(&consumer).map(|entry| &entry.filters)
    }

    /// A consumer's queue.
    pub fn queue(&self, consumer: ConsumerId) -> Option<&Arc<Queue<T>>> {
        self.consumers.get(&consumer).map(|entry| &entry.queue)
    }

    /// How many consumers are registered.
    pub fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    /// The filters subscribed at the broker, with how many consumers hold each, sorted.
    pub fn subscriptions(&self) -> Vec<(String, usize)> {
        let mut subscriptions: Vec<(String, usize)> = self
            .filters
            .iter()
            .map(|(filter, entry)| (filter.clone(), entry.subscribers.len() + entry.waiting.len()))
            .collect();
        subscriptions.sort_unstable();
        subscriptions
    }

    /// How many filters are subscribed at the broker.
    pub fn subscription_count(&self) -> usize {
        self.filters.len()
    }
}

/// What became of a pushed item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue was full: the item is dropped for this consumer.
    Full,
    /// The consumer has ended.
    Closed,
}

/// One consumer's queue: bounded, never waited on by the producer, emptied in one go by the consumer.
///
/// This is the fan-out's innermost loop (10,000 readings a second to 100 dashboards are a million pushes a
/// second). A tokio `mpsc` channel takes a semaphore permit, a linked-block slot and a waker per item; here a push
/// is one uncontended lock and a `VecDeque` push, the consumer is woken only when the queue turns from empty to
/// not empty, and it takes everything queued under one lock.
#[derive(Debug)]
pub struct Queue<T> {
    state: Mutex<State<T>>,
    /// Signalled when an item arrives in an empty queue, and on close.
    ready: Notify,
    capacity: usize,
    /// Items refused because the queue was full.
    dropped: AtomicU64,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T: Clone> Queue<T> {
    /// A queue holding at most `capacity` items (at least one).
    pub fn new(capacity: usize) -> Queue<T> {
        Queue {
            state: Mutex::new(State { items: VecDeque::new(), closed: false }),
            ready: Notify::new(),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    /// The state, locked. Nothing panics while it is held, and an item more or less is all a poisoned lock
    /// could mean, so it is taken as it is.
    fn state(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a clone of `item` unless the queue is full or closed; never waits.
    pub fn push(&self, item: &T) -> Pushed {
        let mut state = self.state();
        if state.closed {
            return Pushed::Closed;
        }
        if state.items.len() >= self.capacity {
            drop(state);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Pushed::Full;
        }
        let was_empty = state.items.is_empty();
        state.items.push_back(item.clone());
        drop(state);
        // A consumer with items already waiting was told before and will take this one with them.
        if was_empty {
            self.ready.notify_one();
        }
        Pushed::Queued
    }

    /// Moves up to `max` items, oldest first, into `into`; returns how many are left.
    ///
    /// Only a push into an empty queue wakes the consumer, so a consumer that leaves items behind must come back
    /// for them without waiting on [`Queue::ready`].
    pub fn take(&self, max: usize, mut into: impl FnMut(T)) -> usize {
        let mut state = self.state();
        let count = max.min(state.items.len());
        state.items.drain(..count).for_each(&mut into);
        state.items.len()
    }

    /// Waits until an item may have arrived in the empty queue (a wake-up can find it already emptied).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.state().items.len()
    }

    /// True when no item waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The consumer has ended: later pushes are refused, and queued items are let go.
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.items.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BrokerUrl, QoS, SessionConfig};

    /// A fan-out whose session points at a port nothing listens on: it keeps trying in the background, and the
    /// bookkeeping is what these tests look at (the broker side is covered by the services' integration tests).
    fn fanout() -> Fanout<String> {
        let broker = BrokerUrl::Tcp { host: "127.0.0.1".into(), port: 9 };
        let (session, _events) = Session::start(SessionConfig::new(broker, "fanout-test"));
        Fanout::new(session, 4, |filter| Filter::new(filter, QoS::AtMostOnce))
    }

    fn consumer(fanout: &mut Fanout<String>, capacity: usize) -> (ConsumerId, Arc<Queue<String>>) {
        let queue = Arc::new(Queue::new(capacity));
        (fanout.register(queue.clone()), queue)
    }

    /// Subscribes and activates at once, as if the broker had granted everything.
    fn subscribe(fanout: &mut Fanout<String>, consumer: ConsumerId, filters: &[&str]) -> Result<(), SubscribeError> {
        let filters: Vec<String> = filters.iter().map(|filter| (*filter).to_owned()).collect();
        fanout.subscribe(consumer, &filters)?;
        fanout.activate(consumer, &filters);
        Ok(())
    }

    fn drain(queue: &Queue<String>) -> Vec<String> {
        let mut items = Vec::new();
        queue.take(usize::MAX, |item| items.push(item));
        items
    }

    #[tokio::test]
    async fn counts_references_per_filter() {
        let mut fanout = fanout();
        let (a, _qa) = consumer(&mut fanout, 8);
        let (b, _qb) = consumer(&mut fanout, 8);
        subscribe(&mut fanout, a, &["sensors/#", "alerts/+"]).expect("within the limit");
        subscribe(&mut fanout, b, &["sensors/#"]).expect("within the limit");
        subscribe(&mut fanout, b, &["sensors/#"]).expect("subscribing twice does not count twice");
        assert_eq!(fanout.subscriptions(), vec![("alerts/+".into(), 1), ("sensors/#".into(), 2)]);
        assert!(!fanout.unsubscribe(a, &["sensors/#".into(), "never/subscribed".into()]), "b still holds it");
        assert!(fanout.unregister(b), "the last holder of sensors/# left");
        assert_eq!(fanout.subscriptions(), vec![("alerts/+".into(), 1)]);
        assert!(fanout.unregister(a));
        assert_eq!((fanout.subscription_count(), fanout.consumer_count()), (0, 0));
    }

    #[tokio::test]
    async fn limits_filters_per_consumer() {
        let mut fanout = fanout();
        let (a, _q) = consumer(&mut fanout, 8);
        subscribe(&mut fanout, a, &["a", "b", "c", "d"]).expect("exactly the limit");
        assert_eq!(subscribe(&mut fanout, a, &["e"]), Err(SubscribeError::TooMany(4)));
        assert!(subscribe(&mut fanout, a, &["a"]).is_ok(), "filters it holds do not count again");
        assert_eq!(fanout.filters_of(a).map(BTreeSet::len), Some(4));
    }

    #[tokio::test]
    async fn waits_for_the_grant_and_delivers_once_per_consumer() {
        let mut fanout = fanout();
        let (a, qa) = consumer(&mut fanout, 8);
        let (b, qb) = consumer(&mut fanout, 8);
        let waiting = fanout.subscribe(a, &["sensors/#".into(), "sensors/+/t".into()]).expect("ok");
        assert_eq!(waiting.len(), 2);
        // Not granted yet: nothing reaches it.
        assert_eq!(fanout.deliver("sensors/d/t", &["early".into()]), Delivered::default());
        assert!(fanout.covers("sensors/d/t"));
        fanout.activate(a, &["sensors/#".into(), "sensors/+/t".into()]);
        subscribe(&mut fanout, b, &["sensors/+/t"]).expect("ok");
        fanout.deliver("sensors/d/t", &["both".into()]);
        fanout.deliver("sensors/d/h", &["a only".into()]);
        fanout.deliver("devices/d/status", &["nobody".into()]);
        assert!(!fanout.covers("devices/d/status"));
        assert_eq!(drain(&qa), ["both", "a only"]);
        assert_eq!(drain(&qb), ["both"]);
    }

    #[tokio::test]
    async fn drops_for_a_full_queue_only() {
        let mut fanout = fanout();
        let (slow, slow_queue) = consumer(&mut fanout, 2);
        let (fast, fast_queue) = consumer(&mut fanout, 2);
        subscribe(&mut fanout, slow, &["t"]).expect("ok");
        subscribe(&mut fanout, fast, &["t"]).expect("ok");
        let mut total = Delivered::default();
        for n in 0..5 {
            let delivered = fanout.deliver("t", &[n.to_string()]);
            total.queued += delivered.queued;
            total.dropped += delivered.dropped;
            assert_eq!(drain(&fast_queue), [n.to_string()]);
        }
        assert_eq!((total.queued, total.dropped), (7, 3));
        assert_eq!((slow_queue.len(), slow_queue.dropped()), (2, 3));
        assert_eq!(fast_queue.dropped(), 0);
    }

    #[tokio::test]
    async fn a_queue_is_bounded_in_order_and_closable() {
        let queue = Queue::new(2);
        assert_eq!(queue.push(&"a"), Pushed::Queued);
        assert_eq!(queue.push(&"b"), Pushed::Queued);
        assert_eq!(queue.push(&"c"), Pushed::Full);
        assert_eq!((queue.len(), queue.dropped()), (2, 1));
        // The first push into the empty queue left a wake-up for the consumer.
        queue.ready().await;
        let mut first = Vec::new();
        assert_eq!(queue.take(1, |item| first.push(item)), 1, "one left");
        assert_eq!(first, ["a"]);
        assert_eq!(queue.push(&"d"), Pushed::Queued);
        let mut rest = Vec::new();
        queue.take(usize::MAX, |item| rest.push(item));
        assert_eq!(rest, ["b", "d"]);
        assert!(queue.is_empty());
        queue.push(&"e");
        queue.close();
        assert_eq!(queue.len(), 0);
        assert_eq!(queue.push(&"f"), Pushed::Closed);
    }

    #[tokio::test]
    async fn a_waiting_consumer_is_woken_by_a_push() {
        let queue = Arc::new(Queue::new(4));
        let consumer = tokio::spawn({
            let queue = queue.clone();
            async move {
                queue.ready().await;
                let mut items = Vec::new();
                queue.take(usize::MAX, |item| items.push(item));
                items
            }
        });
        tokio::task::yield_now().await;
        queue.push(&"x".to_owned());
        assert_eq!(consumer.await.expect("the consumer ends"), ["x"]);
    }
}
