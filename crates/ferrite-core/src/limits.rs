//! Bounds shared by every part of the platform that moves MQTT packets.

/// The largest MQTT packet the broker accepts from a client, counted as MQTT 5 counts it (the whole packet, fixed
/// header included), and announced in its v5 CONNACK. A larger publish is refused as soon as its fixed header
/// arrives (the connection is closed, with DISCONNECT 0x95 "Packet too large" for MQTT 5), before any consumer sees it.
pub const MAX_PACKET_SIZE: u32 = 1024 * 1024;

/// What the broker may add to a packet between its publisher and a subscriber: the whole topic where the
/// publisher used a topic alias (up to 64 KiB), the MQTT 5 properties of a publish from a v3.1.1 client,
/// a subscription identifier.
pub const FORWARDING_HEADROOM: u32 = 64 * 1024 + 1024;

/// The largest MQTT packet Ferrite's own clients accept, announced to the broker in CONNECT (MQTT 5 Maximum
/// Packet Size): whatever the broker let in, after forwarding. Against our broker nothing larger can arrive;
/// an external broker with a higher limit drops larger messages for us, since we announced ours, rather than
/// sending them and having our client drop the connection (which would replay the message forever from a
/// persistent session).
pub const MAX_RECEIVED_PACKET_SIZE: u32 = MAX_PACKET_SIZE + FORWARDING_HEADROOM;
