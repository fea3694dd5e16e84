//! One client connection: the CONNECT handshake within its deadline, then one task that reads packets, writes what
//! its session has queued, and keeps the keep-alive.
//!
//! The task owns no message: everything that must outlive the connection is in its [`Session`]. It holds only
//! per-connection protocol state (topic aliases both ways, acknowledgements waiting for the store, the Last Will),
//! and buffers only while there is something in them: an idle connection keeps no read or write buffer.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferrite_mqtt_codec::{
    ConnAck, Connect, DecodeError, Delivery, Disconnect, MqttStr, Packet, Properties, ProtocolVersion, PubResponse,
    Publish, QoS, ReasonCode, ReasonCodes, SHARED_PREFIX, SubAck, Subscribe, TopicAliasUse, UnsubAck, Unsubscribe,
};
use smallvec::SmallVec;
use tokio::sync::Notify;

use super::core::{Attached, Core, unawaited};
use super::message::Message;
use super::session::{FlightState, InFlight, Session};
use super::store::Commit;
use super::transport::Transport;
use crate::auth::{AuthDecision, DenyReason, Identity};

/// A write to a client that does not read for this long ends its connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The write buffer is filled from the session's queue up to about this much before it is written.
const WRITE_BATCH: usize = 64 * 1024;

/// A 3.1.1 client's persistent session lives this long after its connection (MQTT 3.1.1 has no expiry of its own),
/// within `--max-session-expiry`: a day covers a device that is off overnight.
const V311_SESSION_EXPIRY: Duration = Duration::from_secs(24 * 60 * 60);

/// A topic in an allocation of its own: a received topic is a slice of the connection's read chunk (up to a whole
/// packet), and one kept in an alias table must not hold that chunk for the life of the connection.
fn owned(topic: &MqttStr) -> MqttStr {
    MqttStr::try_from(topic.as_str()).unwrap_or_else(|_| topic.clone())
}

/// Why a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// The client sent DISCONNECT: its Last Will is discarded (unless it asked for it with 0x04).
    Disconnected { with_will: bool },
    /// The socket closed or failed.
    Closed,
    /// We end it, telling a v5 client why (protocol errors, keep-alive, takeover, kick, shutdown).
    Server(ReasonCode),
    /// Another connection took the session over; it owns the session now.
    TakenOver,
}

/// An acknowledgement to send once the store has what it covers.
struct PendingAck {
    packet: Packet,
    commits: SmallVec<[Commit; 2]>,
    /// A write it waited for failed: the message is not safe, so it is not acknowledged as received.
    failed: bool,
}

/// What a Last Will becomes when it fires.
struct Will {
    message: Arc<Message>,
    delay: Duration,
}

/// Serves one accepted connection to its end.
pub(crate) async fn serve(core: Arc<Core>, mut io: Transport, peer: SocketAddr) {
    core.stats.connections.fetch_add(1, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + core.limits.connect_timeout;
    let mut buf = BytesMut::new();
    let connect = tokio::select! {
        connect = tokio::time::timeout_at(deadline, read_connect(&mut io, &mut buf, core.limits.max_packet_size)) => connect,
        () = core.shutdown.cancelled() => return,
    };
    let connect = match connect {
        Err(_elapsed) => {
            tracing::debug!(%peer, "no CONNECT within the connect timeout");
            metrics::counter!("ferrite_broker_connect_timeouts_total").increment(1);
            return;
        }
        Ok(Err(refusal)) => {
            refuse(&mut io, refusal).await;
            return;
        }
        Ok(Ok(connect)) => connect,
    };
    let Some(mut connection) = Connection::accept(&core, &mut io, *connect, peer).await else { return };
    connection.read_buf = buf;
    let leave = connection.run(&mut io).await;
    connection.finish(&mut io, leave).await;
}

/// Why a CONNECT is not accepted before anything else is known.
enum Refusal {
    /// The socket closed or failed.
    Gone,
    /// Answer with this CONNACK (in the given version's form), then close.
    ConnAck(ProtocolVersion, ReasonCode),
    /// Close without an answer (not MQTT, or a 3.1.1 client with a malformed CONNECT).
    Close(DecodeError),
}

async fn read_connect(io: &mut Transport, buf: &mut BytesMut, max: u32) -> Result<Box<Connect>, Refusal> {
    loop {
        match ferrite_mqtt_codec::peek_connect_version(buf) {
            Ok(Some(version)) => match ferrite_mqtt_codec::decode(buf, version, max) {
                Ok(Some(Packet::Connect(connect))) => return Ok(connect),
                Ok(Some(_)) => return Err(Refusal::Close(DecodeError::FirstPacketNotConnect)),
                Ok(None) => {}
                Err(error) if version == ProtocolVersion::V5 => {
                    return Err(Refusal::ConnAck(version, error.reason_code()));
                }
                Err(error) => return Err(Refusal::Close(error)),
            },
            Ok(None) => {}
            Err(DecodeError::UnsupportedProtocolVersion(_)) => {
                return Err(Refusal::ConnAck(ProtocolVersion::V311, ReasonCode::UnsupportedProtocolVersion));
            }
            Err(error) => return Err(Refusal::Close(error)),
        }
        match io.read(buf).await {
            Ok(0) | Err(_) => return Err(Refusal::Gone),
            Ok(_) => {}
        }
    }
}

async fn refuse(io: &mut Transport, refusal: Refusal) {
    match refusal {
        Refusal::Gone => {}
        Refusal::Close(error) => {
            tracing::debug!(%error, "connection closed before CONNECT completed");
            metrics::counter!("ferrite_broker_malformed_packets_total").increment(1);
        }
        Refusal::ConnAck(version, reason) => {
            let connack = ConnAck { session_present: false, reason, properties: Properties::default() };
            let _ = write_packet(io, version, &Packet::ConnAck(connack)).await;
        }
    }
    io.close().await;
}

async fn write_packet(io: &mut Transport, version: ProtocolVersion, packet: &Packet) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    packet.encode(version, &mut out).map_err(std::io::Error::other)?;
    tokio::time::timeout(WRITE_TIMEOUT, io.write(&mut out)).await.map_err(|_| std::io::ErrorKind::TimedOut)?
}

struct Connection {
    core: Arc<Core>,
    identity: Identity,
    version: ProtocolVersion,
    session: Arc<Session>,
    generation: u64,
    waker: Arc<Notify>,
    /// Zero: no keep-alive.
    keep_alive: Duration,
    last_seen: Instant,
    /// Set by a v5 CONNECT (0 otherwise); a DISCONNECT may not raise it from zero.
    connect_expiry: u32,
    will: Option<Will>,
    /// The client's Maximum Packet Size: a message larger than this is not sent to it.
    client_max_packet: usize,
    /// Topic aliases the client set (MQTT 5), up to our Topic Alias Maximum.
    aliases_in: HashMap<u16, MqttStr>,
    /// Topic aliases we set for the client, up to its Topic Alias Maximum.
    aliases_out: HashMap<MqttStr, NonZeroU16>,
    client_alias_max: u16,
    /// Acknowledgements in the order their PUBLISH arrived (MQTT requires that order).
    pending_acks: VecDeque<PendingAck>,
    /// In-flight messages of a resumed session are sent again first, once.
    resend: bool,
    read_buf: BytesMut,
    write_buf: BytesMut,
}

impl Connection {
    /// Authenticates, attaches the session and answers CONNACK; `None` when refused (already answered).
    async fn accept(core: &Arc<Core>, io: &mut Transport, connect: Connect, peer: SocketAddr) -> Option<Connection> {
        let version = connect.protocol;
        let refuse_with = |reason: ReasonCode| {
            Packet::ConnAck(ConnAck { session_present: false, reason, properties: Properties::default() })
        };
        let mut assigned = None;
        let client_id: Arc<str> = if connect.client_id.is_empty() {
            if !connect.clean_start && version == ProtocolVersion::V311 {
                let _ = write_packet(io, version, &refuse_with(ReasonCode::ClientIdentifierNotValid)).await;
                io.close().await;
                return None;
            }
            let id = format!("auto-{:016x}", fastrand::u64(..));
            assigned = Some(id.clone());
            Arc::from(id)
        } else {
            Arc::from(connect.client_id.as_str())
        };
        let password = connect.password.as_deref();
        let decision = core
            .authorizer
            .authenticate(&client_id, connect.username.as_ref().map(MqttStr::as_str), password, peer)
            .await;
        let identity = match decision {
            AuthDecision::Allow(identity) => identity,
            AuthDecision::Deny(reason) => {
                let code = match reason {
                    DenyReason::NotAuthorized => ReasonCode::NotAuthorized,
                    DenyReason::BadCredentials => ReasonCode::BadUserNameOrPassword,
                };
                metrics::counter!("ferrite_broker_connections_refused_total", "reason" => "auth").increment(1);
                let _ = write_packet(io, version, &refuse_with(code)).await;
                io.close().await;
                return None;
            }
        };
        let will = match &connect.will {
            Some(will) if !core.authorizer.may_publish(&identity, will.topic.as_str()) => {
                metrics::counter!("ferrite_broker_connections_refused_total", "reason" => "will_topic").increment(1);
                let _ = write_packet(io, version, &refuse_with(ReasonCode::NotAuthorized)).await;
                io.close().await;
                return None;
            }
            Some(will) => Some(Will {
                delay: Duration::from_secs(will.properties.will_delay_interval.map_or(0, u64::from)),
                message: Arc::new(Message::new(
                    will.topic.clone(),
                    will.payload.clone(),
                    will.qos,
                    will.retain,
                    will.properties.clone(),
                    Some(client_id.clone()),
                )),
            }),
            None => None,
        };

        let max_expiry = u32::try_from(core.limits.max_session_expiry.as_secs()).unwrap_or(u32::MAX);
        let (asked_expiry, window) = match version {
            ProtocolVersion::V5 => (
                connect.properties.session_expiry_interval.unwrap_or(0),
                connect.properties.receive_maximum.map_or(u16::MAX, NonZeroU16::get),
            ),
            ProtocolVersion::V311 if connect.clean_start => (0, core.limits.v311_window),
            ProtocolVersion::V311 => {
                (u32::try_from(V311_SESSION_EXPIRY.as_secs()).unwrap_or(u32::MAX), core.limits.v311_window)
            }
        };
        let expiry = asked_expiry.min(max_expiry);
        if expiry < asked_expiry && version == ProtocolVersion::V5 {
            metrics::counter!("ferrite_broker_quota_refused_total", "quota" => "session_expiry").increment(1);
        }
        let Attached { session, generation, present, waker } =
            core.attach(&client_id, connect.clean_start, expiry, version, window);

        let mut properties = Properties::default();
        let keep_alive_secs = match core.limits.server_keep_alive {
            Some(server) => server,
            None => connect.keep_alive,
        };
        if version == ProtocolVersion::V5 {
            properties.receive_maximum = NonZeroU16::new(core.limits.receive_maximum);
            properties.maximum_packet_size = NonZeroU32::new(core.limits.max_packet_size);
            if core.limits.topic_alias_maximum > 0 {
                properties.topic_alias_maximum = Some(core.limits.topic_alias_maximum);
            }
            if expiry != asked_expiry {
                properties.session_expiry_interval = Some(expiry);
            }
            if let Some(server) = core.limits.server_keep_alive
                && server != connect.keep_alive
            {
                properties.server_keep_alive = Some(server);
            }
            if let Some(id) = &assigned {
                properties.assigned_client_identifier = MqttStr::try_from(id.as_str()).ok();
            }
        }
        let connack = Packet::ConnAck(ConnAck { session_present: present, reason: ReasonCode::Success, properties });
        if write_packet(io, version, &connack).await.is_err() {
            core.detach(&session, generation);
            return None;
        }
        metrics::counter!("ferrite_broker_connections_total").increment(1);
        tracing::debug!(client_id = %client_id, %peer, ?version, present, "client connected");
        Some(Connection {
            core: core.clone(),
            identity,
            version,
            session,
            generation,
            waker,
            keep_alive: Duration::from_millis(u64::from(keep_alive_secs) * 1500),
            last_seen: Instant::now(),
            connect_expiry: if version == ProtocolVersion::V5 { expiry } else { 0 },
            will,
            client_max_packet: connect
                .properties
                .maximum_packet_size
                .map_or(usize::MAX, |max| usize::try_from(max.get()).unwrap_or(usize::MAX)),
            aliases_in: HashMap::new(),
            aliases_out: HashMap::new(),
            // Never more aliases than we accept ourselves, whatever the client allows (each one holds a topic).
            client_alias_max: if version == ProtocolVersion::V5 {
                connect.properties.topic_alias_maximum.unwrap_or(0).min(core.limits.topic_alias_maximum)
            } else {
                0
            },
            pending_acks: VecDeque::new(),
            resend: present,
            read_buf: BytesMut::new(),
            write_buf: BytesMut::new(),
        })
    }

    async fn run(&mut self, io: &mut Transport) -> Leave {
        let keep_alive = tokio::time::sleep(self.keep_alive.max(Duration::from_secs(1)));
        tokio::pin!(keep_alive);
        loop {
            // Whole packets may already be buffered (the CONNECT's read, or a read that ended mid-batch).
            if let Err(leave) = self.handle_buffered() {
                return leave;
            }
            if let Err(leave) = self.fill() {
                return leave;
            }
            if let Err(leave) = self.take_ready_acks() {
                return leave;
            }
            if !self.write_buf.is_empty() {
                let written = tokio::time::timeout(WRITE_TIMEOUT, io.write(&mut self.write_buf)).await;
                if !matches!(written, Ok(Ok(()))) {
                    return Leave::Closed;
                }
                if self.write_buf.capacity() > WRITE_BATCH * 2 {
                    self.write_buf = BytesMut::new();
                }
                // More may be waiting (a full batch, or acks that became ready meanwhile).
                if self.has_more() {
                    continue;
                }
            }
            if self.read_buf.is_empty() {
                // An idle connection keeps no read buffer.
                self.read_buf = BytesMut::new();
            }
            let waker = self.waker.clone();
            tokio::select! {
                biased;
                () = self.core.shutdown.cancelled() => return Leave::Server(ReasonCode::ServerShuttingDown),
                read = io.read(&mut self.read_buf) => match read {
                    Ok(0) | Err(_) => return Leave::Closed,
                    Ok(n) => {
                        self.last_seen = Instant::now();
                        self.core.stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                },
                // After the socket: a subscriber woken for every message must still read its acknowledgements.
                () = AckReady(&mut self.pending_acks), if !self.pending_acks.is_empty() => {}
                () = waker.notified() => {}
                () = &mut keep_alive, if !self.keep_alive.is_zero() => {
                    let silent = self.last_seen.elapsed();
                    if silent >= self.keep_alive {
                        tracing::debug!(client_id = %self.session.client_id, "keep-alive timeout");
                        return Leave::Server(ReasonCode::KeepAliveTimeout);
                    }
                    keep_alive.as_mut().reset(tokio::time::Instant::now() + (self.keep_alive - silent));
                }
            }
        }
    }

    /// Whether a write should follow at once: queued messages the window allows, or acknowledgements ready.
    fn has_more(&mut self) -> bool {
        let state = self.session.lock();
        let sendable = state
            .queue
            .front()
            .is_some_and(|o| o.qos == QoS::AtMostOnce || state.in_flight.len() < usize::from(state.window));
        drop(state);
        sendable || self.pending_acks.front().is_some_and(|ack| ack.commits.is_empty())
    }

    fn handle_buffered(&mut self) -> Result<(), Leave> {
        loop {
            let packet =
                match ferrite_mqtt_codec::decode(&mut self.read_buf, self.version, self.core.limits.max_packet_size) {
                    Ok(Some(packet)) => packet,
                    Ok(None) => return Ok(()),
                    Err(error) => {
                        tracing::debug!(client_id = %self.session.client_id, %error, "malformed packet");
                        metrics::counter!("ferrite_broker_malformed_packets_total").increment(1);
                        return Err(Leave::Server(error.reason_code()));
                    }
                };
            self.handle(packet)?;
        }
    }

    fn handle(&mut self, packet: Packet) -> Result<(), Leave> {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish),
            Packet::PubAck(ack) => {
                self.acknowledged(ack.packet_id, FlightState::Published, QoS::AtLeastOnce);
                Ok(())
            }
            Packet::PubRec(rec) => {
                self.on_pubrec(rec);
                Ok(())
            }
            Packet::PubComp(comp) => {
                self.acknowledged(comp.packet_id, FlightState::Released, QoS::ExactlyOnce);
                Ok(())
            }
            Packet::PubRel(rel) => {
                let known = self.session.lock().awaiting_release.remove(&rel.packet_id.get());
                let mut comp = PubResponse::new(rel.packet_id);
                if !known && self.version == ProtocolVersion::V5 {
                    comp.reason = ReasonCode::PacketIdentifierNotFound;
                }
                self.queue_ack(Packet::PubComp(comp), SmallVec::new());
                Ok(())
            }
            Packet::Subscribe(subscribe) => self.on_subscribe(subscribe),
            Packet::Unsubscribe(unsubscribe) => {
                self.on_unsubscribe(unsubscribe);
                Ok(())
            }
            Packet::PingReq => {
                self.queue_ack(Packet::PingResp, SmallVec::new());
                Ok(())
            }
            Packet::Disconnect(disconnect) => self.on_disconnect(&disconnect),
            Packet::Auth(_) | Packet::Connect(_) => Err(Leave::Server(ReasonCode::ProtocolError)),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(Leave::Server(ReasonCode::ProtocolError))
            }
        }
    }

    fn on_publish(&mut self, mut publish: Publish) -> Result<(), Leave> {
        if self.version == ProtocolVersion::V5 {
            if !publish.properties.subscription_identifiers.is_empty() {
                return Err(Leave::Server(ReasonCode::ProtocolError));
            }
            if let Some(alias) = publish.properties.topic_alias {
                if alias.get() > self.core.limits.topic_alias_maximum {
                    return Err(Leave::Server(ReasonCode::TopicAliasInvalid));
                }
                if publish.topic.is_empty() {
                    match self.aliases_in.get(&alias.get()) {
                        Some(topic) => publish.topic = topic.clone(),
                        None => return Err(Leave::Server(ReasonCode::ProtocolError)),
                    }
                } else {
                    self.aliases_in.insert(alias.get(), owned(&publish.topic));
                }
            }
        }
        if publish.topic.is_empty() {
            return Err(Leave::Server(ReasonCode::ProtocolError));
        }
        let packet_id = publish.packet_id;
        if publish.qos == QoS::ExactlyOnce
            && let Some(id) = packet_id
            && self.session.lock().awaiting_release.contains(&id.get())
        {
            // A resent QoS 2 message we already have: answer again, deliver nothing twice.
            self.queue_ack(Packet::PubRec(PubResponse::new(id)), SmallVec::new());
            return Ok(());
        }
        let unacknowledged = self.pending_acks.len() + self.session.lock().awaiting_release.len();
        if publish.qos != QoS::AtMostOnce && unacknowledged >= usize::from(self.core.limits.receive_maximum) {
            return Err(Leave::Server(ReasonCode::ReceiveMaximumExceeded));
        }

        let mut reason = ReasonCode::Success;
        let mut commits = SmallVec::new();
        if !self.core.authorizer.may_publish(&self.identity, publish.topic.as_str()) {
            metrics::counter!("ferrite_broker_publishes_denied_total", "reason" => "acl").increment(1);
            reason = ReasonCode::NotAuthorized;
        } else if publish.retain
            && !self.core.retained_within_quota(&self.identity, publish.topic.as_str(), publish.payload.is_empty())
        {
            metrics::counter!("ferrite_broker_quota_refused_total", "quota" => "retained").increment(1);
            reason = ReasonCode::QuotaExceeded;
        } else {
            let message = Message::new(
                publish.topic,
                publish.payload,
                publish.qos,
                publish.retain,
                publish.properties,
                Some(self.session.client_id.clone()),
            );
            commits = self.core.publish(Arc::new(message));
        }
        // A 3.1.1 client cannot be told of a refusal: its message is acknowledged and dropped, as Mosquitto does.
        if self.version == ProtocolVersion::V311 {
            reason = ReasonCode::Success;
        }
        let Some(id) = packet_id else { return Ok(()) };
        let mut response = PubResponse::new(id);
        response.reason = reason;
        if publish.qos == QoS::AtLeastOnce {
            self.queue_ack(Packet::PubAck(response), commits);
        } else {
            if !reason.is_error() {
                self.session.lock().awaiting_release.insert(id.get());
            }
            self.queue_ack(Packet::PubRec(response), commits);
        }
        Ok(())
    }

    fn on_pubrec(&mut self, rec: PubResponse) {
        if rec.reason.is_error() {
            // The receiver refused the message: its flow ends here.
            self.acknowledged(rec.packet_id, FlightState::Published, QoS::ExactlyOnce);
            return;
        }
        let known = self.session.lock().released(rec.packet_id);
        let mut rel = PubResponse::new(rec.packet_id);
        if !known && self.version == ProtocolVersion::V5 {
            rel.reason = ReasonCode::PacketIdentifierNotFound;
        }
        self.queue_ack(Packet::PubRel(rel), SmallVec::new());
    }

    /// A message the client acknowledged (or refused) leaves flight, and the store.
    fn acknowledged(&mut self, packet_id: NonZeroU16, state: FlightState, qos: QoS) {
        let mut session = self.session.lock();
        let done = match state {
            FlightState::Published => {
                let matching = session
                    .in_flight
                    .iter()
                    .any(|f| f.packet_id == packet_id && f.state == state && f.outgoing.qos == qos);
                if matching { session.complete(packet_id, state) } else { None }
            }
            FlightState::Released => session.complete(packet_id, state),
        };
        drop(session);
        if let Some(Some(seq)) = done {
            unawaited(self.core.store.remove(&self.session.client_id, seq));
        }
    }

    fn on_subscribe(&mut self, subscribe: Subscribe) -> Result<(), Leave> {
        let id = subscribe.properties.subscription_identifiers.iter().next();
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        for (filter, options) in subscribe.filters.iter() {
            let shared = filter.as_str().starts_with(SHARED_PREFIX);
            if shared && options.no_local {
                return Err(Leave::Server(ReasonCode::ProtocolError));
            }
            if !self.core.authorizer.may_subscribe(&self.identity, filter.as_str()) {
                metrics::counter!("ferrite_broker_subscriptions_denied_total").increment(1);
                reasons.push(if self.version == ProtocolVersion::V5 {
                    ReasonCode::NotAuthorized
                } else {
                    ReasonCode::UnspecifiedError
                });
                continue;
            }
            if !self.may_add_subscription(filter.as_str()) {
                metrics::counter!("ferrite_broker_quota_refused_total", "quota" => "subscriptions").increment(1);
                reasons.push(if self.version == ProtocolVersion::V5 {
                    ReasonCode::QuotaExceeded
                } else {
                    ReasonCode::UnspecifiedError
                });
                continue;
            }
            reasons.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
            });
            // Retained messages may reach the client before the SUBACK, which MQTT allows.
            self.core.subscribe(&self.session, filter.as_str(), options, id);
        }
        if let Some(commit) = self.core.save_session(&self.session) {
            unawaited(commit);
        }
        let suback = SubAck {
            packet_id: subscribe.packet_id,
            properties: Properties::default(),
            reasons: ReasonCodes::new(reasons),
        };
        self.queue_ack(Packet::SubAck(suback), SmallVec::new());
        Ok(())
    }

    /// Whether the client may hold one more subscription: platform services are not limited, every other client holds
    /// at most `max_subscriptions_per_client` (replacing one it holds is always allowed).
    fn may_add_subscription(&self, filter: &str) -> bool {
        if matches!(self.identity.principal, crate::auth::Principal::Service(_)) {
            return true;
        }
        let state = self.session.lock();
        state.subscriptions.contains_key(filter)
            || state.subscriptions.len() < self.core.limits.max_subscriptions_per_client
    }

    fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let mut reasons = Vec::new();
        for filter in unsubscribe.filters.iter() {
            let existed = self.core.unsubscribe(&self.session, filter.as_str());
            reasons.push(if existed { ReasonCode::Success } else { ReasonCode::NoSubscriptionExisted });
        }
        if let Some(commit) = self.core.save_session(&self.session) {
            unawaited(commit);
        }
        let reasons =
            if self.version == ProtocolVersion::V5 { ReasonCodes::new(reasons) } else { ReasonCodes::new([]) };
        let unsuback = UnsubAck { packet_id: unsubscribe.packet_id, properties: Properties::default(), reasons };
        self.queue_ack(Packet::UnsubAck(unsuback), SmallVec::new());
    }

    fn on_disconnect(&mut self, disconnect: &Disconnect) -> Result<(), Leave> {
        if let Some(expiry) = disconnect.properties.session_expiry_interval {
            if self.connect_expiry == 0 && expiry != 0 {
                return Err(Leave::Server(ReasonCode::ProtocolError));
            }
            let max = u32::try_from(self.core.limits.max_session_expiry.as_secs()).unwrap_or(u32::MAX);
            self.session.lock().expiry_secs = expiry.min(max);
        }
        Err(Leave::Disconnected { with_will: disconnect.reason == ReasonCode::DisconnectWithWillMessage })
    }

    /// Queues an acknowledgement behind those still waiting for the store (MQTT wants them in order).
    fn queue_ack(&mut self, packet: Packet, commits: SmallVec<[Commit; 2]>) {
        if commits.is_empty() && self.pending_acks.is_empty() {
            self.encode(&packet);
        } else {
            self.pending_acks.push_back(PendingAck { packet, commits, failed: false });
        }
    }

    fn encode(&mut self, packet: &Packet) {
        if let Err(error) = packet.encode(self.version, &mut self.write_buf) {
            tracing::warn!(%error, ?packet, "cannot encode a packet for a client");
        }
    }

    /// Moves acknowledgements whose writes are done into the write buffer, in order. A failed write ends a 3.1.1
    /// connection without its acknowledgement (the client sends the message again when it reconnects); a v5 client
    /// is told with reason 0x80.
    fn take_ready_acks(&mut self) -> Result<(), Leave> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while let Some(front) = self.pending_acks.front_mut() {
            if poll_commits(front, &mut cx).is_pending() {
                return Ok(());
            }
            let Some(ack) = self.pending_acks.pop_front() else { break };
            let mut packet = ack.packet;
            if ack.failed {
                if self.version == ProtocolVersion::V311 {
                    return Err(Leave::Server(ReasonCode::ImplementationSpecificError));
                }
                if let Packet::PubAck(response) | Packet::PubRec(response) = &mut packet {
                    response.reason = ReasonCode::UnspecifiedError;
                }
            }
            self.encode(&packet);
        }
        Ok(())
    }

    /// Fills the write buffer from the session: in-flight messages again after a resume, then queued messages as
    /// the client's window allows. Ends the connection if the session was taken over or the connection kicked.
    fn fill(&mut self) -> Result<(), Leave> {
        let session = self.session.clone();
        let mut state = session.lock();
        if state.generation != self.generation {
            return Err(Leave::TakenOver);
        }
        if let Some(reason) = state.kick.take() {
            return Err(Leave::Server(reason));
        }
        if state.ended {
            return Err(Leave::Server(ReasonCode::SessionTakenOver));
        }
        let now = Instant::now();
        if std::mem::take(&mut self.resend) {
            let flights: Vec<(NonZeroU16, FlightState, super::session::Outgoing)> =
                state.in_flight.iter().map(|f| (f.packet_id, f.state, f.outgoing.clone())).collect();
            for (packet_id, flight, outgoing) in flights {
                match flight {
                    FlightState::Published => {
                        if let Err(reason) = self.write_publish(&outgoing, Some(packet_id), true, now) {
                            // Expired meanwhile, or too large for the new connection: its flow ends here.
                            self.core.count_drop(reason, outgoing.qos);
                            if let Some(Some(seq)) = state.complete(packet_id, FlightState::Published) {
                                unawaited(self.core.store.remove(&session.client_id, seq));
                            }
                        }
                    }
                    FlightState::Released => self.encode(&Packet::PubRel(PubResponse::new(packet_id))),
                }
            }
        }
        let mut sent = 0u64;
        while self.write_buf.len() < WRITE_BATCH {
            let Some(front) = state.queue.front() else { break };
            let packet_id = if front.qos == QoS::AtMostOnce {
                None
            } else {
                match state.take_packet_id() {
                    Some(id) => Some(id),
                    None => break,
                }
            };
            let Some(outgoing) = state.pop_queued() else { break };
            match self.write_publish(&outgoing, packet_id, false, now) {
                Ok(()) => {
                    sent += 1;
                    if let Some(packet_id) = packet_id {
                        state.in_flight.push_back(InFlight { packet_id, outgoing, state: FlightState::Published });
                    }
                }
                Err(reason) => {
                    self.core.count_drop(reason, outgoing.qos);
                    if let Some(seq) = outgoing.seq {
                        unawaited(self.core.store.remove(&session.client_id, seq));
                    }
                }
            }
        }
        drop(state);
        if sent > 0 {
            self.core.stats.sent.fetch_add(sent, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Encodes one PUBLISH into the write buffer; why not, if it cannot be sent (expired, too large for the client).
    fn write_publish(
        &mut self,
        outgoing: &super::session::Outgoing,
        packet_id: Option<NonZeroU16>,
        dup: bool,
        now: Instant,
    ) -> Result<(), &'static str> {
        let message = &outgoing.message;
        let expiry = message.remaining_expiry(now).map_err(|_| "expired")?;
        let shared = message.shared(self.version).ok_or("unencodable")?;
        let topic_alias = self.topic_alias(&message.topic);
        let delivery = Delivery {
            qos: outgoing.qos,
            packet_id,
            dup,
            retain: outgoing.retain,
            topic_alias,
            subscription_ids: &outgoing.subscription_ids,
            message_expiry_interval: expiry,
        };
        let frame = shared.frame(&delivery).map_err(|_| "unencodable")?;
        if frame.len() > self.client_max_packet {
            if let TopicAliasUse::Establish(_) = topic_alias {
                self.aliases_out.remove(&message.topic);
            }
            return Err("too_large_for_client");
        }
        self.core.stats.bytes_sent.fetch_add(frame.len() as u64, Ordering::Relaxed);
        frame.write_to(&mut self.write_buf);
        Ok(())
    }

    fn topic_alias(&mut self, topic: &MqttStr) -> TopicAliasUse {
        if self.client_alias_max == 0 {
            return TopicAliasUse::None;
        }
        if let Some(alias) = self.aliases_out.get(topic) {
            return TopicAliasUse::Reuse(*alias);
        }
        let next = self.aliases_out.len() + 1;
        match u16::try_from(next).ok().filter(|n| *n <= self.client_alias_max).and_then(NonZeroU16::new) {
            Some(alias) => {
                self.aliases_out.insert(owned(topic), alias);
                TopicAliasUse::Establish(alias)
            }
            None => TopicAliasUse::None,
        }
    }

    /// Tells a v5 client why we close, fires the Last Will when due, and leaves the session.
    async fn finish(mut self, io: &mut Transport, leave: Leave) {
        if leave != Leave::Closed {
            // Acknowledgements already earned still go out.
            let _ = self.take_ready_acks();
            if let Leave::Server(reason) = leave
                && self.version == ProtocolVersion::V5
            {
                self.encode(&Packet::Disconnect(Disconnect { reason, properties: Properties::default() }));
            }
            if leave == Leave::TakenOver && self.version == ProtocolVersion::V5 {
                self.encode(&Packet::Disconnect(Disconnect {
                    reason: ReasonCode::SessionTakenOver,
                    properties: Properties::default(),
                }));
            }
            if !self.write_buf.is_empty() {
                let _ = tokio::time::timeout(Duration::from_secs(1), io.write(&mut self.write_buf)).await;
            }
        }
        io.close().await;
        tracing::debug!(client_id = %self.session.client_id, ?leave, "client disconnected");
        let fire_will = match leave {
            Leave::Disconnected { with_will } => with_will,
            Leave::Closed | Leave::Server(_) | Leave::TakenOver => true,
        };
        if let Some(will) = self.will.take()
            && fire_will
        {
            self.fire_will(will, leave);
        }
        self.core.detach(&self.session, self.generation);
    }

    /// Publishes the Last Will now, or after its delay unless the client is back by then (or its session ends).
    fn fire_will(&self, will: Will, leave: Leave) {
        let expiry = Duration::from_secs(u64::from(self.session.lock().expiry_secs));
        let delay = will.delay.min(expiry);
        let shutting_down = leave == Leave::Server(ReasonCode::ServerShuttingDown);
        if delay.is_zero() || shutting_down || leave == Leave::TakenOver && will.delay.is_zero() {
            drop(self.core.publish(will.message));
            return;
        }
        let core = self.core.clone();
        let session = self.session.clone();
        let generation = self.generation;
        self.core.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = core.shutdown.cancelled() => {}
            }
            let state = session.lock();
            let back = state.generation != generation && !state.ended;
            drop(state);
            if !back {
                drop(core.publish(will.message));
            }
        });
    }
}

/// Polls the writes an acknowledgement waits for; ready when all are done (failed ones mark it).
fn poll_commits(ack: &mut PendingAck, cx: &mut Context<'_>) -> Poll<()> {
    while let Some(commit) = ack.commits.last_mut() {
        match Pin::new(commit).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => {
                ack.commits.pop();
                if let Err(error) = result {
                    tracing::warn!(%error, "a message could not be stored");
                    metrics::counter!("ferrite_broker_store_errors_total").increment(1);
                    ack.failed = true;
                }
            }
        }
    }
    Poll::Ready(())
}

/// Resolves when the oldest pending acknowledgement's writes are all done.
struct AckReady<'a>(&'a mut VecDeque<PendingAck>);

impl Future for AckReady<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.0.front_mut() {
            Some(front) => poll_commits(front, cx),
            None => Poll::Pending,
        }
    }
}
