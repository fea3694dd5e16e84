//! [`Session`]: a handle to one MQTT connection whose driver task reconnects, resubscribes and resends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, PublishProperties, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event as RawEvent, EventLoop, MqttOptions, Request};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::config::{BrokerUrl, SessionConfig};

/// First pause before reconnecting; doubled after each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between reconnect attempts: a restarted broker is found within this.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Events buffered for a consumer before the driver stops reading the socket (backpressure).
const EVENT_BUFFER: usize = 1024;

/// What the session reports to its owner.
#[derive(Debug)]
pub enum Event {
    /// A ConnAck arrived; `session_present` says whether the broker kept our session.
    Connected { session_present: bool },
    /// The connection was lost or refused; the driver reconnects on its own.
    Disconnected { error: String },
    /// The broker answered a SUBSCRIBE; `refused` counts the filters it did not grant.
    Subscribed { refused: usize },
    /// A message on one of our subscriptions.
    Message(Message),
}

/// A received message, remembering which connection it came on so that a late ack is safe.
#[derive(Debug, Clone)]
pub struct Message {
    pub publish: Publish,
    generation: u64,
}

impl Message {
    /// The topic as text (MQTT requires UTF-8; anything else is replaced, never trusted).
    pub fn topic(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.publish.topic)
    }

    pub fn payload(&self) -> &Bytes {
        &self.publish.payload
    }

    /// The MQTT 5 content type, when the publisher set one.
    pub fn content_type(&self) -> Option<&str> {
        self.publish.properties.as_ref().and_then(|p| p.content_type.as_deref())
    }

    /// The MQTT 5 user properties, when the publisher set any.
    pub fn user_properties(&self) -> &[(String, String)] {
        self.publish.properties.as_ref().map(|p| p.user_properties.as_slice()).unwrap_or_default()
    }

    /// The value of the first user property named `name` (e.g. `traceparent`).
    pub fn user_property(&self, name: &str) -> Option<&str> {
        self.user_properties().iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

/// Publish properties holding only `user_properties` (e.g. a trace context), or `None` when there are none,
/// so a publish without them carries no properties at all and [`Session::publish`] clones nothing on resend.
pub fn user_properties(user_properties: Vec<(String, String)>) -> Option<PublishProperties> {
    (!user_properties.is_empty()).then(|| PublishProperties { user_properties, ..PublishProperties::default() })
}

/// Why a session call failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the mqtt session has stopped")]
    Stopped,
    #[error("invalid topic {0:?}")]
    Topic(String),
}

/// The broker's answer for one filter of a SUBSCRIBE: the QoS it granted, or why it refused (its reason code).
pub type Grant = Result<QoS, String>;

/// One publish of ours, as the caller asked for it.
#[derive(Debug, Clone)]
struct Outbound {
    topic: String,
    qos: QoS,
    retain: bool,
    payload: Bytes,
    properties: Option<PublishProperties>,
}

enum Command {
    Publish(Outbound, Option<OwnedSemaphorePermit>),
    Ack { generation: u64, publish: Box<Publish> },
    Subscribe(Filter),
    SubscribeGranted(Filter, oneshot::Sender<Grant>),
    Unsubscribe(String),
    Close { drain: Duration, done: oneshot::Sender<usize> },
}

/// A cheap, cloneable handle to one MQTT connection. The connection lives while any handle does.
#[derive(Clone)]
pub struct Session {
    commands: mpsc::UnboundedSender<Command>,
    permits: Arc<Semaphore>,
    driver: tokio::task::AbortHandle,
    status: SessionStatus,
}

/// Whether a session is connected and subscribed, as the driver last saw it; for readiness checks.
/// Cheap to clone; it does not keep the session alive.
#[derive(Debug, Clone, Default)]
pub struct SessionStatus {
    inner: Arc<StatusInner>,
}

#[derive(Debug, Default)]
struct StatusInner {
    connected: AtomicBool,
    /// SUBSCRIBEs sent on this connection that await their SUBACK.
    subscribing: AtomicUsize,
}

impl SessionStatus {
    /// `Ok` when connected and every SUBSCRIBE of this connection is answered (SUBACK received, granted or not),
    /// otherwise what is missing.
    pub fn check(&self) -> Result<(), String> {
        if !self.inner.connected.load(Ordering::Acquire) {
            return Err("not connected to the MQTT broker".to_owned());
        }
        match self.inner.subscribing.load(Ordering::Acquire) {
            0 => Ok(()),
            waiting => Err(format!("waiting for the broker to answer {waiting} SUBSCRIBE(s) (SUBACK)")),
        }
    }
}

impl Session {
    /// Starts the driver task; it connects (and keeps reconnecting) in the background.
    /// Events arrive on the returned receiver, which the caller must keep reading.
    pub fn start(config: SessionConfig) -> (Session, mpsc::Receiver<Event>) {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::channel(EVENT_BUFFER);
        let permits = Arc::new(Semaphore::new(config.max_unacked));
        let (client, eventloop) = AsyncClient::new(options(&config), config.max_unacked + 1024);
        let driver = Driver {
            client,
            events: event_tx,
            commands: command_rx,
            subscriptions: config.subscriptions.iter().map(|(path, qos)| Filter::new(path.clone(), *qos)).collect(),
            ledger: VecDeque::new(),
            awaiting_pkid: VecDeque::new(),
            subscribing: VecDeque::new(),
            unsent_grants: Vec::new(),
            unanswered: Vec::new(),
            next_id: 0,
            generation: 0,
            connected: false,
            closing: None,
            status: SessionStatus::default(),
        };
        let status = driver.status.clone();
        let driver = tokio::spawn(driver.run(eventloop)).abort_handle();
        (Session { commands, permits, driver, status }, events)
    }

    /// Whether the session is connected and its subscriptions answered, for readiness checks.
    pub fn status(&self) -> SessionStatus {
        self.status.clone()
    }

    /// Publishes a message. QoS 1/2 messages are kept until the broker acknowledges them and resent
    /// after reconnects; this waits only when too many are unacknowledged already.
    /// QoS 0 messages published while disconnected are dropped, as QoS 0 allows.
    pub async fn publish(
        &self,
        topic: impl Into<String>,
        qos: QoS,
        retain: bool,
        payload: impl Into<Bytes>,
        properties: Option<PublishProperties>,
    ) -> Result<(), SessionError> {
        let topic = topic.into();
        if topic.is_empty() || topic.contains(['+', '#']) {
            return Err(SessionError::Topic(topic));
        }
        let permit = match qos {
            QoS::AtMostOnce => None,
            _ => Some(self.permits.clone().acquire_owned().await.map_err(|_| SessionError::Stopped)?),
        };
        let outbound = Outbound { topic, qos, retain, payload: payload.into(), properties };
        self.commands.send(Command::Publish(outbound, permit)).map_err(|_| SessionError::Stopped)
    }

    /// Acknowledges a received QoS 1/2 message (only with `manual_acks`). Acks must be given in the
    /// order the messages arrived. An ack for a message of an earlier connection is dropped, since
    /// the broker redelivers that message on the new one.
    pub fn ack(&self, message: &Message) -> Result<(), SessionError> {
        if message.publish.qos == QoS::AtMostOnce {
            return Ok(());
        }
        let command = Command::Ack { generation: message.generation, publish: Box::new(message.publish.clone()) };
        self.commands.send(command).map_err(|_| SessionError::Stopped)
    }

    /// Adds a subscription, kept across reconnects.
    pub fn subscribe(&self, filter: impl Into<String>, qos: QoS) -> Result<(), SessionError> {
        self.subscribe_filter(Filter::new(filter, qos))
    }

    /// Adds a subscription with MQTT 5 options (no-local, retain-as-published, retain handling).
    pub fn subscribe_filter(&self, filter: Filter) -> Result<(), SessionError> {
        self.commands.send(Command::Subscribe(filter)).map_err(|_| SessionError::Stopped)
    }

    /// Like [`Session::subscribe_filter`], and says when the broker has answered: the receiver gets the broker's
    /// [`Grant`] from its SUBACK for this filter (after a reconnect, from the SUBACK of the resubscription).
    /// The sender is dropped, unanswered, when the filter is unsubscribed first or the session ends.
    pub fn subscribe_granted(&self, filter: Filter) -> Result<oneshot::Receiver<Grant>, SessionError> {
        let (granted, grant) = oneshot::channel();
        self.commands.send(Command::SubscribeGranted(filter, granted)).map_err(|_| SessionError::Stopped)?;
        Ok(grant)
    }

    /// Removes a subscription (and stops renewing it on reconnect).
    pub fn unsubscribe(&self, filter: impl Into<String>) -> Result<(), SessionError> {
        self.commands.send(Command::Unsubscribe(filter.into())).map_err(|_| SessionError::Stopped)
    }

    /// Drops the connection at once, without DISCONNECT, as a crashing device would: the broker then
    /// publishes the Last Will. Unacknowledged publishes are lost with it.
    pub fn abort(&self) {
        self.driver.abort();
    }

    /// Waits up to `drain` for our unacknowledged publishes to be acknowledged, then disconnects
    /// cleanly (so no Last Will is sent). Returns how many publishes were still unacknowledged.
    pub async fn close(&self, drain: Duration) -> usize {
        let (done, wait) = oneshot::channel();
        if self.commands.send(Command::Close { drain, done }).is_err() {
            return 0;
        }
        wait.await.unwrap_or(0)
    }
}

fn options(config: &SessionConfig) -> MqttOptions {
    let mut options = match &config.broker {
        BrokerUrl::Tcp { host, port } => MqttOptions::new(&config.client_id, host, *port),
        BrokerUrl::Ws { url, port } => {
            let mut options = MqttOptions::new(&config.client_id, url, *port);
            options.set_transport(rumqttc::Transport::Ws);
            options
        }
    };
    options
        .set_keep_alive(config.keep_alive)
        .set_clean_start(config.clean_start)
        .set_manual_acks(config.manual_acks)
        .set_session_expiry_interval(config.session_expiry)
        .set_receive_maximum(config.receive_maximum)
        .set_connection_timeout(5);
    if let Some((user, password)) = &config.credentials {
        options.set_credentials(user, password);
    }
    if let Some(will) = &config.last_will {
        options.set_last_will(will.clone());
    }
    if config.max_packet_size.is_some() {
        options.set_max_packet_size(config.max_packet_size);
    }
    options
}

/// One of our QoS 1/2 publishes that the broker has not acknowledged yet.
struct Entry {
    id: u64,
    outbound: Outbound,
    /// The packet id of its latest send on the current connection.
    pkid: Option<u16>,
    _permit: Option<OwnedSemaphorePermit>,
}

/// One SUBSCRIBE on the wire: its filters, its packet id once rumqttc has said it, and who waits for its SUBACK.
struct Subscribing {
    paths: Vec<String>,
    pkid: Option<u16>,
    grants: Vec<(String, oneshot::Sender<Grant>)>,
}

struct Closing {
    deadline: tokio::time::Instant,
    done: oneshot::Sender<usize>,
}

struct Driver {
    client: AsyncClient,
    events: mpsc::Sender<Event>,
    commands: mpsc::UnboundedReceiver<Command>,
    subscriptions: Vec<Filter>,
    ledger: VecDeque<Entry>,
    /// Ids of ledger entries handed to rumqttc on this connection, in order, whose packet id is not known yet.
    awaiting_pkid: VecDeque<u64>,
    /// SUBSCRIBEs handed to rumqttc on this connection, in order, until their SUBACK.
    subscribing: VecDeque<Subscribing>,
    /// Callers of [`Session::subscribe_granted`] whose filter is not sent on this connection yet.
    unsent_grants: Vec<(String, oneshot::Sender<Grant>)>,
    /// Filters whose SUBSCRIBE the last connection never saw answered: sent again even when the broker kept our session.
    unanswered: Vec<String>,
    next_id: u64,
    generation: u64,
    connected: bool,
    closing: Option<Closing>,
    status: SessionStatus,
}

impl Driver {
    /// Publishes the connection state for [`Session::status`].
    fn report_status(&self) {
        self.status.inner.subscribing.store(self.subscribing.len(), Ordering::Release);
        self.status.inner.connected.store(self.connected, Ordering::Release);
    }

    /// Drives the connection. rumqttc's `poll` is not cancel-safe: dropping it half-way through a
    /// CONNECT or a PUBLISH leaves a torn packet on the wire (measured: the broker saw "invalid protocol"
    /// and devices lost their connection every few publishes). So one `poll` future lives until it
    /// completes, and commands are handled beside it; only a closing session abandons it.
    async fn run(mut self, mut eventloop: EventLoop) {
        let mut backoff = MIN_BACKOFF;
        loop {
            if self.closing_due() {
                self.finish(&mut eventloop).await;
                return;
            }
            let polled = {
                let mut poll = std::pin::pin!(eventloop.poll());
                loop {
                    tokio::select! {
                        polled = &mut poll => break Some(polled),
                        command = self.commands.recv() => match command {
                            Some(command) => self.on_command(command),
                            None => {
                                // Every handle is gone: nobody can read events or publish any more.
                                let _ = self.client.try_disconnect();
                                return;
                            }
                        },
                        _ = closing_deadline(self.closing.as_ref()) => {}
                    }
                    if self.closing_due() {
                        break None;
                    }
                }
            };
            match polled {
                None => {}
                Some(Ok(event)) => {
                    if let RawEvent::Incoming(Packet::ConnAck(_)) = &event {
                        backoff = MIN_BACKOFF;
                    }
                    if !self.on_event(event).await {
                        return;
                    }
                }
                Some(Err(error)) => {
                    self.on_disconnect(&mut eventloop);
                    if !self.deliver(Event::Disconnected { error: error.to_string() }).await {
                        return;
                    }
                    if self.closing.is_some() {
                        self.finish(&mut eventloop).await;
                        return;
                    }
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// A close was asked for and nothing is left to wait for (or the wait is over).
    fn closing_due(&self) -> bool {
        self.closing
            .as_ref()
            .is_some_and(|closing| self.ledger.is_empty() || tokio::time::Instant::now() >= closing.deadline)
    }

    /// Handles one event from rumqttc; false when the owner has gone away.
    async fn on_event(&mut self, event: RawEvent) -> bool {
        match event {
            RawEvent::Incoming(Packet::ConnAck(connack)) => {
                self.generation += 1;
                self.connected = true;
                if !connack.session_present && !self.subscriptions.is_empty() {
                    self.subscribe_now(self.subscriptions.clone());
                } else {
                    // The broker kept our session, but these were never answered: ask again.
                    let waiting: Vec<Filter> = self
                        .subscriptions
                        .iter()
                        .filter(|filter| {
                            self.unanswered.contains(&filter.path)
                                || self.unsent_grants.iter().any(|(path, _)| *path == filter.path)
                        })
                        .cloned()
                        .collect();
                    self.subscribe_now(waiting);
                }
                self.unanswered.clear();
                // Grants for filters no longer subscribed are dropped: nobody will answer them.
                self.unsent_grants.clear();
                self.resend_all();
                self.report_status();
                return self.deliver(Event::Connected { session_present: connack.session_present }).await;
            }
            RawEvent::Incoming(Packet::Publish(publish)) => {
                let message = Message { publish, generation: self.generation };
                return self.deliver(Event::Message(message)).await;
            }
            RawEvent::Incoming(Packet::PubAck(ack)) => self.acknowledged(ack.pkid),
            RawEvent::Incoming(Packet::PubComp(comp)) => self.acknowledged(comp.pkid),
            RawEvent::Incoming(Packet::SubAck(suback)) => {
                self.granted(suback.pkid, &suback.return_codes);
                self.report_status();
                let refused =
                    suback.return_codes.iter().filter(|code| !matches!(code, SubscribeReasonCode::Success(_))).count();
                if refused > 0 {
                    tracing::warn!(refused, "broker refused a subscription");
                }
                return self.deliver(Event::Subscribed { refused }).await;
            }
            RawEvent::Outgoing(Outgoing::Subscribe(pkid)) => {
                if let Some(subscribing) = self.subscribing.iter_mut().find(|subscribing| subscribing.pkid.is_none()) {
                    subscribing.pkid = Some(pkid);
                }
            }
            RawEvent::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => {
                if let Some(id) = self.awaiting_pkid.pop_front()
                    && let Some(entry) = self.ledger.iter_mut().find(|entry| entry.id == id)
                {
                    entry.pkid = Some(pkid);
                }
            }
            _ => {}
        }
        true
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Publish(outbound, permit) => {
                if outbound.qos == QoS::AtMostOnce {
                    if self.connected {
                        self.send(&outbound);
                    }
                    return;
                }
                let id = self.next_id;
                self.next_id += 1;
                let entry = Entry { id, outbound, pkid: None, _permit: permit };
                if self.connected {
                    self.send(&entry.outbound);
                    self.awaiting_pkid.push_back(id);
                }
                self.ledger.push_back(entry);
            }
            Command::Ack { generation, publish } => {
                if self.connected && generation == self.generation {
                    let _ = self.client.try_ack(&publish);
                }
            }
            Command::Subscribe(filter) => {
                if self.connected {
                    self.subscribe_now(vec![filter.clone()]);
                }
                self.subscriptions.retain(|kept| kept.path != filter.path);
                self.subscriptions.push(filter);
            }
            Command::SubscribeGranted(filter, grant) => {
                self.unsent_grants.push((filter.path.clone(), grant));
                self.on_command(Command::Subscribe(filter));
            }
            Command::Unsubscribe(path) => {
                self.unsent_grants.retain(|(waiting, _)| *waiting != path);
                if self.connected {
                    let _ = self.client.try_unsubscribe(path.clone());
                }
                self.subscriptions.retain(|kept| kept.path != path);
            }
            Command::Close { drain, done } => {
                self.closing = Some(Closing { deadline: tokio::time::Instant::now() + drain, done });
            }
        }
    }

    /// Sends one SUBSCRIBE for `filters` and remembers it until its SUBACK, with the grants waiting for them.
    fn subscribe_now(&mut self, filters: Vec<Filter>) {
        if filters.is_empty() {
            return;
        }
        let paths: Vec<String> = filters.iter().map(|filter| filter.path.clone()).collect();
        let (grants, unsent) =
            std::mem::take(&mut self.unsent_grants).into_iter().partition(|(path, _)| paths.contains(path));
        self.unsent_grants = unsent;
        match self.client.try_subscribe_many(filters) {
            Ok(()) => {
                self.subscribing.push_back(Subscribing { paths, pkid: None, grants });
                self.report_status();
            }
            Err(error) => {
                for (_, grant) in grants {
                    let _ = grant.send(Err(format!("cannot subscribe: {error}")));
                }
            }
        }
    }

    /// A SUBACK arrived: answers those waiting for its filters.
    fn granted(&mut self, pkid: u16, codes: &[SubscribeReasonCode]) {
        let Some(pos) = self.subscribing.iter().position(|subscribing| subscribing.pkid == Some(pkid)) else { return };
        let Some(subscribing) = self.subscribing.remove(pos) else { return };
        for (path, grant) in subscribing.grants {
            let code = subscribing.paths.iter().position(|sent| *sent == path).and_then(|idx| codes.get(idx));
            let answer = match code {
                Some(SubscribeReasonCode::Success(qos)) => Ok(*qos),
                Some(code) => Err(format!("{code:?}")),
                None => Err("the broker's SUBACK has no reason code for it".to_owned()),
            };
            let _ = grant.send(answer);
        }
    }

    fn send(&self, outbound: &Outbound) {
        // The request channel holds more than the ledger can, so this cannot be full.
        let sent = match &outbound.properties {
            Some(props) => self.client.try_publish_with_properties(
                outbound.topic.clone(),
                outbound.qos,
                outbound.retain,
                outbound.payload.clone(),
                props.clone(),
            ),
            None => {
                self.client.try_publish(outbound.topic.clone(), outbound.qos, outbound.retain, outbound.payload.clone())
            }
        };
        if let Err(error) = sent {
            tracing::warn!(%error, topic = %outbound.topic, "could not queue a publish");
        }
    }

    fn acknowledged(&mut self, pkid: u16) {
        if let Some(pos) = self.ledger.iter().position(|entry| entry.pkid == Some(pkid)) {
            self.ledger.remove(pos);
        }
    }

    /// After a ConnAck: everything not acknowledged is sent again, in its original order.
    fn resend_all(&mut self) {
        self.awaiting_pkid.clear();
        for idx in 0..self.ledger.len() {
            self.send(&self.ledger[idx].outbound);
            let entry = &mut self.ledger[idx];
            entry.pkid = None;
            self.awaiting_pkid.push_back(entry.id);
        }
    }

    fn on_disconnect(&mut self, eventloop: &mut EventLoop) {
        self.connected = false;
        self.awaiting_pkid.clear();
        // SUBSCRIBEs not answered on this connection are sent again after the ConnAck (see `on_event`), with
        // their grants; rumqttc's own replay of them would come with packet ids we could not match.
        for subscribing in self.subscribing.drain(..) {
            self.unanswered.extend(subscribing.paths);
            self.unsent_grants.extend(subscribing.grants);
        }
        eventloop.pending.retain(|request| !matches!(request, Request::Subscribe(_)));
        for entry in &mut self.ledger {
            entry.pkid = None;
        }
        // rumqttc keeps unacknowledged publishes to replay them itself, but drops them when the new
        // session is clean; we resend from our ledger instead, so take ours out of its queue.
        eventloop.pending.retain(|request| !matches!(request, Request::Publish(p) if p.qos != QoS::AtMostOnce));
        self.report_status();
    }

    /// Sends an event to the owner while still taking commands, so a publisher waiting for
    /// ledger room never deadlocks against a full event queue. False when the owner is gone.
    async fn deliver(&mut self, event: Event) -> bool {
        let mut event = Some(event);
        loop {
            let events = self.events.clone();
            tokio::select! {
                sent = events.reserve() => {
                    let Ok(permit) = sent else { return false };
                    if let Some(event) = event.take() {
                        permit.send(event);
                    }
                    return true;
                }
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => return false,
                },
                // An owner that asked to close may have stopped reading events (it waits for the close):
                // past the drain deadline the event is dropped and the session ends, instead of both
                // waiting for each other forever. A message dropped here was not acknowledged, so the
                // broker delivers it again.
                _ = closing_deadline(self.closing.as_ref()) => return false,
            }
        }
    }

    async fn finish(&mut self, eventloop: &mut EventLoop) {
        let left = self.ledger.len();
        if self.connected {
            let _ = self.client.try_disconnect();
            // Drive the loop until the DISCONNECT is written, so the broker sees a clean goodbye.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                loop {
                    match eventloop.poll().await {
                        Ok(RawEvent::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
        if let Some(closing) = self.closing.take() {
            let _ = closing.done.send(left);
        }
    }
}

async fn closing_deadline(closing: Option<&Closing>) {
    match closing {
        Some(closing) => tokio::time::sleep_until(closing.deadline).await,
        None => std::future::pending().await,
    }
}

/// Spreads reconnects of many clients over time so a restarted broker is not hit all at once.
fn jitter(base: Duration) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    base + base.mul_f64(f64::from(nanos % 1000) / 2000.0)
}
