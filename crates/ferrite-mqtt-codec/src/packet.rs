//! The packets of MQTT 3.1.1 and 5.0, and how each is read from a complete frame and written at its exact size.

use std::num::NonZeroU16;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, Scope};
use crate::reason::ReasonCode;
use crate::string::{MqttStr, check_topic_filter, check_topic_name};
use crate::wire::{MAX_BINARY_LEN, MAX_VARINT, Reader, put_binary, put_varint, varint_len};
use crate::{ProtocolVersion, QoS};

/// The control packet types (the high nibble of the first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    /// MQTT 5 only.
    Auth = 15,
}

impl PacketType {
    /// The type for a first byte's high nibble; 0 is reserved, and so is 15 in MQTT 3.1.1.
    pub fn from_nibble(nibble: u8, version: ProtocolVersion) -> Result<Self, DecodeError> {
        use PacketType::*;
        Ok(match nibble {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 if version == ProtocolVersion::V5 => Auth,
            _ => return Err(DecodeError::ReservedPacketType(nibble)),
        })
    }

    /// The fixed header flags this type requires (PUBLISH's are variable and checked separately).
    fn required_flags(self) -> u8 {
        match self {
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
            _ => 0,
        }
    }
}

/// Any MQTT packet of either version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubResponse),
    PubRec(PubResponse),
    PubRel(PubResponse),
    PubComp(PubResponse),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

/// CONNECT. It carries its own protocol version, which is decoded from it whatever version the caller passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    /// "Clean session" in MQTT 3.1.1, "clean start" in MQTT 5.
    pub clean_start: bool,
    pub keep_alive: u16,
    pub properties: Properties,
    pub client_id: MqttStr,
    pub will: Option<Will>,
    pub username: Option<MqttStr>,
    pub password: Option<Bytes>,
}

/// A CONNECT's Last Will.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 will properties (will delay, expiry, content type, response topic, correlation data, user properties).
    pub properties: Properties,
    pub topic: MqttStr,
    pub payload: Bytes,
}

/// CONNACK. In MQTT 3.1.1 the return code is mapped to and from a reason code
/// ([`ReasonCode::to_v311_connack`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub reason: ReasonCode,
    pub properties: Properties,
}

/// PUBLISH. Topic and payload are slices of the received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only in MQTT 5 with a topic alias.
    pub topic: MqttStr,
    /// Present exactly when QoS > 0.
    pub packet_id: Option<NonZeroU16>,
    pub properties: Properties,
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP (the packet says which). MQTT 3.1.1 carries only the packet identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResponse {
    pub packet_id: NonZeroU16,
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl PubResponse {
    /// A success response without properties.
    pub fn new(packet_id: NonZeroU16) -> Self {
        Self { packet_id, reason: ReasonCode::Success, properties: Properties::default() }
    }
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: NonZeroU16,
    pub properties: Properties,
    pub filters: SubscribeFilters,
}

/// SUBACK: one reason code per filter of the SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: NonZeroU16,
    pub properties: Properties,
    pub reasons: ReasonCodes,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: NonZeroU16,
    pub properties: Properties,
    pub filters: UnsubscribeFilters,
}

/// UNSUBACK: in MQTT 5 one reason code per filter; in MQTT 3.1.1 none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: NonZeroU16,
    pub properties: Properties,
    pub reasons: ReasonCodes,
}

/// DISCONNECT (in MQTT 3.1.1 always a normal disconnection without properties).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: Properties,
}

/// AUTH (MQTT 5 only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: Properties,
}

/// What a subscriber asks for with each filter (MQTT 3.1.1 has only the QoS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

/// When retained messages are sent for a new subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// At subscribe time (0).
    #[default]
    OnSubscribe,
    /// At subscribe time if the subscription did not exist (1).
    OnNewSubscribe,
    /// Never (2).
    Never,
}

impl SubscriptionOptions {
    /// Options with only a QoS (what MQTT 3.1.1 can say).
    pub fn qos(qos: QoS) -> Self {
        Self { qos, no_local: false, retain_as_published: false, retain_handling: RetainHandling::OnSubscribe }
    }

    fn to_byte(self) -> u8 {
        self.qos as u8
            | u8::from(self.no_local) << 2
            | u8::from(self.retain_as_published) << 3
            | (self.retain_handling as u8) << 4
    }

    fn from_byte(byte: u8, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let invalid = DecodeError::InvalidSubscriptionOptions(byte);
        let reserved = if version == ProtocolVersion::V5 { 0b1100_0000 } else { 0b1111_1100 };
        if byte & reserved != 0 {
            return Err(invalid);
        }
        let qos = QoS::from_bits(byte & 0b11).ok_or(invalid.clone())?;
        let retain_handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::OnSubscribe,
            1 => RetainHandling::OnNewSubscribe,
            2 => RetainHandling::Never,
            _ => return Err(invalid),
        };
        Ok(Self { qos, no_local: byte & 0b0100 != 0, retain_as_published: byte & 0b1000 != 0, retain_handling })
    }
}

/// A SUBSCRIBE's filters and options in their encoded form (a slice of the received frame), validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscribeFilters(Bytes);

impl SubscribeFilters {
    /// Encodes and validates filters (syntax, and no-local not set on a shared subscription).
    pub fn new<'a>(filters: impl IntoIterator<Item = (&'a MqttStr, SubscriptionOptions)>) -> Result<Self, DecodeError> {
        let mut buf = BytesMut::new();
        for (filter, options) in filters {
            if check_topic_filter(filter.as_bytes())? && options.no_local {
                return Err(DecodeError::NoLocalOnSharedSubscription);
            }
            put_binary(&mut buf, filter.as_bytes());
            buf.put_u8(options.to_byte());
        }
        Ok(Self(buf.freeze()))
    }

    /// The filters and their options, in order; each filter is a slice of the backing bytes.
    pub fn iter(&self) -> impl Iterator<Item = (MqttStr, SubscriptionOptions)> + '_ {
        let mut reader = Reader::new(self.0.clone(), 0, self.0.len());
        std::iter::from_fn(move || {
            if reader.is_empty() {
                return None;
            }
            let filter = reader.string().ok()?;
            let options = SubscriptionOptions::from_byte(reader.u8().ok()?, ProtocolVersion::V5).ok()?;
            Some((filter, options))
        })
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// The encoded entries, as written on the wire.
    pub fn encoded(&self) -> &Bytes {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An UNSUBSCRIBE's filters in their encoded form, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnsubscribeFilters(Bytes);

impl UnsubscribeFilters {
    pub fn new<'a>(filters: impl IntoIterator<Item = &'a MqttStr>) -> Result<Self, DecodeError> {
        let mut buf = BytesMut::new();
        for filter in filters {
            check_topic_filter(filter.as_bytes())?;
            put_binary(&mut buf, filter.as_bytes());
        }
        Ok(Self(buf.freeze()))
    }

    pub fn iter(&self) -> impl Iterator<Item = MqttStr> + '_ {
        let mut reader = Reader::new(self.0.clone(), 0, self.0.len());
        std::iter::from_fn(move || if reader.is_empty() { None } else { reader.string().ok() })
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// The encoded entries, as written on the wire.
    pub fn encoded(&self) -> &Bytes {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The reason codes of a SUBACK or UNSUBACK, one byte each (a slice of the received frame).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReasonCodes(Bytes);

impl ReasonCodes {
    pub fn new(codes: impl IntoIterator<Item = ReasonCode>) -> Self {
        Self(codes.into_iter().map(|code| code as u8).collect::<Vec<u8>>().into())
    }

    pub fn iter(&self) -> impl Iterator<Item = ReasonCode> + '_ {
        self.0.iter().filter_map(|&code| ReasonCode::from_u8(code))
    }

    /// The codes as written on the wire (MQTT 5 values).
    pub fn encoded(&self) -> &Bytes {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn packet_id(reader: &mut Reader) -> Result<NonZeroU16, DecodeError> {
    NonZeroU16::new(reader.u16()?).ok_or(DecodeError::ZeroPacketId)
}

fn reason(reader: &mut Reader, packet: PacketType) -> Result<ReasonCode, DecodeError> {
    let code = reader.u8()?;
    ReasonCode::from_u8(code)
        .filter(|reason| reason.allowed_in(packet))
        .ok_or(DecodeError::InvalidReasonCode { packet, code })
}

fn properties(reader: &mut Reader, version: ProtocolVersion, packet: PacketType) -> Result<Properties, DecodeError> {
    match version {
        ProtocolVersion::V5 => Properties::decode(reader, Scope::Packet(packet)),
        ProtocolVersion::V311 => Ok(Properties::default()),
    }
}

/// Decodes the variable header and payload of one complete packet (`reader` spans them).
pub(crate) fn decode_body(
    packet: PacketType,
    flags: u8,
    reader: &mut Reader,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    use ProtocolVersion::*;
    let r = reader;
    let decoded = match packet {
        PacketType::Connect => Packet::Connect(Box::new(decode_connect(r)?)),
        PacketType::ConnAck => {
            let flags = r.u8()?;
            if flags & 0xFE != 0 {
                return Err(DecodeError::ReservedConnAckFlags);
            }
            let code = r.u8()?;
            let reason = match version {
                V311 => ReasonCode::from_v311_connack(code),
                V5 => ReasonCode::from_u8(code).filter(|reason| reason.allowed_in(packet)),
            }
            .ok_or(DecodeError::InvalidReasonCode { packet, code })?;
            let session_present = flags & 1 != 0;
            if session_present && reason.is_error() {
                return Err(DecodeError::SessionPresentWithError);
            }
            Packet::ConnAck(ConnAck { session_present, reason, properties: properties(r, version, packet)? })
        }
        PacketType::Publish => Packet::Publish(decode_publish(flags, r, version)?),
        PacketType::PubAck | PacketType::PubRec | PacketType::PubRel | PacketType::PubComp => {
            let packet_id = packet_id(r)?;
            let mut response = PubResponse::new(packet_id);
            if version == V5 && !r.is_empty() {
                response.reason = reason(r, packet)?;
                if !r.is_empty() {
                    response.properties = Properties::decode(r, Scope::Packet(packet))?;
                }
            }
            match packet {
                PacketType::PubAck => Packet::PubAck(response),
                PacketType::PubRec => Packet::PubRec(response),
                PacketType::PubRel => Packet::PubRel(response),
                _ => Packet::PubComp(response),
            }
        }
        PacketType::Subscribe => {
            let packet_id = packet_id(r)?;
            let properties = properties(r, version, packet)?;
            let start = r.position();
            while !r.is_empty() {
                let filter = r.string()?;
                let shared = check_topic_filter(filter.as_bytes())?;
                let options = SubscriptionOptions::from_byte(r.u8()?, version)?;
                if shared && options.no_local {
                    return Err(DecodeError::NoLocalOnSharedSubscription);
                }
            }
            if r.position() == start {
                return Err(DecodeError::EmptyList(packet));
            }
            let filters = SubscribeFilters(r.frame().slice(start..r.position()));
            Packet::Subscribe(Subscribe { packet_id, properties, filters })
        }
        PacketType::SubAck => {
            let packet_id = packet_id(r)?;
            let properties = properties(r, version, packet)?;
            let codes = r.rest();
            for &code in codes.iter() {
                let valid = match version {
                    V311 => ReasonCode::from_v311_suback(code).is_some(),
                    V5 => ReasonCode::from_u8(code).is_some_and(|reason| reason.allowed_in(packet)),
                };
                if !valid {
                    return Err(DecodeError::InvalidReasonCode { packet, code });
                }
            }
            if codes.is_empty() {
                return Err(DecodeError::EmptyList(packet));
            }
            Packet::SubAck(SubAck { packet_id, properties, reasons: ReasonCodes(codes) })
        }
        PacketType::Unsubscribe => {
            let packet_id = packet_id(r)?;
            let properties = properties(r, version, packet)?;
            let start = r.position();
            while !r.is_empty() {
                check_topic_filter(r.string()?.as_bytes())?;
            }
            if r.position() == start {
                return Err(DecodeError::EmptyList(packet));
            }
            let filters = UnsubscribeFilters(r.frame().slice(start..r.position()));
            Packet::Unsubscribe(Unsubscribe { packet_id, properties, filters })
        }
        PacketType::UnsubAck => {
            let packet_id = packet_id(r)?;
            let mut ack = UnsubAck { packet_id, properties: Properties::default(), reasons: ReasonCodes::default() };
            if version == V5 {
                ack.properties = Properties::decode(r, Scope::Packet(packet))?;
                let codes = r.rest();
                if let Some(&code) =
                    codes.iter().find(|&&code| !ReasonCode::from_u8(code).is_some_and(|c| c.allowed_in(packet)))
                {
                    return Err(DecodeError::InvalidReasonCode { packet, code });
                }
                if codes.is_empty() {
                    return Err(DecodeError::EmptyList(packet));
                }
                ack.reasons = ReasonCodes(codes);
            }
            Packet::UnsubAck(ack)
        }
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => {
            let mut disconnect = Disconnect::default();
            if version == V5 && !r.is_empty() {
                disconnect.reason = reason(r, packet)?;
                if !r.is_empty() {
                    disconnect.properties = Properties::decode(r, Scope::Packet(packet))?;
                }
            }
            Packet::Disconnect(disconnect)
        }
        PacketType::Auth => {
            let mut auth = Auth::default();
            // Reason code and properties are both present or both omitted (remaining length 0).
            if !r.is_empty() {
                auth.reason = reason(r, packet)?;
                auth.properties = Properties::decode(r, Scope::Packet(packet))?;
            }
            Packet::Auth(auth)
        }
    };
    if !r.is_empty() {
        return Err(DecodeError::TrailingBytes(r.remaining()));
    }
    Ok(decoded)
}

/// The protocol version a CONNECT's protocol name and level announce.
pub(crate) fn protocol_version(name: &[u8], level: u8) -> Result<ProtocolVersion, DecodeError> {
    match (name, level) {
        (b"MQTT", 4) => Ok(ProtocolVersion::V311),
        (b"MQTT", 5) => Ok(ProtocolVersion::V5),
        (b"MQTT" | b"MQIsdp", level) => Err(DecodeError::UnsupportedProtocolVersion(level)),
        _ => Err(DecodeError::InvalidProtocolName),
    }
}

fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let protocol = protocol_version(&name, r.u8()?)?;
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ReservedConnectFlag);
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos = QoS::from_bits((flags >> 3) & 0b11).ok_or(DecodeError::InvalidWillFlags)?;
    let will_retain = flags & 0x20 != 0;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(DecodeError::InvalidWillFlags);
    }
    let (password_flag, username_flag) = (flags & 0x40 != 0, flags & 0x80 != 0);
    if protocol == ProtocolVersion::V311 && password_flag && !username_flag {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16()?;
    let properties = properties(r, protocol, PacketType::Connect)?;
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = match protocol {
            ProtocolVersion::V5 => Properties::decode(r, Scope::Will)?,
            ProtocolVersion::V311 => Properties::default(),
        };
        let topic = r.string()?;
        if topic.is_empty() {
            return Err(DecodeError::EmptyTopic);
        }
        check_topic_name(topic.as_bytes())?;
        Some(Will { qos: will_qos, retain: will_retain, properties, topic, payload: r.binary()? })
    } else {
        None
    };
    let username = if username_flag { Some(r.string()?) } else { None };
    let password = if password_flag { Some(r.binary()?) } else { None };
    Ok(Connect {
        protocol,
        clean_start: flags & 0x02 != 0,
        keep_alive,
        properties,
        client_id,
        will,
        username,
        password,
    })
}

fn decode_publish(flags: u8, r: &mut Reader, version: ProtocolVersion) -> Result<Publish, DecodeError> {
    let qos = QoS::from_bits((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let dup = flags & 0b1000 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::DupWithQoS0);
    }
    let topic = r.string()?;
    check_topic_name(topic.as_bytes())?;
    let packet_id = if qos == QoS::AtMostOnce { None } else { Some(packet_id(r)?) };
    let properties = properties(r, version, PacketType::Publish)?;
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::EmptyTopic);
    }
    Ok(Publish { dup, qos, retain: flags & 1 != 0, topic, packet_id, properties, payload: r.rest() })
}

/// The validated pieces of a fixed header the encoder writes.
fn header_len(remaining: usize) -> Result<usize, EncodeError> {
    if remaining > MAX_VARINT as usize {
        return Err(EncodeError::PacketTooLarge(remaining));
    }
    Ok(1 + varint_len(remaining))
}

fn check_binary(data: &[u8]) -> Result<(), EncodeError> {
    if data.len() > MAX_BINARY_LEN { Err(EncodeError::BinaryTooLong(data.len())) } else { Ok(()) }
}

fn check_reason(reason: ReasonCode, packet: PacketType) -> Result<(), EncodeError> {
    if reason.allowed_in(packet) { Ok(()) } else { Err(EncodeError::InvalidReasonCode { packet, code: reason }) }
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    /// The whole packet's size on the wire in `version`, after checking that it can be encoded.
    ///
    /// MQTT 5-only content (properties, reason codes other than success, subscription options beyond QoS) is not
    /// written in MQTT 3.1.1, except that CONNACK and SUBACK failures map to their 3.1.1 return codes; AUTH cannot
    /// be encoded in 3.1.1. Here and in [`Packet::encode`] a CONNECT is written in its own `protocol` version.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let version = self.effective_version(version);
        self.check(version)?;
        let remaining = self.remaining_len(version);
        Ok(header_len(remaining)? + remaining)
    }

    /// Appends the packet to `buf`, reserving exactly its size first.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let version = self.effective_version(version);
        self.check(version)?;
        let remaining = self.remaining_len(version);
        buf.reserve(header_len(remaining)? + remaining);
        buf.put_u8(self.first_byte());
        put_varint(buf, remaining);
        self.write_body(version, buf);
        Ok(())
    }

    fn effective_version(&self, version: ProtocolVersion) -> ProtocolVersion {
        match self {
            Packet::Connect(connect) => connect.protocol,
            _ => version,
        }
    }

    fn first_byte(&self) -> u8 {
        let packet = self.packet_type();
        let flags = match self {
            Packet::Publish(publish) => {
                u8::from(publish.dup) << 3 | (publish.qos as u8) << 1 | u8::from(publish.retain)
            }
            _ => packet.required_flags(),
        };
        (packet as u8) << 4 | flags
    }

    fn check(&self, version: ProtocolVersion) -> Result<(), EncodeError> {
        let v5 = version == ProtocolVersion::V5;
        let packet = self.packet_type();
        let props = |p: &Properties, scope: Scope| if v5 { p.check(scope) } else { Ok(()) };
        match self {
            Packet::Connect(connect) => {
                props(&connect.properties, Scope::Packet(packet))?;
                if let Some(will) = &connect.will {
                    props(&will.properties, Scope::Will)?;
                    if will.topic.is_empty() || check_topic_name(will.topic.as_bytes()).is_err() {
                        return Err(EncodeError::InvalidTopicName);
                    }
                    check_binary(&will.payload)?;
                }
                if let Some(password) = &connect.password {
                    check_binary(password)?;
                    if !v5 && connect.username.is_none() {
                        return Err(EncodeError::PasswordWithoutUsername);
                    }
                }
            }
            Packet::ConnAck(ack) => {
                props(&ack.properties, Scope::Packet(packet))?;
                if v5 {
                    check_reason(ack.reason, packet)?;
                }
                if ack.session_present && ack.reason.is_error() {
                    return Err(EncodeError::SessionPresentWithError);
                }
            }
            Packet::Publish(publish) => {
                props(&publish.properties, Scope::Packet(packet))?;
                if (publish.qos == QoS::AtMostOnce) != publish.packet_id.is_none()
                    || (publish.dup && publish.qos == QoS::AtMostOnce)
                {
                    return Err(EncodeError::InvalidPublishFlags);
                }
                let aliased = v5 && publish.properties.topic_alias.is_some();
                if (publish.topic.is_empty() && !aliased) || check_topic_name(publish.topic.as_bytes()).is_err() {
                    return Err(EncodeError::InvalidTopicName);
                }
            }
            Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
                props(&r.properties, Scope::Packet(packet))?;
                if v5 {
                    check_reason(r.reason, packet)?;
                }
            }
            Packet::Subscribe(s) => {
                props(&s.properties, Scope::Packet(packet))?;
                if s.filters.is_empty() {
                    return Err(EncodeError::EmptyList(packet));
                }
            }
            Packet::SubAck(s) => {
                props(&s.properties, Scope::Packet(packet))?;
                if s.reasons.is_empty() {
                    return Err(EncodeError::EmptyList(packet));
                }
                if v5 {
                    for reason in s.reasons.iter() {
                        check_reason(reason, packet)?;
                    }
                }
            }
            Packet::Unsubscribe(u) => {
                props(&u.properties, Scope::Packet(packet))?;
                if u.filters.is_empty() {
                    return Err(EncodeError::EmptyList(packet));
                }
            }
            Packet::UnsubAck(u) => {
                if v5 {
                    u.properties.check(Scope::Packet(packet))?;
                    if u.reasons.is_empty() {
                        return Err(EncodeError::EmptyList(packet));
                    }
                    for reason in u.reasons.iter() {
                        check_reason(reason, packet)?;
                    }
                }
            }
            Packet::PingReq | Packet::PingResp => {}
            Packet::Disconnect(d) => {
                props(&d.properties, Scope::Packet(packet))?;
                if v5 {
                    check_reason(d.reason, packet)?;
                }
            }
            Packet::Auth(a) => {
                if !v5 {
                    return Err(EncodeError::NotInVersion(packet));
                }
                a.properties.check(Scope::Packet(packet))?;
                check_reason(a.reason, packet)?;
            }
        }
        Ok(())
    }

    fn remaining_len(&self, version: ProtocolVersion) -> usize {
        let v5 = version == ProtocolVersion::V5;
        let block = |p: &Properties| if v5 { p.block_len() } else { 0 };
        let string = |s: &MqttStr| 2 + s.len();
        match self {
            Packet::Connect(c) => {
                let will = c.will.as_ref().map_or(0, |w| block(&w.properties) + string(&w.topic) + 2 + w.payload.len());
                // Protocol name "MQTT", level, flags, keep alive.
                6 + 1
                    + 1
                    + 2
                    + block(&c.properties)
                    + string(&c.client_id)
                    + will
                    + c.username.as_ref().map_or(0, string)
                    + c.password.as_ref().map_or(0, |p| 2 + p.len())
            }
            Packet::ConnAck(a) => 2 + block(&a.properties),
            Packet::Publish(p) => {
                string(&p.topic) + if p.packet_id.is_some() { 2 } else { 0 } + block(&p.properties) + p.payload.len()
            }
            Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubComp(r) | Packet::PubRel(r) => {
                2 + optional_reason_len(v5, r.reason, &r.properties)
            }
            Packet::Subscribe(s) => 2 + block(&s.properties) + s.filters.0.len(),
            Packet::SubAck(s) => 2 + block(&s.properties) + s.reasons.len(),
            Packet::Unsubscribe(u) => 2 + block(&u.properties) + u.filters.0.len(),
            Packet::UnsubAck(u) => 2 + if v5 { u.properties.block_len() + u.reasons.len() } else { 0 },
            Packet::PingReq | Packet::PingResp => 0,
            Packet::Disconnect(d) => optional_reason_len(v5, d.reason, &d.properties),
            Packet::Auth(a) => auth_len(a),
        }
    }

    fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        let v5 = version == ProtocolVersion::V5;
        let block = |p: &Properties, buf: &mut BytesMut| {
            if v5 {
                p.write(buf)
            }
        };
        match self {
            Packet::Connect(c) => {
                put_binary(buf, b"MQTT");
                buf.put_u8(if v5 { 5 } else { 4 });
                let mut flags = u8::from(c.clean_start) << 1;
                if let Some(will) = &c.will {
                    flags |= 0x04 | (will.qos as u8) << 3 | u8::from(will.retain) << 5;
                }
                flags |= u8::from(c.password.is_some()) << 6 | u8::from(c.username.is_some()) << 7;
                buf.put_u8(flags);
                buf.put_u16(c.keep_alive);
                block(&c.properties, buf);
                put_binary(buf, c.client_id.as_bytes());
                if let Some(will) = &c.will {
                    block(&will.properties, buf);
                    put_binary(buf, will.topic.as_bytes());
                    put_binary(buf, &will.payload);
                }
                if let Some(username) = &c.username {
                    put_binary(buf, username.as_bytes());
                }
                if let Some(password) = &c.password {
                    put_binary(buf, password);
                }
            }
            Packet::ConnAck(a) => {
                buf.put_u8(u8::from(a.session_present));
                buf.put_u8(if v5 { a.reason as u8 } else { a.reason.to_v311_connack() });
                block(&a.properties, buf);
            }
            Packet::Publish(p) => {
                put_binary(buf, p.topic.as_bytes());
                if let Some(id) = p.packet_id {
                    buf.put_u16(id.get());
                }
                block(&p.properties, buf);
                buf.put_slice(&p.payload);
            }
            Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubComp(r) | Packet::PubRel(r) => {
                buf.put_u16(r.packet_id.get());
                write_optional_reason(v5, r.reason, &r.properties, buf);
            }
            Packet::Subscribe(s) => {
                buf.put_u16(s.packet_id.get());
                block(&s.properties, buf);
                if v5 {
                    buf.put_slice(&s.filters.0);
                } else {
                    for (filter, options) in s.filters.iter() {
                        put_binary(buf, filter.as_bytes());
                        buf.put_u8(options.qos as u8);
                    }
                }
            }
            Packet::SubAck(s) => {
                buf.put_u16(s.packet_id.get());
                block(&s.properties, buf);
                if v5 {
                    buf.put_slice(&s.reasons.0);
                } else {
                    for reason in s.reasons.iter() {
                        buf.put_u8(reason.to_v311_suback());
                    }
                }
            }
            Packet::Unsubscribe(u) => {
                buf.put_u16(u.packet_id.get());
                block(&u.properties, buf);
                buf.put_slice(&u.filters.0);
            }
            Packet::UnsubAck(u) => {
                buf.put_u16(u.packet_id.get());
                if v5 {
                    u.properties.write(buf);
                    buf.put_slice(&u.reasons.0);
                }
            }
            Packet::PingReq | Packet::PingResp => {}
            Packet::Disconnect(d) => write_optional_reason(v5, d.reason, &d.properties, buf),
            Packet::Auth(a) => {
                if auth_len(a) > 0 {
                    buf.put_u8(a.reason as u8);
                    a.properties.write(buf);
                }
            }
        }
    }
}

/// MQTT 5's short forms: no reason code and properties when the reason is success and there are no properties, no
/// properties when there are none.
fn optional_reason_len(v5: bool, reason: ReasonCode, properties: &Properties) -> usize {
    if !v5 || (reason == ReasonCode::Success && properties.is_empty()) {
        0
    } else if properties.is_empty() {
        1
    } else {
        1 + properties.block_len()
    }
}

fn write_optional_reason(v5: bool, reason: ReasonCode, properties: &Properties, buf: &mut BytesMut) {
    match optional_reason_len(v5, reason, properties) {
        0 => {}
        1 => buf.put_u8(reason as u8),
        _ => {
            buf.put_u8(reason as u8);
            properties.write(buf);
        }
    }
}

/// AUTH has no short form with a reason code alone: both are omitted, or both are present.
fn auth_len(auth: &Auth) -> usize {
    if auth.reason == ReasonCode::Success && auth.properties.is_empty() { 0 } else { 1 + auth.properties.block_len() }
}
