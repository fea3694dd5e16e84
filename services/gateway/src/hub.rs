//! The hub: broker subscriptions shared by all browsers and counted, the retained cache, and the fan-out.
//!
//! The gateway is one MQTT client for every browser. A filter is subscribed at the broker when the first
//! browser asks for it and unsubscribed when the last one leaves; each message is matched against the
//! browsers' filters in memory, and a browser with several matching filters gets it once.
//!
//! Subscriptions use retain-as-published, so a retained message arrives with its retain flag set, live or replayed.
//! The hub keeps the latest of those per topic, for the topics its filters cover, and hands a browser the ones
//! matching its new filters at once, also when the filter was already subscribed at the broker for someone else.
//! When the broker replays retained messages for a new filter, those the cache already holds are not sent again:
//! the browser that asked had them from the cache, and everyone else had them before. That needs no help from
//! the broker; MQTT 5 subscription identifiers would say which filter a message came for, but rumqttc 0.25.1
//! misreads a PUBLISH carrying three or more of them (the extra ones end up in front of the payload).
//!
//! The same limit shows with brokers that send one copy of a message per matching subscription (MQTT 5 allows it;
//! ours and Mosquitto send one per client): there, browsers whose filters overlap other browsers' filters may see a live
//! message twice.
//!
//! The counting of broker subscriptions, the grants and the bounded queues are the shared fan-out
//! ([`ferrite_mqtt::Fanout`], also behind the query service's live streams); the hub adds the browsers' details
//! and the retained cache. It is plain data behind one mutex: no I/O but non-blocking sends, so the lock is held
//! only briefly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use ferrite_core::filter_matches;
use ferrite_mqtt::fanout::{ConsumerId, Fanout};
use ferrite_mqtt::{Filter, QoS, RetainForwardRule, Session};

use crate::policy::ClientInfo;
use crate::protocol::Frame;
use crate::queue::UpdateQueue;

pub use ferrite_mqtt::fanout::{GrantFuture, SubscribeError};

/// A browser connection's number, unique for the life of the gateway.
pub type ClientId = ConsumerId;

/// Counters of one browser its writer keeps (the hub's drops are counted by its queue).
#[derive(Debug, Default)]
pub struct ClientCounters {
    pub(crate) sent: AtomicU64,
}

/// One browser as the hub sees it, for diagnostics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientStats {
    pub id: ClientId,
    pub peer: Option<SocketAddr>,
    /// The filters it is subscribed to, sorted.
    pub filters: Vec<String>,
    /// Frames waiting in its queue.
    pub queued: usize,
    /// Frames written to its socket.
    pub sent: u64,
    /// Updates dropped because its queue was full.
    pub dropped: u64,
}

struct ClientEntry {
    info: ClientInfo,
    counters: Arc<ClientCounters>,
}

/// A retained message as the broker holds it, and as browsers receive it.
struct Retained {
    payload: Bytes,
    content_type: Option<String>,
    frames: Arc<[Frame]>,
}

/// A message from the broker, rendered, as the hub routes it.
pub struct Incoming<'a> {
    pub topic: &'a str,
    /// The MQTT retain flag as received (retain-as-published keeps it on live retained messages too).
    pub retain: bool,
    /// The payload as published; a retained message with an empty one deletes the retained value.
    pub payload: &'a Bytes,
    pub content_type: Option<&'a str>,
    pub frames: Arc<[Frame]>,
}

/// What one delivery did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub queued: u64,
    pub dropped: u64,
    /// True when the message was a retained value the cache already held, which nobody needs again.
    pub known: bool,
}

/// The broker subscription for a browser's filter: retain-as-published, so the cache also follows retained values
/// published later, and the broker's retained messages at once on every subscribe, for the browser that asked.
fn subscription(filter: &str) -> Filter {
    let mut mqtt = Filter::new(filter, QoS::AtLeastOnce);
    mqtt.preserve_retain = true;
    mqtt.retain_forward_rule = RetainForwardRule::OnEverySubscribe;
    mqtt
}

/// What all browsers share: the fan-out of the broker session to the browsers' queues, and the retained cache.
pub struct Hub {
    fanout: Fanout<Frame>,
    clients: HashMap<ClientId, ClientEntry>,
    /// The latest retained message per topic, rendered, for the topics our filters cover.
    retained: HashMap<String, Retained>,
}

impl Hub {
    pub fn new(session: Session, max_filters_per_client: usize) -> Hub {
        Hub {
            fanout: Fanout::new(session, max_filters_per_client, subscription),
            clients: HashMap::new(),
            retained: HashMap::new(),
        }
    }

    /// Adds a browser whose updates go to `updates`.
    pub fn register(&mut self, info: ClientInfo, updates: Arc<UpdateQueue>) -> (ClientId, Arc<ClientCounters>) {
        let id = self.fanout.register(updates);
        let counters = Arc::new(ClientCounters::default());
        self.clients.insert(id, ClientEntry { info, counters: counters.clone() });
        metrics::gauge!("ferrite_gateway_clients").set(self.clients.len() as f64);
        (id, counters)
    }

    /// Removes a browser and its subscriptions.
    pub fn unregister(&mut self, client: ClientId) {
        self.clients.remove(&client);
        if self.fanout.unregister(client) {
            self.evict();
        }
        metrics::gauge!("ferrite_gateway_clients").set(self.clients.len() as f64);
    }

    /// Takes a browser's request for `filters` (already validated, each once) and returns, per filter it did not
    /// hold yet, the broker's grant to wait for: the browser receives the filter's messages only once
    /// [`Hub::activate`] is called, after the grant (a filter another browser holds is granted already).
    pub fn subscribe(
        &mut self,
        client: ClientId,
        filters: &[String],
    ) -> Result<Vec<(String, GrantFuture)>, SubscribeError> {
        let waiting = self.fanout.subscribe(client, filters)?;
        metrics::gauge!("ferrite_gateway_subscriptions").set(self.fanout.subscription_count() as f64);
        Ok(waiting)
    }

    /// The broker granted what `client` waited for: it receives those filters' messages from now on.
    /// Returns the frames of the retained messages matching any of `filters` (all it asked for, held before or
    /// not), each topic once, sorted by topic.
    pub fn activate(&mut self, client: ClientId, filters: &[String]) -> Vec<Frame> {
        if !self.fanout.activate(client, filters) {
            return Vec::new();
        }
        let mut matching: Vec<(&String, &Retained)> = self
            .retained
            .iter()
            .filter(|(topic, _)| filters.iter().any(|filter| filter_matches(filter, topic)))
            .collect();
        matching.sort_unstable_by(|a, b| a.0.cmp(b.0));
        matching.into_iter().flat_map(|(_, retained)| retained.frames.iter().cloned()).collect()
    }

    /// Unsubscribes a browser from `filters`; filters it does not hold are ignored, as MQTT does.
    pub fn unsubscribe(&mut self, client: ClientId, filters: &[String]) {
        if self.fanout.unsubscribe(client, filters) {
            self.evict();
            metrics::gauge!("ferrite_gateway_subscriptions").set(self.fanout.subscription_count() as f64);
        }
    }

    /// `client` gives up `filters` it waited for (refused, or not answered in time): as if it unsubscribed.
    pub fn abandon(&mut self, client: ClientId, filters: &[String]) {
        self.unsubscribe(client, filters);
    }

    /// Forgets retained values no filter covers any more: the broker stops telling us when they change.
    fn evict(&mut self) {
        let fanout = &self.fanout;
        self.retained.retain(|topic, _| fanout.covers(topic));
        metrics::gauge!("ferrite_gateway_subscriptions").set(fanout.subscription_count() as f64);
    }

    /// The broker (re)connected: our subscriptions are renewed and it replays every retained message,
    /// so the cache starts again rather than keep values that were deleted meanwhile.
    pub fn on_connected(&mut self) {
        self.retained.clear();
    }

    /// Routes one message to the browsers whose filters match it, and keeps it if it is retained.
    pub fn deliver(&mut self, message: &Incoming<'_>) -> Delivered {
        if !self.fanout.covers(message.topic) {
            // For a subscription that has just ended: nobody wants it, and nothing covers its topic any more.
            return Delivered::default();
        }
        if message.retain {
            if message.payload.is_empty() {
                self.retained.remove(message.topic);
            } else if let Some(known) = self.retained.get(message.topic)
                && known.payload == message.payload
                && known.content_type.as_deref() == message.content_type
            {
                // The broker replays what it holds for a filter just subscribed; we hold it too. The cost: a
                // device re-publishing the very same retained payload is not shown again, which changes nothing
                // on a dashboard but a plain-number reading's arrival time.
                return Delivered { known: true, ..Delivered::default() };
            } else {
                let retained = Retained {
                    payload: message.payload.clone(),
                    content_type: message.content_type.map(str::to_owned),
                    frames: message.frames.clone(),
                };
                self.retained.insert(message.topic.to_owned(), retained);
            }
        }
        let delivered = self.fanout.deliver(message.topic, &message.frames);
        Delivered { queued: delivered.queued, dropped: delivered.dropped, known: false }
    }

    /// How many filters a browser holds.
    #[cfg(test)]
    pub fn filter_count(&self, client: ClientId) -> usize {
        self.fanout.filters_of(client).map_or(0, |filters| filters.len())
    }

    /// Every connected browser.
    pub fn clients(&self) -> Vec<ClientStats> {
        let mut stats: Vec<ClientStats> = self
            .clients
            .iter()
            .filter_map(|(id, entry)| {
                let queue = self.fanout.queue(*id)?;
                Some(ClientStats {
                    id: *id,
                    peer: entry.info.peer,
                    filters: self.fanout.filters_of(*id).map(|filters| filters.iter().cloned().collect())?,
                    queued: queue.len(),
                    sent: entry.counters.sent.load(Ordering::Relaxed),
                    dropped: queue.dropped(),
                })
            })
            .collect();
        stats.sort_unstable_by_key(|stats| stats.id);
        stats
    }

    /// The filters subscribed at the broker, with how many browsers hold each, sorted.
    pub fn subscriptions(&self) -> Vec<(String, usize)> {
        self.fanout.subscriptions()
    }

    /// How many retained topics the cache holds.
    #[cfg(test)]
    pub fn retained_len(&self) -> usize {
        self.retained.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_mqtt::{BrokerUrl, SessionConfig};

    /// A hub whose session points at a port nothing listens on: it keeps trying in the background, and the
    /// hub's bookkeeping is what these tests look at (the broker side is covered by the integration tests).
    fn hub() -> Hub {
        let broker = BrokerUrl::Tcp { host: "127.0.0.1".into(), port: 9 };
        let (session, _events) = Session::start(SessionConfig::new(broker, "hub-test"));
        Hub::new(session, 4)
    }

    fn client(hub: &mut Hub, queue: usize) -> (ClientId, Arc<UpdateQueue>) {
        let updates = Arc::new(UpdateQueue::new(queue));
        let (id, _) = hub.register(ClientInfo { peer: None, token: None }, updates.clone());
        (id, updates)
    }

    /// Delivers `text` as both payload and rendered frame.
    fn deliver(hub: &mut Hub, topic: &str, retain: bool, text: &str) -> Delivered {
        let payload = Bytes::from(text.to_owned());
        let frames: Arc<[Frame]> = vec![Frame::from(text.to_owned())].into();
        hub.deliver(&Incoming { topic, retain, payload: &payload, content_type: None, frames })
    }

    fn drain(updates: &mut Arc<UpdateQueue>) -> Vec<String> {
        let mut frames = Vec::new();
        updates.take(usize::MAX, |frame| frames.push(frame.as_str().to_owned()));
        frames
    }

    /// Subscribes and activates at once, as if the broker had granted everything.
    fn subscribe(hub: &mut Hub, client: ClientId, filters: &[String]) -> Result<Vec<Frame>, SubscribeError> {
        hub.subscribe(client, filters).map(|_| hub.activate(client, filters))
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| (*item).to_owned()).collect()
    }

    #[tokio::test]
    async fn counts_references_per_filter() {
        let mut hub = hub();
        let (a, _rx_a) = client(&mut hub, 8);
        let (b, _rx_b) = client(&mut hub, 8);
        subscribe(&mut hub, a, &strings(&["sensors/#", "alerts/+"])).expect("within the limit");
        subscribe(&mut hub, b, &strings(&["sensors/#"])).expect("within the limit");
        // Subscribing twice to one filter does not count twice.
        subscribe(&mut hub, b, &strings(&["sensors/#"])).expect("within the limit");
        assert_eq!(hub.subscriptions(), vec![("alerts/+".into(), 1), ("sensors/#".into(), 2)]);
        hub.unsubscribe(a, &strings(&["sensors/#", "never/subscribed"]));
        assert_eq!(hub.subscriptions(), vec![("alerts/+".into(), 1), ("sensors/#".into(), 1)]);
        hub.unregister(b);
        assert_eq!(hub.subscriptions(), vec![("alerts/+".into(), 1)]);
        hub.unregister(a);
        assert!(hub.subscriptions().is_empty());
    }

    #[tokio::test]
    async fn limits_filters_per_client() {
        let mut hub = hub();
        let (a, _rx) = client(&mut hub, 8);
        subscribe(&mut hub, a, &strings(&["a", "b", "c", "d"])).expect("exactly the limit");
        assert_eq!(subscribe(&mut hub, a, &strings(&["e"])), Err(SubscribeError::TooMany(4)));
        // Filters it already holds do not count again.
        assert!(subscribe(&mut hub, a, &strings(&["a"])).is_ok());
        assert_eq!(hub.filter_count(a), 4);
    }

    #[tokio::test]
    async fn matches_in_memory_and_delivers_once_per_browser() {
        let mut hub = hub();
        let (a, mut rx_a) = client(&mut hub, 8);
        let (b, mut rx_b) = client(&mut hub, 8);
        subscribe(&mut hub, a, &strings(&["sensors/#", "sensors/+/temperature"])).expect("ok");
        subscribe(&mut hub, b, &strings(&["sensors/+/temperature"])).expect("ok");
        deliver(&mut hub, "sensors/d/temperature", false, "both");
        deliver(&mut hub, "sensors/d/humidity", false, "a only");
        deliver(&mut hub, "devices/d/status", false, "nobody");
        assert_eq!(drain(&mut rx_a), ["both", "a only"]);
        assert_eq!(drain(&mut rx_b), ["both"]);
    }

    #[tokio::test]
    async fn a_replayed_retained_value_is_not_sent_again() {
        let mut hub = hub();
        let (a, mut rx_a) = client(&mut hub, 8);
        subscribe(&mut hub, a, &strings(&["devices/+/status"])).expect("ok");
        deliver(&mut hub, "devices/d/status", true, "online");
        assert_eq!(drain(&mut rx_a), ["online"]);
        // Another browser subscribes to an overlapping filter, new at the broker: it has the value from the
        // cache, and the broker's replay of it reaches nobody a second time.
        let (b, mut rx_b) = client(&mut hub, 8);
        let snapshot = subscribe(&mut hub, b, &strings(&["devices/d/status"])).expect("ok");
        assert_eq!(snapshot.iter().map(|frame| frame.as_str()).collect::<Vec<_>>(), ["online"]);
        assert!(deliver(&mut hub, "devices/d/status", true, "online").known);
        assert!(drain(&mut rx_a).is_empty());
        assert!(drain(&mut rx_b).is_empty());
        // A changed retained value, and any live message, reach everyone.
        deliver(&mut hub, "devices/d/status", true, "offline");
        deliver(&mut hub, "devices/d/status", false, "online");
        assert_eq!(drain(&mut rx_a), ["offline", "online"]);
        assert_eq!(drain(&mut rx_b), ["offline", "online"]);
    }

    #[tokio::test]
    async fn serves_retained_values_on_subscribe() {
        let mut hub = hub();
        let (a, _rx_a) = client(&mut hub, 8);
        subscribe(&mut hub, a, &strings(&["devices/+/status", "sensors/#"])).expect("ok");
        deliver(&mut hub, "devices/d2/status", true, "d2 online");
        deliver(&mut hub, "devices/d1/status", true, "d1 online");
        deliver(&mut hub, "sensors/d1/t", true, "21.5");
        deliver(&mut hub, "sensors/d1/h", false, "not retained");
        assert_eq!(hub.retained_len(), 3);

        let (b, _rx_b) = client(&mut hub, 8);
        let snapshot = subscribe(&mut hub, b, &strings(&["devices/+/status", "devices/d1/#"])).expect("ok");
        let snapshot: Vec<&str> = snapshot.iter().map(|frame| frame.as_str()).collect();
        assert_eq!(snapshot, ["d1 online", "d2 online"]);

        // A retained message with an empty payload deletes the value.
        deliver(&mut hub, "devices/d1/status", true, "");
        let snapshot = subscribe(&mut hub, b, &strings(&["devices/+/status"])).expect("ok");
        assert_eq!(snapshot.iter().map(|frame| frame.as_str()).collect::<Vec<_>>(), ["d2 online"]);

        // Values no filter covers any more are forgotten.
        hub.unregister(a);
        assert_eq!(hub.retained_len(), 1);
        hub.unregister(b);
        assert_eq!(hub.retained_len(), 0);

        // A reconnect starts the cache again.
        let (c, _rx_c) = client(&mut hub, 8);
        subscribe(&mut hub, c, &strings(&["#"])).expect("ok");
        deliver(&mut hub, "x", true, "1");
        hub.on_connected();
        assert_eq!(hub.retained_len(), 0);
    }

    #[tokio::test]
    async fn drops_for_a_full_queue_only() {
        let mut hub = hub();
        let (slow, _rx_slow) = client(&mut hub, 2);
        let (fast, mut rx_fast) = client(&mut hub, 2);
        subscribe(&mut hub, slow, &strings(&["t"])).expect("ok");
        subscribe(&mut hub, fast, &strings(&["t"])).expect("ok");
        let mut total = Delivered::default();
        for n in 0..5 {
            let delivered = deliver(&mut hub, "t", false, &n.to_string());
            total.queued += delivered.queued;
            total.dropped += delivered.dropped;
            assert_eq!(drain(&mut rx_fast), [n.to_string()]);
        }
        assert_eq!((total.queued, total.dropped), (7, 3));
        let stats = hub.clients();
        assert_eq!((stats[0].id, stats[0].dropped, stats[0].queued), (slow, 3, 2));
        assert_eq!((stats[1].id, stats[1].dropped, stats[1].queued), (fast, 0, 0));
    }
}
