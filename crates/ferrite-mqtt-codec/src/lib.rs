//! Ferrite's MQTT wire codec: every packet of MQTT 3.1.1 and MQTT 5.0, written from the OASIS specifications over
//! `bytes`, for the broker engine of issue 13 (and any client that wants it).
//!
//! # Decoding
//! [`decode`] takes the connection's read buffer and returns `Ok(None)` until a whole packet is there; it neither
//! copies nor allocates the partial input, so a caller can keep reading into the same buffer. The fixed header is
//! checked as soon as its bytes arrive ([`peek_header`]): a reserved type, wrong flags, QoS 3, a remaining length
//! longer than four bytes, or a packet larger than the maximum packet size are errors before the body is read,
//! so a client cannot make the broker buffer 256 MB by announcing it. A complete packet is split off the buffer
//! and frozen; topics, strings, binary data and payloads are `Bytes` slices of that frame (no copy), and the
//! repeatable parts (user properties, subscription identifiers, SUBSCRIBE and UNSUBSCRIBE filters, SUBACK and
//! UNSUBACK reason codes) are kept encoded and iterated on demand, so decoding allocates nothing per entry: the
//! only allocations are the frame's shared header when the read buffer is first split, one fixed-size box per
//! non-empty property block (and for a CONNECT the box of the packet), and, only when a client interleaves user
//! properties with other properties, one copy of them no larger than the packet. Every rule a receiver MUST
//! enforce is a typed [`DecodeError`], which also names the MQTT 5 reason code to disconnect with
//! ([`DecodeError::reason_code`]).
//!
//! The broker learns a connection's version from its CONNECT: [`peek_connect_version`] reads the protocol name and
//! level from the first bytes, before the rest of the CONNECT has arrived (so an unsupported level can be refused
//! with the right CONNACK), and a CONNECT is always decoded in its own version.
//!
//! What the codec does not check, because it needs connection or session state, is left to the broker: a
//! second CONNECT, a client sending subscription identifiers in a PUBLISH, topic aliases above the negotiated
//! maximum, session expiry raised in DISCONNECT after a zero one, and the optional check (MAY) that a payload
//! marked as UTF-8 is UTF-8.
//!
//! # Encoding
//! [`Packet::encode`] checks what the types cannot (properties allowed in the packet, reason codes allowed in it,
//! QoS and packet identifier agreeing, topic names) and writes exactly [`Packet::encoded_len`] bytes, so the bytes
//! it produces always decode again. For fan-out, [`SharedPublish`] encodes a message's topic, properties and
//! payload once and [`SharedPublish::frame`] adds each subscriber's fixed header, packet identifier, topic alias,
//! subscription identifiers and remaining expiry in a few inline bytes: see the [`fanout`] module for the layout
//! and how a frame feeds a vectored write.

pub mod error;
pub mod fanout;
pub mod packet;
pub mod properties;
pub mod reason;
pub mod string;
mod wire;

use bytes::BytesMut;

pub use error::{DecodeError, EncodeError};
pub use fanout::{Delivery, PublishFrame, SharedPublish, TopicAliasUse};
pub use packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, PacketType, PubResponse, Publish, ReasonCodes, RetainHandling, SubAck,
    Subscribe, SubscribeFilters, SubscriptionOptions, UnsubAck, Unsubscribe, UnsubscribeFilters, Will,
};
pub use properties::{PayloadFormat, Properties, PropertyId, PropertyValues, SubscriptionIds, UserProperties};
pub use reason::ReasonCode;
pub use string::{MqttStr, SHARED_PREFIX, check_topic_filter};
pub use wire::{MAX_BINARY_LEN, MAX_VARINT};

use wire::{Reader, VarInt, read_varint};

/// The largest packet either version can express: a 5-byte fixed header and the largest remaining length.
pub const MAX_PACKET_SIZE: u32 = 1 + 4 + MAX_VARINT;

/// The protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of a CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }
}

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for its two-bit value; 3 is reserved.
    pub fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A checked fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    pub packet_type: PacketType,
    /// The low nibble of the first byte.
    pub flags: u8,
    pub remaining_length: u32,
    /// First byte and remaining-length bytes (2..=5).
    pub header_len: u8,
}

impl FixedHeader {
    /// The whole packet's size.
    pub fn frame_len(&self) -> usize {
        usize::from(self.header_len) + self.remaining_length as usize
    }
}

/// Reads and checks the fixed header at the start of `buf`: `Ok(None)` if its bytes have not all arrived. The
/// type and flags are checked from the first byte alone, the size as soon as the remaining length is complete.
/// `max_packet_size` bounds the whole packet, fixed header included (MQTT 5's definition).
pub fn peek_header(
    buf: &[u8],
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    let packet_type = PacketType::from_nibble(first >> 4, version)?;
    let flags = first & 0x0F;
    if packet_type == PacketType::Publish {
        let qos = QoS::from_bits((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
        if qos == QoS::AtMostOnce && flags & 0b1000 != 0 {
            return Err(DecodeError::DupWithQoS0);
        }
    } else if flags != packet_type_flags(packet_type) {
        return Err(DecodeError::InvalidHeaderFlags { packet: packet_type, flags });
    }
    let (remaining_length, len_bytes) = match read_varint(&buf[1..])? {
        VarInt::Value(value, len) => (value, len),
        VarInt::Incomplete => return Ok(None),
    };
    let size = 1 + len_bytes as u64 + u64::from(remaining_length);
    if size > u64::from(max_packet_size) {
        return Err(DecodeError::PacketTooLarge { size, max: max_packet_size });
    }
    Ok(Some(FixedHeader { packet_type, flags, remaining_length, header_len: 1 + len_bytes as u8 }))
}

fn packet_type_flags(packet: PacketType) -> u8 {
    match packet {
        PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
        _ => 0,
    }
}

/// Decodes the packet at the start of `buf` and removes its bytes; `Ok(None)` (and `buf` untouched) while the
/// packet is incomplete. After an error the connection cannot continue (the bytes of the bad packet may or may
/// not have been removed).
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = peek_header(buf, version, max_packet_size)? else { return Ok(None) };
    let frame_len = header.frame_len();
    if buf.len() < frame_len {
        return Ok(None);
    }
    let frame = buf.split_to(frame_len).freeze();
    let mut reader = Reader::new(frame, usize::from(header.header_len), frame_len);
    packet::decode_body(header.packet_type, header.flags, &mut reader, version).map(Some)
}

/// The protocol version a connection's first packet, a CONNECT, announces: `Ok(None)` until the protocol name and
/// level have arrived. Errors: the first packet is not a CONNECT, the protocol name is not MQTT's, or the level is
/// not 4 or 5 ([`DecodeError::UnsupportedProtocolVersion`], which a broker answers with CONNACK 0x01 in 3.1.1
/// form or 0x84 in MQTT 5 form, then closes).
pub fn peek_connect_version(buf: &[u8]) -> Result<Option<ProtocolVersion>, DecodeError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    if first != (PacketType::Connect as u8) << 4 {
        return Err(DecodeError::FirstPacketNotConnect);
    }
    let len_bytes = match read_varint(&buf[1..])? {
        VarInt::Value(_, len) => len,
        VarInt::Incomplete => return Ok(None),
    };
    let rest = &buf[1 + len_bytes..];
    let Some(name_len) = rest.get(..2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))) else {
        return Ok(None);
    };
    if name_len > 6 {
        return Err(DecodeError::InvalidProtocolName);
    }
    let Some(&level) = rest.get(2 + name_len) else {
        // The name may already be wrong.
        let partial = &rest[2..];
        if !b"MQTT".starts_with(partial) && !b"MQIsdp".starts_with(partial) {
            return Err(DecodeError::InvalidProtocolName);
        }
        return Ok(None);
    };
    packet::protocol_version(&rest[2..2 + name_len], level).map(Some)
}

/// Decodes a buffer that holds exactly one whole packet (a packet kept whole, for example in a store); bytes after
/// the packet are an error. (A WebSocket message may hold several packets or part of one: use [`decode`].)
pub fn decode_frame(
    frame: bytes::Bytes,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Packet, DecodeError> {
    let header = peek_header(&frame, version, max_packet_size)?.ok_or(DecodeError::UnexpectedEnd)?;
    let frame_len = header.frame_len();
    if frame.len() < frame_len {
        return Err(DecodeError::UnexpectedEnd);
    }
    if frame.len() > frame_len {
        return Err(DecodeError::TrailingBytes(frame.len() - frame_len));
    }
    let mut reader = Reader::new(frame, usize::from(header.header_len), frame_len);
    packet::decode_body(header.packet_type, header.flags, &mut reader, version)
}
