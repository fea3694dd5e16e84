//! Decoding and encoding errors: one variant per kind of protocol violation, each mapped to the MQTT 5 reason code
//! a broker sends (or would send) before closing the connection.

use crate::packet::PacketType;
use crate::properties::PropertyId;
use crate::reason::ReasonCode;

/// Why received bytes are not a valid MQTT packet. After any of these the connection must be closed (in MQTT 5
/// after a DISCONNECT with [`DecodeError::reason_code`] where the packet type allows it): the stream cannot be
/// resynchronised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed variable byte integer (more than 4 bytes)")]
    MalformedVarInt,
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge { size: u64, max: u32 },
    #[error("reserved packet type {0}")]
    ReservedPacketType(u8),
    #[error("invalid fixed header flags {flags:#06b} for {packet:?}")]
    InvalidHeaderFlags { packet: PacketType, flags: u8 },
    #[error("QoS 3 is reserved")]
    InvalidQoS,
    #[error("DUP set on a QoS 0 PUBLISH")]
    DupWithQoS0,
    #[error("a field runs past the end of the packet")]
    UnexpectedEnd,
    #[error("{0} unexpected bytes after the end of the packet's fields")]
    TrailingBytes(usize),
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    #[error("string contains U+0000")]
    NullCharacter,
    #[error("string of {0} bytes exceeds 65,535")]
    StringTooLong(usize),
    #[error("the first packet is not a CONNECT")]
    FirstPacketNotConnect,
    #[error("protocol name is neither \"MQTT\" nor \"MQIsdp\"")]
    InvalidProtocolName,
    #[error("unsupported protocol level {0} (only 4 = MQTT 3.1.1 and 5 = MQTT 5.0)")]
    UnsupportedProtocolVersion(u8),
    #[error("CONNECT's reserved flag is set")]
    ReservedConnectFlag,
    #[error("will QoS or will retain set without a will, or will QoS 3")]
    InvalidWillFlags,
    #[error("password without a user name (MQTT 3.1.1)")]
    PasswordWithoutUsername,
    #[error("CONNACK's reserved acknowledge flags are set")]
    ReservedConnAckFlags,
    #[error("CONNACK has session present with a failure code")]
    SessionPresentWithError,
    #[error("topic name contains a wildcard")]
    WildcardInTopicName,
    #[error("empty topic name without a topic alias")]
    EmptyTopic,
    #[error("invalid topic filter")]
    InvalidTopicFilter,
    #[error("invalid subscription options {0:#010b}")]
    InvalidSubscriptionOptions(u8),
    #[error("no-local set on a shared subscription")]
    NoLocalOnSharedSubscription,
    #[error("{0:?} has no topic filters or no reason codes")]
    EmptyList(PacketType),
    #[error("packet identifier 0")]
    ZeroPacketId,
    #[error("reason code {code:#04x} is not allowed in {packet:?}")]
    InvalidReasonCode { packet: PacketType, code: u8 },
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u8),
    #[error("property {0:?} appears more than once")]
    DuplicateProperty(PropertyId),
    #[error("property {property:?} is not allowed in {packet:?}")]
    PropertyNotAllowed { property: PropertyId, packet: PacketType },
    #[error("invalid value for property {0:?}")]
    InvalidPropertyValue(PropertyId),
}

impl DecodeError {
    /// The MQTT 5 reason code for this error (CONNACK or DISCONNECT): 0x95 packet too large, 0x84 unsupported
    /// protocol version, 0x82 protocol error for violations of a rule, 0x81 malformed packet for the rest.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            UnsupportedProtocolVersion(_) | InvalidProtocolName => ReasonCode::UnsupportedProtocolVersion,
            DuplicateProperty(_)
            | PropertyNotAllowed { .. }
            | InvalidPropertyValue(_)
            | ZeroPacketId
            | EmptyList(_)
            | NoLocalOnSharedSubscription
            | PasswordWithoutUsername
            | FirstPacketNotConnect => ReasonCode::ProtocolError,
            WildcardInTopicName | EmptyTopic => ReasonCode::TopicNameInvalid,
            InvalidTopicFilter => ReasonCode::TopicFilterInvalid,
            _ => ReasonCode::MalformedPacket,
        }
    }
}

/// Why a packet cannot be encoded: a value the wire cannot carry, or a combination the specification forbids (the
/// encoder never produces bytes that this crate's decoder would reject).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("packet of remaining length {0} exceeds 268,435,455")]
    PacketTooLarge(usize),
    #[error("binary value of {0} bytes exceeds 65,535")]
    BinaryTooLong(usize),
    #[error("{0:?} does not exist in MQTT 3.1.1")]
    NotInVersion(PacketType),
    #[error("property {property:?} is not allowed in {packet:?}")]
    PropertyNotAllowed { property: PropertyId, packet: PacketType },
    #[error("invalid value for property {0:?}")]
    InvalidPropertyValue(PropertyId),
    #[error("reason code {code:?} is not allowed in {packet:?}")]
    InvalidReasonCode { packet: PacketType, code: ReasonCode },
    #[error("QoS and packet identifier disagree (QoS 0 has none, QoS 1 and 2 need one) or DUP set at QoS 0")]
    InvalidPublishFlags,
    #[error("invalid topic name (wildcard, or empty without a topic alias)")]
    InvalidTopicName,
    #[error("{0:?} needs at least one topic filter or reason code")]
    EmptyList(PacketType),
    #[error("password without a user name cannot be sent in MQTT 3.1.1")]
    PasswordWithoutUsername,
    #[error("session present with a failure code")]
    SessionPresentWithError,
    #[error("subscription identifier {0} is outside 1..=268,435,455")]
    InvalidSubscriptionId(u32),
}
