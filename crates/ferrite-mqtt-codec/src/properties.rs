//! MQTT 5 properties (specification section 2.2.2): one struct holding every property, checked against the set
//! each packet allows when decoded and when encoded.
//!
//! The two properties that may repeat, User Property (any packet) and Subscription Identifier (PUBLISH), are kept
//! in their encoded form as one `Bytes` each ([`UserProperties`], [`SubscriptionIds`]): a slice of the received
//! frame when they are contiguous in it (the usual case), one copy of at most the property block otherwise. So
//! decoding never allocates per entry, and a packet full of user properties costs no more memory than its size.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{BufMut, Bytes, BytesMut};

use crate::QoS;
use crate::error::{DecodeError, EncodeError};
use crate::packet::PacketType;
use crate::string::MqttStr;
use crate::wire::{MAX_BINARY_LEN, MAX_VARINT, Reader, put_binary, put_varint, varint_len};

/// Every property identifier of MQTT 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PropertyId {
    PayloadFormatIndicator = 0x01,
    MessageExpiryInterval = 0x02,
    ContentType = 0x03,
    ResponseTopic = 0x08,
    CorrelationData = 0x09,
    SubscriptionIdentifier = 0x0B,
    SessionExpiryInterval = 0x11,
    AssignedClientIdentifier = 0x12,
    ServerKeepAlive = 0x13,
    AuthenticationMethod = 0x15,
    AuthenticationData = 0x16,
    RequestProblemInformation = 0x17,
    WillDelayInterval = 0x18,
    RequestResponseInformation = 0x19,
    ResponseInformation = 0x1A,
    ServerReference = 0x1C,
    ReasonString = 0x1F,
    ReceiveMaximum = 0x21,
    TopicAliasMaximum = 0x22,
    TopicAlias = 0x23,
    MaximumQoS = 0x24,
    RetainAvailable = 0x25,
    UserProperty = 0x26,
    MaximumPacketSize = 0x27,
    WildcardSubscriptionAvailable = 0x28,
    SubscriptionIdentifierAvailable = 0x29,
    SharedSubscriptionAvailable = 0x2A,
}

impl PropertyId {
    fn from_u8(id: u8) -> Option<Self> {
        use PropertyId::*;
        Some(match id {
            0x01 => PayloadFormatIndicator,
            0x02 => MessageExpiryInterval,
            0x03 => ContentType,
            0x08 => ResponseTopic,
            0x09 => CorrelationData,
            0x0B => SubscriptionIdentifier,
            0x11 => SessionExpiryInterval,
            0x12 => AssignedClientIdentifier,
            0x13 => ServerKeepAlive,
            0x15 => AuthenticationMethod,
            0x16 => AuthenticationData,
            0x17 => RequestProblemInformation,
            0x18 => WillDelayInterval,
            0x19 => RequestResponseInformation,
            0x1A => ResponseInformation,
            0x1C => ServerReference,
            0x1F => ReasonString,
            0x21 => ReceiveMaximum,
            0x22 => TopicAliasMaximum,
            0x23 => TopicAlias,
            0x24 => MaximumQoS,
            0x25 => RetainAvailable,
            0x26 => UserProperty,
            0x27 => MaximumPacketSize,
            0x28 => WildcardSubscriptionAvailable,
            0x29 => SubscriptionIdentifierAvailable,
            0x2A => SharedSubscriptionAvailable,
            _ => return None,
        })
    }

    const fn bit(self) -> u64 {
        1 << (self as u8)
    }
}

/// Where a property block sits: a packet's variable header, or the will properties of a CONNECT payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    Packet(PacketType),
    Will,
}

impl Scope {
    fn packet(self) -> PacketType {
        match self {
            Scope::Packet(packet) => packet,
            Scope::Will => PacketType::Connect,
        }
    }

    /// The properties this block may carry (specification section 2.2.2.2), as a bit set of identifiers.
    fn allowed(self) -> u64 {
        use PropertyId::*;
        let set = |ids: &[PropertyId]| ids.iter().fold(UserProperty.bit(), |mask, id| mask | id.bit());
        match self {
            Scope::Will => set(&[
                PayloadFormatIndicator,
                MessageExpiryInterval,
                ContentType,
                ResponseTopic,
                CorrelationData,
                WillDelayInterval,
            ]),
            Scope::Packet(packet) => match packet {
                PacketType::Connect => set(&[
                    SessionExpiryInterval,
                    AuthenticationMethod,
                    AuthenticationData,
                    RequestProblemInformation,
                    RequestResponseInformation,
                    ReceiveMaximum,
                    TopicAliasMaximum,
                    MaximumPacketSize,
                ]),
                PacketType::ConnAck => set(&[
                    SessionExpiryInterval,
                    AssignedClientIdentifier,
                    ServerKeepAlive,
                    AuthenticationMethod,
                    AuthenticationData,
                    ResponseInformation,
                    ServerReference,
                    ReasonString,
                    ReceiveMaximum,
                    TopicAliasMaximum,
                    MaximumQoS,
                    RetainAvailable,
                    MaximumPacketSize,
                    WildcardSubscriptionAvailable,
                    SubscriptionIdentifierAvailable,
                    SharedSubscriptionAvailable,
                ]),
                PacketType::Publish => set(&[
                    PayloadFormatIndicator,
                    MessageExpiryInterval,
                    ContentType,
                    ResponseTopic,
                    CorrelationData,
                    SubscriptionIdentifier,
                    TopicAlias,
                ]),
                PacketType::PubAck
                | PacketType::PubRec
                | PacketType::PubRel
                | PacketType::PubComp
                | PacketType::SubAck
                | PacketType::UnsubAck => set(&[ReasonString]),
                PacketType::Subscribe => set(&[SubscriptionIdentifier]),
                PacketType::Unsubscribe => set(&[]),
                PacketType::Disconnect => set(&[SessionExpiryInterval, ServerReference, ReasonString]),
                PacketType::Auth => set(&[AuthenticationMethod, AuthenticationData, ReasonString]),
                PacketType::PingReq | PacketType::PingResp => 0,
            },
        }
    }
}

/// Payload Format Indicator values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    /// Unspecified bytes (0).
    Unspecified,
    /// UTF-8 encoded character data (1).
    Utf8,
}

/// The MQTT 5 properties of one packet (or of a will): [`PropertyValues`] behind a box that is absent when there
/// are none, which is the common case (and always the case in MQTT 3.1.1). A packet without properties is then
/// small to move, and encoding or decoding it does not look at the 27 fields. Read fields through `Deref`
/// (`publish.properties.topic_alias`); assigning one through `DerefMut` allocates the box.
#[derive(Clone, Default)]
pub struct Properties(Option<Box<PropertyValues>>);

/// What an absent box reads as.
static NO_PROPERTIES: PropertyValues = PropertyValues {
    payload_format_indicator: None,
    message_expiry_interval: None,
    content_type: None,
    response_topic: None,
    correlation_data: None,
    subscription_identifiers: SubscriptionIds(Bytes::new()),
    session_expiry_interval: None,
    assigned_client_identifier: None,
    server_keep_alive: None,
    authentication_method: None,
    authentication_data: None,
    request_problem_information: None,
    will_delay_interval: None,
    request_response_information: None,
    response_information: None,
    server_reference: None,
    reason_string: None,
    receive_maximum: None,
    topic_alias_maximum: None,
    topic_alias: None,
    maximum_qos: None,
    retain_available: None,
    user_properties: UserProperties(Bytes::new()),
    maximum_packet_size: None,
    wildcard_subscription_available: None,
    subscription_identifier_available: None,
    shared_subscription_available: None,
};

impl std::ops::Deref for Properties {
    type Target = PropertyValues;

    fn deref(&self) -> &PropertyValues {
        self.0.as_deref().unwrap_or(&NO_PROPERTIES)
    }
}

impl std::ops::DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut PropertyValues {
        self.0.get_or_insert_with(Box::default)
    }
}

impl From<PropertyValues> for Properties {
    fn from(values: PropertyValues) -> Self {
        if values.present() == 0 { Self(None) } else { Self(Some(Box::new(values))) }
    }
}

impl PartialEq for Properties {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Properties {}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Properties(none)"),
            Some(values) => values.fmt(f),
        }
    }
}

/// The values of all MQTT 5 properties of one packet (or of a will), reached through [`Properties`]. `None`/empty
/// means absent. Which ones a packet may carry is checked on decode ([`DecodeError::PropertyNotAllowed`]) and on
/// encode ([`EncodeError::PropertyNotAllowed`]).
/// Values the specification forbids are unrepresentable or rejected: receive maximum, maximum packet size and topic
/// alias are non-zero types, maximum QoS must be 0 or 1, subscription identifiers lie in 1..=268,435,455.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyValues {
    pub payload_format_indicator: Option<PayloadFormat>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<MqttStr>,
    pub response_topic: Option<MqttStr>,
    pub correlation_data: Option<Bytes>,
    /// Several in a PUBLISH sent to a client, at most one in a SUBSCRIBE.
    pub subscription_identifiers: SubscriptionIds,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<MqttStr>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<MqttStr>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<bool>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<bool>,
    pub response_information: Option<MqttStr>,
    pub server_reference: Option<MqttStr>,
    pub reason_string: Option<MqttStr>,
    pub receive_maximum: Option<NonZeroU16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<NonZeroU16>,
    pub maximum_qos: Option<QoS>,
    pub retain_available: Option<bool>,
    pub user_properties: UserProperties,
    pub maximum_packet_size: Option<NonZeroU32>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifier_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
}

/// User properties (name, value pairs; repeatable, order kept), held in their encoded form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserProperties(Bytes);

impl UserProperties {
    /// Encodes the pairs (this copies them once).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a MqttStr, &'a MqttStr)>) -> Self {
        let mut buf = BytesMut::new();
        for (name, value) in pairs {
            buf.put_u8(PropertyId::UserProperty as u8);
            put_binary(&mut buf, name.as_bytes());
            put_binary(&mut buf, value.as_bytes());
        }
        Self(buf.freeze())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs, in order; each string is a slice of the backing bytes.
    pub fn iter(&self) -> impl Iterator<Item = (MqttStr, MqttStr)> + '_ {
        let mut reader = Reader::new(self.0.clone(), 0, self.0.len());
        std::iter::from_fn(move || {
            if reader.is_empty() {
                return None;
            }
            // Validated when built or decoded, so these reads cannot fail.
            let _id = reader.u8().ok()?;
            let name = reader.string().ok()?;
            let value = reader.string().ok()?;
            Some((name, value))
        })
    }

    /// The encoded entries (identifier, name, value for each), as written on the wire.
    pub fn encoded(&self) -> &Bytes {
        &self.0
    }
}

/// Subscription identifiers (1..=268,435,455), held in their encoded form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionIds(Bytes);

impl SubscriptionIds {
    /// Encodes the identifiers; each must lie in 1..=268,435,455.
    pub fn from_ids(ids: impl IntoIterator<Item = u32>) -> Result<Self, EncodeError> {
        let mut buf = BytesMut::new();
        for id in ids {
            put_subscription_id(&mut buf, id)?;
        }
        Ok(Self(buf.freeze()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let mut reader = Reader::new(self.0.clone(), 0, self.0.len());
        std::iter::from_fn(move || {
            if reader.is_empty() {
                return None;
            }
            let _id = reader.u8().ok()?;
            reader.varint().ok()
        })
    }

    pub fn encoded(&self) -> &Bytes {
        &self.0
    }
}

/// Writes one Subscription Identifier property (identifier byte and value).
pub(crate) fn put_subscription_id(buf: &mut impl BufMut, id: u32) -> Result<(), EncodeError> {
    if id == 0 || id > MAX_VARINT {
        return Err(EncodeError::InvalidSubscriptionId(id));
    }
    buf.put_u8(PropertyId::SubscriptionIdentifier as u8);
    put_varint(buf, id as usize);
    Ok(())
}

/// The encoded size of one Subscription Identifier property.
pub(crate) fn subscription_id_len(id: u32) -> usize {
    1 + varint_len(id as usize)
}

/// Collects the entries of a repeatable property: a slice of the block while they are contiguous, a copy of them
/// once another property interrupts the run.
#[derive(Default)]
struct Run {
    span: Option<(usize, usize)>,
    copied: Option<BytesMut>,
}

impl Run {
    fn push(&mut self, frame: &Bytes, start: usize, end: usize) {
        if let Some(copied) = &mut self.copied {
            copied.extend_from_slice(&frame[start..end]);
            return;
        }
        match &mut self.span {
            None => self.span = Some((start, end)),
            Some((_, last)) if *last == start => *last = end,
            Some((first, last)) => {
                let mut copied = BytesMut::with_capacity(*last - *first + (end - start));
                copied.extend_from_slice(&frame[*first..*last]);
                copied.extend_from_slice(&frame[start..end]);
                self.copied = Some(copied);
            }
        }
    }

    fn finish(self, frame: &Bytes) -> Bytes {
        match (self.copied, self.span) {
            (Some(copied), _) => copied.freeze(),
            (None, Some((start, end))) => frame.slice(start..end),
            (None, None) => Bytes::new(),
        }
    }
}

fn flag(reader: &mut Reader, id: PropertyId) -> Result<bool, DecodeError> {
    match reader.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidPropertyValue(id)),
    }
}

impl Properties {
    /// Reads a property block (its variable byte integer length, then the properties) allowed in `scope`.
    pub(crate) fn decode(reader: &mut Reader, scope: Scope) -> Result<Self, DecodeError> {
        let len = reader.varint()? as usize;
        if len == 0 {
            return Ok(Properties(None));
        }
        let mut block = reader.sub(len)?;
        let mut props = PropertyValues::default();
        let allowed = scope.allowed();
        let mut seen: u64 = 0;
        let mut users = Run::default();
        let mut sub_ids = Run::default();
        while !block.is_empty() {
            let start = block.position();
            let raw = block.u8()?;
            let id = PropertyId::from_u8(raw).ok_or(DecodeError::UnknownProperty(raw))?;
            if allowed & id.bit() == 0 {
                return Err(DecodeError::PropertyNotAllowed { property: id, packet: scope.packet() });
            }
            let repeatable = id == PropertyId::UserProperty
                || (id == PropertyId::SubscriptionIdentifier && scope == Scope::Packet(PacketType::Publish));
            if seen & id.bit() != 0 && !repeatable {
                return Err(DecodeError::DuplicateProperty(id));
            }
            seen |= id.bit();
            props.read_value(&mut block, id)?;
            let end = block.position();
            match id {
                PropertyId::UserProperty => users.push(block.frame(), start, end),
                PropertyId::SubscriptionIdentifier => sub_ids.push(block.frame(), start, end),
                _ => {}
            }
        }
        props.user_properties = UserProperties(users.finish(block.frame()));
        props.subscription_identifiers = SubscriptionIds(sub_ids.finish(block.frame()));
        Ok(Properties(Some(Box::new(props))))
    }

    /// Whether no property is present.
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|values| values.present() == 0)
    }

    /// Checks that every present property is allowed in `scope` and has a value the specification allows.
    pub(crate) fn check(&self, scope: Scope) -> Result<(), EncodeError> {
        match &self.0 {
            None => Ok(()),
            Some(values) => values.check(scope),
        }
    }

    /// The size of the properties (without their length prefix).
    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |values| values.len())
    }

    /// The size of the block on the wire: length prefix and properties.
    pub(crate) fn block_len(&self) -> usize {
        let len = self.len();
        varint_len(len) + len
    }

    /// Writes the block (length prefix and properties); [`Properties::check`] has passed.
    pub(crate) fn write(&self, buf: &mut BytesMut) {
        match &self.0 {
            None => buf.put_u8(0),
            Some(values) => {
                put_varint(buf, values.len());
                values.write_entries(buf);
            }
        }
    }

    /// Writes the properties without the length prefix.
    pub(crate) fn write_entries(&self, buf: &mut BytesMut) {
        if let Some(values) = &self.0 {
            values.write_entries(buf);
        }
    }
}

impl PropertyValues {
    fn read_value(&mut self, r: &mut Reader, id: PropertyId) -> Result<(), DecodeError> {
        use PropertyId::*;
        let invalid = DecodeError::InvalidPropertyValue(id);
        match id {
            PayloadFormatIndicator => {
                self.payload_format_indicator =
                    Some(if flag(r, id)? { PayloadFormat::Utf8 } else { PayloadFormat::Unspecified })
            }
            MessageExpiryInterval => self.message_expiry_interval = Some(r.u32()?),
            ContentType => self.content_type = Some(r.string()?),
            ResponseTopic => {
                let topic = r.string()?;
                // A topic name: wildcards are a protocol error, and so is an empty one.
                if topic.is_empty() || crate::string::check_topic_name(topic.as_bytes()).is_err() {
                    return Err(invalid);
                }
                self.response_topic = Some(topic)
            }
            CorrelationData => self.correlation_data = Some(r.binary()?),
            SubscriptionIdentifier => {
                if r.varint()? == 0 {
                    return Err(invalid);
                }
            }
            SessionExpiryInterval => self.session_expiry_interval = Some(r.u32()?),
            AssignedClientIdentifier => self.assigned_client_identifier = Some(r.string()?),
            ServerKeepAlive => self.server_keep_alive = Some(r.u16()?),
            AuthenticationMethod => self.authentication_method = Some(r.string()?),
            AuthenticationData => self.authentication_data = Some(r.binary()?),
            RequestProblemInformation => self.request_problem_information = Some(flag(r, id)?),
            WillDelayInterval => self.will_delay_interval = Some(r.u32()?),
            RequestResponseInformation => self.request_response_information = Some(flag(r, id)?),
            ResponseInformation => self.response_information = Some(r.string()?),
            ServerReference => self.server_reference = Some(r.string()?),
            ReasonString => self.reason_string = Some(r.string()?),
            ReceiveMaximum => self.receive_maximum = Some(NonZeroU16::new(r.u16()?).ok_or(invalid)?),
            TopicAliasMaximum => self.topic_alias_maximum = Some(r.u16()?),
            TopicAlias => self.topic_alias = Some(NonZeroU16::new(r.u16()?).ok_or(invalid)?),
            MaximumQoS => {
                self.maximum_qos = Some(match r.u8()? {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => return Err(invalid),
                })
            }
            RetainAvailable => self.retain_available = Some(flag(r, id)?),
            UserProperty => {
                r.string()?;
                r.string()?;
            }
            MaximumPacketSize => self.maximum_packet_size = Some(NonZeroU32::new(r.u32()?).ok_or(invalid)?),
            WildcardSubscriptionAvailable => self.wildcard_subscription_available = Some(flag(r, id)?),
            SubscriptionIdentifierAvailable => self.subscription_identifier_available = Some(flag(r, id)?),
            SharedSubscriptionAvailable => self.shared_subscription_available = Some(flag(r, id)?),
        }
        Ok(())
    }

    /// The identifiers of the properties that are present, each once.
    fn present(&self) -> u64 {
        use PropertyId::*;
        let mut mask = 0;
        let mut mark = |present: bool, id: PropertyId| {
            if present {
                mask |= id.bit();
            }
        };
        mark(self.payload_format_indicator.is_some(), PayloadFormatIndicator);
        mark(self.message_expiry_interval.is_some(), MessageExpiryInterval);
        mark(self.content_type.is_some(), ContentType);
        mark(self.response_topic.is_some(), ResponseTopic);
        mark(self.correlation_data.is_some(), CorrelationData);
        mark(!self.subscription_identifiers.is_empty(), SubscriptionIdentifier);
        mark(self.session_expiry_interval.is_some(), SessionExpiryInterval);
        mark(self.assigned_client_identifier.is_some(), AssignedClientIdentifier);
        mark(self.server_keep_alive.is_some(), ServerKeepAlive);
        mark(self.authentication_method.is_some(), AuthenticationMethod);
        mark(self.authentication_data.is_some(), AuthenticationData);
        mark(self.request_problem_information.is_some(), RequestProblemInformation);
        mark(self.will_delay_interval.is_some(), WillDelayInterval);
        mark(self.request_response_information.is_some(), RequestResponseInformation);
        mark(self.response_information.is_some(), ResponseInformation);
        mark(self.server_reference.is_some(), ServerReference);
        mark(self.reason_string.is_some(), ReasonString);
        mark(self.receive_maximum.is_some(), ReceiveMaximum);
        mark(self.topic_alias_maximum.is_some(), TopicAliasMaximum);
        mark(self.topic_alias.is_some(), TopicAlias);
        mark(self.maximum_qos.is_some(), MaximumQoS);
        mark(self.retain_available.is_some(), RetainAvailable);
        mark(!self.user_properties.is_empty(), UserProperty);
        mark(self.maximum_packet_size.is_some(), MaximumPacketSize);
        mark(self.wildcard_subscription_available.is_some(), WildcardSubscriptionAvailable);
        mark(self.subscription_identifier_available.is_some(), SubscriptionIdentifierAvailable);
        mark(self.shared_subscription_available.is_some(), SharedSubscriptionAvailable);
        mask
    }

    /// Whether no property is present.
    pub fn is_empty(&self) -> bool {
        self.present() == 0
    }

    /// Checks that every present property is allowed in `scope` and has a value the specification allows.
    fn check(&self, scope: Scope) -> Result<(), EncodeError> {
        let extra = self.present() & !scope.allowed();
        if extra != 0 {
            let property = PropertyId::from_u8(extra.trailing_zeros() as u8).expect("a bit of a known property");
            return Err(EncodeError::PropertyNotAllowed { property, packet: scope.packet() });
        }
        if self.maximum_qos == Some(QoS::ExactlyOnce) {
            return Err(EncodeError::InvalidPropertyValue(PropertyId::MaximumQoS));
        }
        if scope == Scope::Packet(PacketType::Subscribe) && self.subscription_identifiers.iter().nth(1).is_some() {
            return Err(EncodeError::InvalidPropertyValue(PropertyId::SubscriptionIdentifier));
        }
        if let Some(topic) = &self.response_topic
            && (topic.is_empty() || crate::string::check_topic_name(topic.as_bytes()).is_err())
        {
            return Err(EncodeError::InvalidPropertyValue(PropertyId::ResponseTopic));
        }
        for data in [&self.correlation_data, &self.authentication_data].into_iter().flatten() {
            if data.len() > MAX_BINARY_LEN {
                return Err(EncodeError::BinaryTooLong(data.len()));
            }
        }
        Ok(())
    }

    /// The size of the properties (without their length prefix).
    fn len(&self) -> usize {
        let string = |s: &Option<MqttStr>| s.as_ref().map_or(0, |s| 3 + s.len());
        let binary = |b: &Option<Bytes>| b.as_ref().map_or(0, |b| 3 + b.len());
        let some = |present: bool, size: usize| if present { 1 + size } else { 0 };
        some(self.payload_format_indicator.is_some(), 1)
            + some(self.message_expiry_interval.is_some(), 4)
            + string(&self.content_type)
            + string(&self.response_topic)
            + binary(&self.correlation_data)
            + self.subscription_identifiers.0.len()
            + some(self.session_expiry_interval.is_some(), 4)
            + string(&self.assigned_client_identifier)
            + some(self.server_keep_alive.is_some(), 2)
            + string(&self.authentication_method)
            + binary(&self.authentication_data)
            + some(self.request_problem_information.is_some(), 1)
            + some(self.will_delay_interval.is_some(), 4)
            + some(self.request_response_information.is_some(), 1)
            + string(&self.response_information)
            + string(&self.server_reference)
            + string(&self.reason_string)
            + some(self.receive_maximum.is_some(), 2)
            + some(self.topic_alias_maximum.is_some(), 2)
            + some(self.topic_alias.is_some(), 2)
            + some(self.maximum_qos.is_some(), 1)
            + some(self.retain_available.is_some(), 1)
            + self.user_properties.0.len()
            + some(self.maximum_packet_size.is_some(), 4)
            + some(self.wildcard_subscription_available.is_some(), 1)
            + some(self.subscription_identifier_available.is_some(), 1)
            + some(self.shared_subscription_available.is_some(), 1)
    }

    /// Writes the properties without the length prefix.
    fn write_entries(&self, buf: &mut BytesMut) {
        use PropertyId::*;
        let byte = |buf: &mut BytesMut, id: PropertyId, v: Option<u8>| {
            if let Some(v) = v {
                buf.put_u8(id as u8);
                buf.put_u8(v);
            }
        };
        let two = |buf: &mut BytesMut, id: PropertyId, v: Option<u16>| {
            if let Some(v) = v {
                buf.put_u8(id as u8);
                buf.put_u16(v);
            }
        };
        let four = |buf: &mut BytesMut, id: PropertyId, v: Option<u32>| {
            if let Some(v) = v {
                buf.put_u8(id as u8);
                buf.put_u32(v);
            }
        };
        let data = |buf: &mut BytesMut, id: PropertyId, v: Option<&[u8]>| {
            if let Some(v) = v {
                buf.put_u8(id as u8);
                put_binary(buf, v);
            }
        };
        fn str(s: &Option<MqttStr>) -> Option<&[u8]> {
            s.as_ref().map(MqttStr::as_bytes)
        }
        byte(buf, PayloadFormatIndicator, self.payload_format_indicator.map(|f| f as u8));
        four(buf, MessageExpiryInterval, self.message_expiry_interval);
        data(buf, ContentType, str(&self.content_type));
        data(buf, ResponseTopic, str(&self.response_topic));
        data(buf, CorrelationData, self.correlation_data.as_deref());
        buf.put_slice(&self.subscription_identifiers.0);
        four(buf, SessionExpiryInterval, self.session_expiry_interval);
        data(buf, AssignedClientIdentifier, str(&self.assigned_client_identifier));
        two(buf, ServerKeepAlive, self.server_keep_alive);
        data(buf, AuthenticationMethod, str(&self.authentication_method));
        data(buf, AuthenticationData, self.authentication_data.as_deref());
        byte(buf, RequestProblemInformation, self.request_problem_information.map(u8::from));
        four(buf, WillDelayInterval, self.will_delay_interval);
        byte(buf, RequestResponseInformation, self.request_response_information.map(u8::from));
        data(buf, ResponseInformation, str(&self.response_information));
        data(buf, ServerReference, str(&self.server_reference));
        data(buf, ReasonString, str(&self.reason_string));
        two(buf, ReceiveMaximum, self.receive_maximum.map(NonZeroU16::get));
        two(buf, TopicAliasMaximum, self.topic_alias_maximum);
        two(buf, TopicAlias, self.topic_alias.map(NonZeroU16::get));
        byte(buf, MaximumQoS, self.maximum_qos.map(|q| q as u8));
        byte(buf, RetainAvailable, self.retain_available.map(u8::from));
        buf.put_slice(&self.user_properties.0);
        four(buf, MaximumPacketSize, self.maximum_packet_size.map(NonZeroU32::get));
        byte(buf, WildcardSubscriptionAvailable, self.wildcard_subscription_available.map(u8::from));
        byte(buf, SubscriptionIdentifierAvailable, self.subscription_identifier_available.map(u8::from));
        byte(buf, SharedSubscriptionAvailable, self.shared_subscription_available.map(u8::from));
    }
}
