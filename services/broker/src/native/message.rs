//! A message inside the engine: received once, shared by every subscriber it goes to, encoded at most once per
//! protocol version.

use std::num::NonZeroU16;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use ferrite_mqtt_codec::{MqttStr, Packet, Properties, PropertyValues, ProtocolVersion, Publish, QoS, SharedPublish};

use super::store::StoredMessage;

/// One published message (or Last Will, or `$SYS` value), as every subscriber's delivery refers to it.
pub(crate) struct Message {
    pub(crate) topic: MqttStr,
    pub(crate) payload: Bytes,
    /// The QoS it was published with; each delivery gets the lower of this and its subscription's.
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    /// The PUBLISH properties that travel with it (payload format, content type, response topic, correlation data,
    /// user properties); topic alias, subscription identifiers and expiry are per delivery.
    pub(crate) properties: Properties,
    /// When a publisher gave it a Message Expiry Interval: the moment it expires.
    pub(crate) expires_at: Option<Instant>,
    /// The client id of its publisher (for No Local); `None` for the broker's own messages.
    pub(crate) publisher: Option<Arc<str>>,
    /// The shared parts encoded once per version, on first delivery in that version.
    encoded: [OnceLock<Option<SharedPublish>>; 2],
}

impl Message {
    pub(crate) fn new(
        topic: MqttStr,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        mut properties: Properties,
        publisher: Option<Arc<str>>,
    ) -> Message {
        let expires_at =
            properties.message_expiry_interval.map(|secs| Instant::now() + Duration::from_secs(secs.into()));
        let (topic, payload) = detach(topic, payload);
        if !properties.is_empty() {
            // Only what travels with the message: a will's delay, an alias or an expiry are not forwarded as such.
            let received = std::mem::take(&mut *properties);
            properties = Properties::from(PropertyValues {
                payload_format_indicator: received.payload_format_indicator,
                content_type: received.content_type,
                response_topic: received.response_topic,
                correlation_data: received.correlation_data,
                user_properties: received.user_properties,
                ..PropertyValues::default()
            });
        }
        Message { topic, payload, qos, retain, properties, expires_at, publisher, encoded: Default::default() }
    }

    /// The shared encoding for `version`; `None` if the message cannot be encoded (never for a message that was
    /// decoded, whose topic and properties the codec already checked).
    pub(crate) fn shared(&self, version: ProtocolVersion) -> Option<&SharedPublish> {
        let slot = match version {
            ProtocolVersion::V311 => &self.encoded[0],
            ProtocolVersion::V5 => &self.encoded[1],
        };
        slot.get_or_init(|| SharedPublish::new(version, &self.topic, &self.properties, self.payload.clone()).ok())
            .as_ref()
    }

    /// Seconds left to live (at least 1 while not expired), if it has an expiry; `Err` once expired.
    pub(crate) fn remaining_expiry(&self, now: Instant) -> Result<Option<u32>, Expired> {
        match self.expires_at {
            None => Ok(None),
            Some(at) if at <= now => Err(Expired),
            Some(at) => Ok(Some(u32::try_from((at - now).as_secs().max(1)).unwrap_or(u32::MAX))),
        }
    }

    /// Its bytes in memory, as counted against a queue's byte bound.
    pub(crate) fn weight(&self) -> usize {
        self.topic.len() + self.payload.len() + 64
    }

    /// The form the store keeps: one MQTT 5 PUBLISH at QoS `qos` (the delivery's), and the absolute expiry.
    pub(crate) fn to_stored(&self, qos: QoS, retain: bool) -> Option<StoredMessage> {
        let mut properties = self.properties.clone();
        let now = Instant::now();
        let expires_at_unix_ms = match self.remaining_expiry(now) {
            Ok(Some(secs)) => {
                properties.message_expiry_interval = Some(secs);
                Some(unix_ms(SystemTime::now()) + u64::from(secs) * 1000)
            }
            Ok(None) => None,
            Err(Expired) => return None,
        };
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic: self.topic.clone(),
            packet_id: (qos != QoS::AtMostOnce).then_some(NonZeroU16::MIN),
            properties,
            payload: self.payload.clone(),
        };
        let packet = Packet::Publish(publish);
        let mut buf = BytesMut::with_capacity(packet.encoded_len(ProtocolVersion::V5).ok()?);
        packet.encode(ProtocolVersion::V5, &mut buf).ok()?;
        Some(StoredMessage { publish: buf.freeze(), expires_at_unix_ms })
    }

    /// A message back from the store; `None` if it no longer decodes or has expired meanwhile.
    pub(crate) fn from_stored(stored: &StoredMessage) -> Option<(Message, QoS)> {
        let packet = ferrite_mqtt_codec::decode_frame(stored.publish.clone(), ProtocolVersion::V5, u32::MAX).ok()?;
        let Packet::Publish(mut publish) = packet else { return None };
        if let Some(at) = stored.expires_at_unix_ms {
            let now = unix_ms(SystemTime::now());
            if at <= now {
                return None;
            }
            publish.properties.message_expiry_interval =
                Some(u32::try_from((at - now).div_ceil(1000)).unwrap_or(u32::MAX));
        }
        let qos = publish.qos;
        Some((Message::new(publish.topic, publish.payload, qos, publish.retain, publish.properties, None), qos))
    }
}

/// Topic and payload in one allocation of their own. A received packet's slices share the connection's whole read
/// chunk (4 KiB or more, with other clients' messages in it); a message that waits in a slow subscriber's queue
/// must not keep that chunk alive, or the queue's byte bound would count a fraction of what it holds.
fn detach(topic: MqttStr, payload: Bytes) -> (MqttStr, Bytes) {
    let mut both = BytesMut::with_capacity(topic.len() + payload.len());
    both.extend_from_slice(topic.as_bytes());
    both.extend_from_slice(&payload);
    let mut both = both.freeze();
    let payload = both.split_off(topic.len());
    // The bytes were a valid topic a moment ago.
    let topic = MqttStr::from_bytes(both).unwrap_or(topic);
    (topic, payload)
}

/// The message had expired.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expired;

pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
