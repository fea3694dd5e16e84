//! One PUBLISH encoded once and delivered to many subscribers.
//!
//! A PUBLISH on the wire is
//!
//! ```text
//! [type|DUP|QoS|RETAIN] [remaining length] [topic length][topic] [packet id]? [property length][properties]? [payload]
//! ```
//!
//! Per subscriber, only the flags, the packet identifier, and (MQTT 5) the topic alias, the subscription
//! identifiers and the remaining message expiry differ, and with them the two lengths. So [`SharedPublish`] encodes
//! the parts that are the same for everyone once (the length-prefixed topic, the other properties, and the payload,
//! which stays the received `Bytes`), and [`SharedPublish::frame`] builds a [`PublishFrame`]: two small inline
//! per-subscriber pieces (at most 5 bytes of fixed header; the packet id, property length and per-subscriber
//! properties) around reference-counted shared chunks. A frame costs one atomic increment and no allocation (unless
//! a subscriber has more subscription identifiers than fit inline). It is a [`bytes::Buf`] whose
//! `chunks_vectored` yields the five pieces for a vectored socket write (`write_all_buf`, `write_vectored`), or it
//! can be copied into a connection's output buffer with [`PublishFrame::write_to`] when batching small messages is
//! cheaper than a vectored write.

use std::io::IoSlice;
use std::num::NonZeroU16;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::EncodeError;
use crate::packet::{PacketType, Publish};
use crate::properties::{Properties, PropertyId, Scope, put_subscription_id, subscription_id_len};
use crate::string::{MqttStr, check_topic_name};
use crate::wire::{MAX_VARINT, put_binary, varint_into, varint_len};
use crate::{ProtocolVersion, QoS};

/// The per-subscriber variable header bytes kept inline in a frame: packet id (2), property length (up to 4),
/// message expiry (5), topic alias (3) and room for at least three subscription identifiers of the largest size
/// (5 each). More identifiers than fit go to a heap buffer.
const MID_INLINE: usize = 32;

/// The length-prefixed empty topic sent with an already established topic alias.
static EMPTY_TOPIC: [u8; 2] = [0, 0];

/// How a delivery uses an MQTT 5 topic alias (the broker keeps each connection's alias table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TopicAliasUse {
    /// No alias: the topic is sent.
    #[default]
    None,
    /// Send the topic and the alias, establishing it for this connection.
    Establish(NonZeroU16),
    /// Send an empty topic and the alias established earlier.
    Reuse(NonZeroU16),
}

/// What differs between the deliveries of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivery<'a> {
    pub qos: QoS,
    /// Present exactly when `qos` is above 0.
    pub packet_id: Option<NonZeroU16>,
    pub dup: bool,
    pub retain: bool,
    /// MQTT 5 only, like the two fields below; ignored for a 3.1.1 message.
    pub topic_alias: TopicAliasUse,
    /// The identifiers of the receiver's subscriptions that matched (1..=268,435,455 each).
    pub subscription_ids: &'a [u32],
    /// The message's remaining lifetime in seconds, if it was published with one.
    pub message_expiry_interval: Option<u32>,
}

struct Shared {
    version: ProtocolVersion,
    /// Two-byte length and the topic name.
    topic: Bytes,
    /// MQTT 5: the encoded properties shared by every delivery (all but alias, subscription ids, expiry).
    properties: Bytes,
    payload: Bytes,
}

/// A PUBLISH's topic, shared properties and payload, encoded once for one protocol version (a broker keeps one
/// per version its subscribers speak). Cloning is a reference-count increment.
#[derive(Clone)]
pub struct SharedPublish(Arc<Shared>);

impl SharedPublish {
    /// Encodes the shared parts. `properties` must be allowed in a PUBLISH; its topic alias, subscription
    /// identifiers and message expiry are ignored, as they are given per [`Delivery`]. For MQTT 3.1.1 all
    /// properties are ignored. The payload is not copied.
    pub fn new(
        version: ProtocolVersion,
        topic: &MqttStr,
        properties: &Properties,
        payload: Bytes,
    ) -> Result<Self, EncodeError> {
        if topic.is_empty() || check_topic_name(topic.as_bytes()).is_err() {
            return Err(EncodeError::InvalidTopicName);
        }
        let mut topic_chunk = BytesMut::with_capacity(2 + topic.len());
        put_binary(&mut topic_chunk, topic.as_bytes());
        let properties = match version {
            ProtocolVersion::V311 => Bytes::new(),
            ProtocolVersion::V5 => {
                properties.check(Scope::Packet(PacketType::Publish))?;
                let mut common = properties.clone();
                if !common.is_empty() {
                    common.topic_alias = None;
                    common.subscription_identifiers = Default::default();
                    common.message_expiry_interval = None;
                }
                let mut buf = BytesMut::with_capacity(common.len());
                common.write_entries(&mut buf);
                buf.freeze()
            }
        };
        Ok(Self(Arc::new(Shared { version, topic: topic_chunk.freeze(), properties, payload })))
    }

    /// The shared parts of a received PUBLISH (whose topic alias, if any, the caller has already resolved into
    /// its topic).
    pub fn from_publish(version: ProtocolVersion, publish: &Publish) -> Result<Self, EncodeError> {
        Self::new(version, &publish.topic, &publish.properties, publish.payload.clone())
    }

    pub fn version(&self) -> ProtocolVersion {
        self.0.version
    }

    /// The frame for one delivery.
    pub fn frame(&self, delivery: &Delivery<'_>) -> Result<PublishFrame, EncodeError> {
        let shared = &self.0;
        if (delivery.qos == QoS::AtMostOnce) != delivery.packet_id.is_none()
            || (delivery.dup && delivery.qos == QoS::AtMostOnce)
        {
            return Err(EncodeError::InvalidPublishFlags);
        }
        let v5 = shared.version == ProtocolVersion::V5;
        let pid_len = if delivery.packet_id.is_some() { 2 } else { 0 };
        let (mid_len, own_props) = if v5 {
            let mut own = delivery.message_expiry_interval.map_or(0, |_| 5);
            own += if delivery.topic_alias == TopicAliasUse::None { 0 } else { 3 };
            for &id in delivery.subscription_ids {
                if id == 0 || id > MAX_VARINT {
                    return Err(EncodeError::InvalidSubscriptionId(id));
                }
                own += subscription_id_len(id);
            }
            let props = own + shared.properties.len();
            if props > MAX_VARINT as usize {
                return Err(EncodeError::PacketTooLarge(props));
            }
            (pid_len + varint_len(props) + own, own)
        } else {
            (pid_len, 0)
        };
        let omit_topic = v5 && matches!(delivery.topic_alias, TopicAliasUse::Reuse(_));
        let topic_len = if omit_topic { EMPTY_TOPIC.len() } else { shared.topic.len() };
        let remaining = topic_len + mid_len + shared.properties.len() + shared.payload.len();
        if remaining > MAX_VARINT as usize {
            return Err(EncodeError::PacketTooLarge(remaining));
        }

        let mut head = [0u8; 5];
        head[0] = (PacketType::Publish as u8) << 4
            | u8::from(delivery.dup) << 3
            | (delivery.qos as u8) << 1
            | u8::from(delivery.retain);
        let head_len = 1 + varint_into(&mut head[1..], remaining);

        let mid = if mid_len <= MID_INLINE {
            let mut buf = [0u8; MID_INLINE];
            write_mid(&mut &mut buf[..], delivery, v5, own_props + shared.properties.len());
            Mid::Inline { buf, len: mid_len as u8 }
        } else {
            let mut buf = BytesMut::with_capacity(mid_len);
            write_mid(&mut buf, delivery, v5, own_props + shared.properties.len());
            Mid::Heap(buf.freeze())
        };
        Ok(PublishFrame {
            shared: Arc::clone(&self.0),
            head,
            head_len: head_len as u8,
            omit_topic,
            mid,
            pos: 0,
            len: head_len + remaining,
        })
    }
}

/// Writes a delivery's packet identifier and (MQTT 5) property length and own properties, whose values
/// [`SharedPublish::frame`] has checked.
fn write_mid(buf: &mut impl BufMut, delivery: &Delivery<'_>, v5: bool, properties_len: usize) {
    if let Some(id) = delivery.packet_id {
        buf.put_u16(id.get());
    }
    if !v5 {
        return;
    }
    let mut varint = [0u8; 4];
    let n = varint_into(&mut varint, properties_len);
    buf.put_slice(&varint[..n]);
    if let Some(expiry) = delivery.message_expiry_interval {
        buf.put_u8(PropertyId::MessageExpiryInterval as u8);
        buf.put_u32(expiry);
    }
    if let TopicAliasUse::Establish(alias) | TopicAliasUse::Reuse(alias) = delivery.topic_alias {
        buf.put_u8(PropertyId::TopicAlias as u8);
        buf.put_u16(alias.get());
    }
    for &id in delivery.subscription_ids {
        put_subscription_id(buf, id).expect("checked by SharedPublish::frame");
    }
}

enum Mid {
    Inline { buf: [u8; MID_INLINE], len: u8 },
    Heap(Bytes),
}

/// One subscriber's PUBLISH: its own fixed header and variable-header bytes around the message's shared chunks.
/// As a [`Buf`] it is consumed by writes; [`PublishFrame::len`] stays the whole frame's size.
pub struct PublishFrame {
    shared: Arc<Shared>,
    head: [u8; 5],
    head_len: u8,
    omit_topic: bool,
    mid: Mid,
    pos: usize,
    len: usize,
}

impl PublishFrame {
    /// The frame's size on the wire (what a client's Maximum Packet Size is compared with).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The five pieces in wire order: fixed header, topic, packet id and properties length with the per-subscriber
    /// properties, shared properties, payload (some may be empty).
    pub fn pieces(&self) -> [&[u8]; 5] {
        let mid: &[u8] = match &self.mid {
            Mid::Inline { buf, len } => &buf[..usize::from(*len)],
            Mid::Heap(bytes) => bytes,
        };
        let topic: &[u8] = if self.omit_topic { &EMPTY_TOPIC } else { &self.shared.topic };
        [&self.head[..usize::from(self.head_len)], topic, mid, &self.shared.properties, &self.shared.payload]
    }

    /// Appends the whole frame (from its start, whatever has been consumed) to `buf`.
    pub fn write_to(&self, buf: &mut BytesMut) {
        buf.reserve(self.len);
        for piece in self.pieces() {
            buf.put_slice(piece);
        }
    }
}

impl Buf for PublishFrame {
    fn remaining(&self) -> usize {
        self.len - self.pos
    }

    fn chunk(&self) -> &[u8] {
        let mut skip = self.pos;
        for piece in self.pieces() {
            if skip < piece.len() {
                return &piece[skip..];
            }
            skip -= piece.len();
        }
        &[]
    }

    fn advance(&mut self, cnt: usize) {
        assert!(cnt <= self.remaining(), "advance past the end of a PublishFrame");
        self.pos += cnt;
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut skip = self.pos;
        let mut filled = 0;
        for piece in self.pieces() {
            if filled == dst.len() {
                break;
            }
            if skip >= piece.len() {
                skip -= piece.len();
                continue;
            }
            dst[filled] = IoSlice::new(&piece[skip..]);
            skip = 0;
            filled += 1;
        }
        filled
    }
}
