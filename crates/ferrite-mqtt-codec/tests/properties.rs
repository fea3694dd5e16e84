//! Property tests: arbitrary valid packets of both versions survive encode → decode unchanged; every strict prefix
//! of one is "need more bytes" with the buffer untouched; packets back to back decode one by one and leave the
//! rest; arbitrary and mutated bytes never panic, and whatever the decoder accepts is zero-copy (every string,
//! binary value and payload points into the input) and can be written again.
//!
//! A counting global allocator would need `unsafe impl GlobalAlloc`, which the workspace forbids, so the
//! allocation bound is checked structurally: no `Bytes` of a decoded packet lies outside the input buffer except
//! the copy of non-contiguous repeatable properties, which is no longer than the packet; partial input is never
//! copied or reallocated (same pointer, same capacity); a declared length beyond the maximum packet size is an
//! error before the body arrives (see tests/vectors.rs).

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Buf, Bytes, BytesMut};
use ferrite_mqtt_codec::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;

use ProtocolVersion::{V5, V311};

fn mqtt_str() -> impl Strategy<Value = MqttStr> {
    "[^\u{0}]{0,8}".prop_map(|s| MqttStr::try_from(s).expect("no U+0000"))
}

fn topic_name() -> impl Strategy<Value = MqttStr> {
    vec("[a-z0-9$é_ -]{0,5}", 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("non-empty", |t| !t.is_empty())
        .prop_map(|t| MqttStr::try_from(t).expect("valid"))
}

fn topic_filter() -> impl Strategy<Value = MqttStr> {
    let level = prop_oneof![Just("+".to_string()), "[a-z0-9$]{0,4}"];
    (option::of("[a-z]{1,4}"), vec(level, 1..4), any::<bool>()).prop_filter_map("non-empty", |(share, levels, hash)| {
        let mut filter = levels.join("/");
        if hash {
            filter.push_str(if filter.is_empty() { "#" } else { "/#" });
        }
        if filter.is_empty() {
            return None;
        }
        if let Some(share) = share {
            filter = format!("$share/{share}/{filter}");
        }
        Some(MqttStr::try_from(filter).expect("valid"))
    })
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn nz16() -> impl Strategy<Value = NonZeroU16> {
    (1u16..).prop_map(|v| NonZeroU16::new(v).expect("non-zero"))
}

fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

/// Properties with every field drawn independently; [`restrict`] keeps those a packet allows.
fn any_properties() -> impl Strategy<Value = PropertyValues> {
    let a = (
        option::of(select(vec![PayloadFormat::Unspecified, PayloadFormat::Utf8])),
        option::of(any::<u32>()),
        option::of(mqtt_str()),
        option::of(topic_name()),
        option::of(binary()),
        vec(prop_oneof![1u32..200, 1u32..=MAX_VARINT], 0..3),
        option::of(any::<u32>()),
        option::of(mqtt_str()),
        option::of(any::<u16>()),
        option::of(mqtt_str()),
        option::of(binary()),
        option::of(any::<bool>()),
    );
    let b = (
        option::of(any::<u32>()),
        option::of(any::<bool>()),
        option::of(mqtt_str()),
        option::of(mqtt_str()),
        option::of(mqtt_str()),
        option::of(nz16()),
        option::of(any::<u16>()),
        option::of(nz16()),
        option::of(select(vec![QoS::AtMostOnce, QoS::AtLeastOnce])),
        option::of(any::<bool>()),
        vec((mqtt_str(), mqtt_str()), 0..3),
        option::of((1u32..).prop_map(|v| NonZeroU32::new(v).expect("non-zero"))),
    );
    let c = (option::of(any::<bool>()), option::of(any::<bool>()), option::of(any::<bool>()));
    (a, b, c).prop_map(|(a, b, c)| PropertyValues {
        payload_format_indicator: a.0,
        message_expiry_interval: a.1,
        content_type: a.2,
        response_topic: a.3,
        correlation_data: a.4,
        subscription_identifiers: SubscriptionIds::from_ids(a.5).expect("valid ids"),
        session_expiry_interval: a.6,
        assigned_client_identifier: a.7,
        server_keep_alive: a.8,
        authentication_method: a.9,
        authentication_data: a.10,
        request_problem_information: a.11,
        will_delay_interval: b.0,
        request_response_information: b.1,
        response_information: b.2,
        server_reference: b.3,
        reason_string: b.4,
        receive_maximum: b.5,
        topic_alias_maximum: b.6,
        topic_alias: b.7,
        maximum_qos: b.8,
        retain_available: b.9,
        user_properties: UserProperties::from_pairs(b.10.iter().map(|(k, v)| (k, v))),
        maximum_packet_size: b.11,
        wildcard_subscription_available: c.0,
        subscription_identifier_available: c.1,
        shared_subscription_available: c.2,
    })
}

#[derive(Clone, Copy)]
enum Scope {
    Connect,
    Will,
    ConnAck,
    Publish,
    Ack,
    Subscribe,
    Unsubscribe,
    Disconnect,
    Auth,
}

macro_rules! keep {
    ($p:expr, $($field:ident),*) => {
        PropertyValues {
            $($field: $p.$field.clone(),)*
            user_properties: $p.user_properties.clone(),
            ..Default::default()
        }
    };
}

fn restrict(p: &PropertyValues, scope: Scope) -> Properties {
    let values = match scope {
        Scope::Connect => keep!(
            p,
            session_expiry_interval,
            authentication_method,
            authentication_data,
            request_problem_information,
            request_response_information,
            receive_maximum,
            topic_alias_maximum,
            maximum_packet_size
        ),
        Scope::Will => keep!(
            p,
            payload_format_indicator,
            message_expiry_interval,
            content_type,
            response_topic,
            correlation_data,
            will_delay_interval
        ),
        Scope::ConnAck => keep!(
            p,
            session_expiry_interval,
            assigned_client_identifier,
            server_keep_alive,
            authentication_method,
            authentication_data,
            response_information,
            server_reference,
            reason_string,
            receive_maximum,
            topic_alias_maximum,
            maximum_qos,
            retain_available,
            maximum_packet_size,
            wildcard_subscription_available,
            subscription_identifier_available,
            shared_subscription_available
        ),
        Scope::Publish => keep!(
            p,
            payload_format_indicator,
            message_expiry_interval,
            content_type,
            response_topic,
            correlation_data,
            subscription_identifiers,
            topic_alias
        ),
        Scope::Ack => keep!(p, reason_string),
        Scope::Subscribe => PropertyValues {
            subscription_identifiers: SubscriptionIds::from_ids(p.subscription_identifiers.iter().take(1))
                .expect("valid ids"),
            ..keep!(p,)
        },
        Scope::Unsubscribe => keep!(p,),
        Scope::Disconnect => keep!(p, session_expiry_interval, server_reference, reason_string),
        Scope::Auth => keep!(p, authentication_method, authentication_data, reason_string),
    };
    values.into()
}

/// The properties for a packet of `version` (none in 3.1.1).
fn props(version: ProtocolVersion, scope: Scope) -> BoxedStrategy<Properties> {
    match version {
        V311 => Just(Properties::default()).boxed(),
        V5 => any_properties().prop_map(move |p| restrict(&p, scope)).boxed(),
    }
}

fn reason(version: ProtocolVersion, packet: PacketType) -> BoxedStrategy<ReasonCode> {
    let codes: Vec<ReasonCode> = match (version, packet) {
        (V311, PacketType::ConnAck) => (0..=5).filter_map(ReasonCode::from_v311_connack).collect(),
        (V311, PacketType::SubAck) => [0, 1, 2, 0x80].into_iter().filter_map(ReasonCode::from_v311_suback).collect(),
        (V311, _) => vec![ReasonCode::Success],
        (V5, _) => ReasonCode::ALL.iter().copied().filter(|code| code.allowed_in(packet)).collect(),
    };
    select(codes).boxed()
}

fn connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let will = (qos(), any::<bool>(), props(version, Scope::Will), topic_name(), binary())
        .prop_map(|(qos, retain, properties, topic, payload)| Will { qos, retain, properties, topic, payload });
    (
        any::<bool>(),
        any::<u16>(),
        props(version, Scope::Connect),
        mqtt_str(),
        option::of(will),
        option::of(mqtt_str()),
        option::of(binary()),
    )
        .prop_map(move |(clean_start, keep_alive, properties, client_id, will, username, password)| {
            // MQTT 3.1.1 has no password without a user name.
            let password = if version == V311 && username.is_none() { None } else { password };
            Packet::Connect(Box::new(Connect {
                protocol: version,
                clean_start,
                keep_alive,
                properties,
                client_id,
                will,
                username,
                password,
            }))
        })
}

fn publish(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (qos(), any::<bool>(), any::<bool>(), topic_name(), nz16(), props(version, Scope::Publish), binary(), any::<bool>())
        .prop_map(move |(qos, dup, retain, topic, id, properties, payload, alias_only)| {
            let packet_id = (qos != QoS::AtMostOnce).then_some(id);
            // In MQTT 5 an empty topic travels with a topic alias.
            let topic = if version == V5 && alias_only && properties.topic_alias.is_some() {
                MqttStr::default()
            } else {
                topic
            };
            Packet::Publish(Publish {
                dup: dup && qos != QoS::AtMostOnce,
                qos,
                retain,
                topic,
                packet_id,
                properties,
                payload,
            })
        })
}

fn pub_response(version: ProtocolVersion, packet: PacketType) -> impl Strategy<Value = Packet> {
    (nz16(), reason(version, packet), props(version, Scope::Ack)).prop_map(move |(packet_id, reason, properties)| {
        let response = PubResponse { packet_id, reason, properties };
        match packet {
            PacketType::PubAck => Packet::PubAck(response),
            PacketType::PubRec => Packet::PubRec(response),
            PacketType::PubRel => Packet::PubRel(response),
            _ => Packet::PubComp(response),
        }
    })
}

fn options(version: ProtocolVersion) -> BoxedStrategy<SubscriptionOptions> {
    match version {
        V311 => qos().prop_map(SubscriptionOptions::qos).boxed(),
        V5 => (
            qos(),
            any::<bool>(),
            any::<bool>(),
            select(vec![RetainHandling::OnSubscribe, RetainHandling::OnNewSubscribe, RetainHandling::Never]),
        )
            .prop_map(|(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
                qos,
                no_local,
                retain_as_published,
                retain_handling,
            })
            .boxed(),
    }
}

fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let connack = (any::<bool>(), reason(version, PacketType::ConnAck), props(version, Scope::ConnAck)).prop_map(
        |(session_present, reason, properties)| {
            Packet::ConnAck(ConnAck { session_present: session_present && !reason.is_error(), reason, properties })
        },
    );
    let subscribe = (nz16(), props(version, Scope::Subscribe), vec((topic_filter(), options(version)), 1..4)).prop_map(
        |(packet_id, properties, filters)| {
            let filters = filters.into_iter().map(|(filter, mut options)| {
                // No-local on a shared subscription is a protocol error.
                options.no_local &= !filter.as_str().starts_with(SHARED_PREFIX);
                (filter, options)
            });
            let filters: Vec<_> = filters.collect();
            let filters = SubscribeFilters::new(filters.iter().map(|(f, o)| (f, *o))).expect("valid filters");
            Packet::Subscribe(Subscribe { packet_id, properties, filters })
        },
    );
    let suback = (nz16(), props(version, Scope::Ack), vec(reason(version, PacketType::SubAck), 1..4)).prop_map(
        |(packet_id, properties, reasons)| {
            Packet::SubAck(SubAck { packet_id, properties, reasons: ReasonCodes::new(reasons) })
        },
    );
    let unsubscribe = (nz16(), props(version, Scope::Unsubscribe), vec(topic_filter(), 1..4)).prop_map(
        |(packet_id, properties, filters)| {
            let filters = UnsubscribeFilters::new(filters.iter()).expect("valid filters");
            Packet::Unsubscribe(Unsubscribe { packet_id, properties, filters })
        },
    );
    let unsuback_reasons = match version {
        V311 => Just(Vec::new()).boxed(),
        V5 => vec(reason(version, PacketType::UnsubAck), 1..4).boxed(),
    };
    let unsuback =
        (nz16(), props(version, Scope::Ack), unsuback_reasons).prop_map(|(packet_id, properties, reasons)| {
            Packet::UnsubAck(UnsubAck { packet_id, properties, reasons: ReasonCodes::new(reasons) })
        });
    let disconnect = (reason(version, PacketType::Disconnect), props(version, Scope::Disconnect))
        .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }));
    let mut strategies = vec![
        connect(version).boxed(),
        connack.boxed(),
        publish(version).boxed(),
        pub_response(version, PacketType::PubAck).boxed(),
        pub_response(version, PacketType::PubRec).boxed(),
        pub_response(version, PacketType::PubRel).boxed(),
        pub_response(version, PacketType::PubComp).boxed(),
        subscribe.boxed(),
        suback.boxed(),
        unsubscribe.boxed(),
        unsuback.boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect.boxed(),
    ];
    if version == V5 {
        let auth = (reason(version, PacketType::Auth), props(version, Scope::Auth))
            .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }));
        strategies.push(auth.boxed());
    }
    proptest::strategy::Union::new(strategies).boxed()
}

fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    prop_oneof![packet(V311).prop_map(|p| (V311, p)), packet(V5).prop_map(|p| (V5, p))]
}

fn encode(packet: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut buf = BytesMut::new();
    packet.encode(version, &mut buf).expect("a valid packet encodes");
    buf
}

/// Every non-empty `Bytes` a decoded packet holds.
fn held_bytes(packet: &Packet) -> Vec<Bytes> {
    fn props(p: &Properties, out: &mut Vec<Bytes>) {
        let strings = [
            &p.content_type,
            &p.response_topic,
            &p.assigned_client_identifier,
            &p.authentication_method,
            &p.response_information,
            &p.server_reference,
            &p.reason_string,
        ];
        out.extend(strings.into_iter().flatten().map(MqttStr::to_bytes));
        out.extend([&p.correlation_data, &p.authentication_data].into_iter().flatten().cloned());
    }
    let mut out = Vec::new();
    match packet {
        Packet::Connect(c) => {
            props(&c.properties, &mut out);
            out.push(c.client_id.to_bytes());
            if let Some(will) = &c.will {
                props(&will.properties, &mut out);
                out.extend([will.topic.to_bytes(), will.payload.clone()]);
            }
            out.extend(c.username.iter().map(MqttStr::to_bytes));
            out.extend(c.password.iter().cloned());
        }
        Packet::ConnAck(a) => props(&a.properties, &mut out),
        Packet::Publish(p) => {
            props(&p.properties, &mut out);
            out.extend([p.topic.to_bytes(), p.payload.clone()]);
        }
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            props(&r.properties, &mut out)
        }
        Packet::Subscribe(s) => {
            props(&s.properties, &mut out);
            out.push(s.filters.encoded().clone());
        }
        Packet::SubAck(s) => {
            props(&s.properties, &mut out);
            out.push(s.reasons.encoded().clone());
        }
        Packet::Unsubscribe(u) => {
            props(&u.properties, &mut out);
            out.push(u.filters.encoded().clone());
        }
        Packet::UnsubAck(u) => {
            props(&u.properties, &mut out);
            out.push(u.reasons.encoded().clone());
        }
        Packet::Disconnect(d) => props(&d.properties, &mut out),
        Packet::Auth(a) => props(&a.properties, &mut out),
        Packet::PingReq | Packet::PingResp => {}
    }
    out.retain(|b| !b.is_empty());
    out
}

fn repeatable(packet: &Packet) -> Vec<Bytes> {
    let props = match packet {
        Packet::Connect(c) => {
            let mut v = vec![&c.properties];
            v.extend(c.will.as_ref().map(|w| &w.properties));
            v
        }
        Packet::ConnAck(a) => vec![&a.properties],
        Packet::Publish(p) => vec![&p.properties],
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => vec![&r.properties],
        Packet::Subscribe(s) => vec![&s.properties],
        Packet::SubAck(s) => vec![&s.properties],
        Packet::Unsubscribe(u) => vec![&u.properties],
        Packet::UnsubAck(u) => vec![&u.properties],
        Packet::Disconnect(d) => vec![&d.properties],
        Packet::Auth(a) => vec![&a.properties],
        Packet::PingReq | Packet::PingResp => vec![],
    };
    props
        .into_iter()
        .flat_map(|p| [p.user_properties.encoded().clone(), p.subscription_identifiers.encoded().clone()])
        .filter(|b| !b.is_empty())
        .collect()
}

/// Decodes packets from `input` until it needs more bytes or fails, checking what each decode holds and that
/// partial input is left as it was. Returns the packets and the outcome.
fn decode_stream(input: &[u8], version: ProtocolVersion, max: u32) -> (Vec<Packet>, Result<(), DecodeError>) {
    let mut buf = BytesMut::from(input);
    let mut packets = Vec::new();
    loop {
        let (start, len, capacity) = (buf.as_ptr() as usize, buf.len(), buf.capacity());
        let before = buf.to_vec();
        match decode(&mut buf, version, max) {
            Ok(Some(packet)) => {
                let frame_len = len - buf.len();
                assert!(frame_len as u64 <= u64::from(max), "a packet larger than the maximum was accepted");
                let (frame_start, frame_end) = (start, start + frame_len);
                for bytes in held_bytes(&packet) {
                    let at = bytes.as_ptr() as usize;
                    assert!(
                        at >= frame_start && at + bytes.len() <= frame_end,
                        "a decoded value was copied instead of sliced from the frame"
                    );
                }
                for bytes in repeatable(&packet) {
                    let at = bytes.as_ptr() as usize;
                    let inside = at >= frame_start && at + bytes.len() <= frame_end;
                    assert!(inside || bytes.len() <= frame_len, "a property copy larger than the packet");
                }
                packets.push(packet);
            }
            Ok(None) => {
                assert_eq!((buf.as_ptr() as usize, buf.len(), buf.capacity()), (start, len, capacity));
                assert_eq!(&buf[..], &before[..], "partial input was modified");
                return (packets, Ok(()));
            }
            Err(error) => return (packets, Err(error)),
        }
    }
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(20_000))]

    #[test]
    fn encode_then_decode_is_identity((version, packet) in versioned_packet()) {
        let bytes = encode(&packet, version);
        prop_assert_eq!(bytes.len(), packet.encoded_len(version).expect("encodable"));
        let (decoded, outcome) = decode_stream(&bytes, version, MAX_PACKET_SIZE);
        prop_assert_eq!(outcome, Ok(()));
        prop_assert_eq!(decoded, vec![packet]);
    }
}

proptest! {
    #![proptest_config(config(5_000))]

    #[test]
    fn every_strict_prefix_needs_more_bytes((version, packet) in versioned_packet()) {
        let bytes = encode(&packet, version);
        for len in 0..bytes.len() {
            let (decoded, outcome) = decode_stream(&bytes[..len], version, MAX_PACKET_SIZE);
            prop_assert!(decoded.is_empty() && outcome.is_ok(), "prefix of {} bytes: {:?}", len, outcome);
        }
    }

    #[test]
    fn packets_back_to_back_decode_one_by_one_and_leave_the_rest(
        (version, first) in versioned_packet(),
        second in any::<u8>(),
        rest_fraction in 0.0f64..1.0,
    ) {
        // Pairs within one version: a second packet and a strict prefix of a third from the same strategy seed.
        let second = match second % 3 {
            0 => Packet::PingReq,
            1 => Packet::PubAck(PubResponse::new(NonZeroU16::new(u16::from(second) + 1).expect("non-zero"))),
            _ => first.clone(),
        };
        let third = encode(&first, version);
        let rest = &third[..((third.len() as f64 * rest_fraction) as usize).min(third.len() - 1)];
        let mut buf = encode(&first, version);
        buf.extend_from_slice(&encode(&second, version));
        buf.extend_from_slice(rest);
        let mut stream = buf.clone();
        prop_assert_eq!(decode(&mut stream, version, MAX_PACKET_SIZE), Ok(Some(first)));
        prop_assert_eq!(decode(&mut stream, version, MAX_PACKET_SIZE), Ok(Some(second)));
        prop_assert_eq!(decode(&mut stream, version, MAX_PACKET_SIZE), Ok(None));
        prop_assert_eq!(&stream[..], rest);
    }

    /// Valid packets with a few bytes changed: whatever the decoder accepts, the encoder can write, and writing it
    /// and decoding again gives the same packet.
    #[test]
    fn mutated_packets_never_panic_and_what_decodes_reencodes(
        (version, packet) in versioned_packet(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        max in prop_oneof![Just(MAX_PACKET_SIZE), 2u32..256],
    ) {
        let mut bytes = encode(&packet, version).to_vec();
        for (index, byte) in edits {
            let at = index.index(bytes.len());
            bytes[at] = byte;
        }
        let (decoded, _) = decode_stream(&bytes, version, max);
        for packet in decoded {
            let again = encode(&packet, version);
            let (redecoded, outcome) = decode_stream(&again, version, MAX_PACKET_SIZE);
            prop_assert_eq!(outcome, Ok(()));
            prop_assert_eq!(redecoded, vec![packet]);
        }
    }
}

proptest! {
    #![proptest_config(config(50_000))]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..300),
        version in select(vec![V311, V5]),
        max in prop_oneof![Just(MAX_PACKET_SIZE), 2u32..512],
    ) {
        let _ = peek_connect_version(&bytes);
        let (decoded, _) = decode_stream(&bytes, version, max);
        for packet in decoded {
            let again = encode(&packet, version);
            prop_assert_eq!(decode_stream(&again, version, MAX_PACKET_SIZE).0, vec![packet]);
        }
    }

    /// Arbitrary bytes behind a plausible first byte (every type and flag nibble), so decoding gets past the fixed
    /// header more often than with uniform bytes.
    #[test]
    fn arbitrary_bodies_never_panic(
        first in any::<u8>(),
        body in vec(any::<u8>(), 0..200),
        version in select(vec![V311, V5]),
    ) {
        let mut bytes = vec![first];
        let mut len = [0u8; 4];
        let n = {
            let mut value = body.len();
            let mut i = 0;
            loop {
                len[i] = (value % 128) as u8 | if value >= 128 { 0x80 } else { 0 };
                value /= 128;
                i += 1;
                if value == 0 { break i; }
            }
        };
        bytes.extend_from_slice(&len[..n]);
        bytes.extend_from_slice(&body);
        let (decoded, outcome) = decode_stream(&bytes, version, MAX_PACKET_SIZE);
        prop_assert!(decoded.len() + usize::from(outcome.is_err()) <= 1);
    }
}

fn delivery_parts() -> impl Strategy<Value = (QoS, NonZeroU16, bool, bool, u8, NonZeroU16, Vec<u32>, Option<u32>)> {
    (
        qos(),
        nz16(),
        any::<bool>(),
        any::<bool>(),
        0u8..3,
        nz16(),
        vec(prop_oneof![1u32..200, 1u32..=MAX_VARINT], 0..8),
        option::of(any::<u32>()),
    )
}

proptest! {
    #![proptest_config(config(10_000))]

    /// A fan-out frame is exactly the PUBLISH that subscriber should get: decoding it gives the message with the
    /// delivery's flags, packet id, alias, subscription ids and expiry; consumed as a `Buf` it yields the same
    /// bytes as `write_to`, and its length is what `Packet::encoded_len` says.
    #[test]
    fn fan_out_frames_decode_to_the_delivered_publish(
        (version, message) in prop_oneof![publish(V311).prop_map(|p| (V311, p)), publish(V5).prop_map(|p| (V5, p))],
        (qos, id, dup, retain, alias_kind, alias, subscription_ids, expiry) in delivery_parts(),
    ) {
        let Packet::Publish(mut message) = message else { unreachable!("publish() makes PUBLISH packets") };
        // A message is shared once its topic alias has been resolved: it has a topic.
        if message.topic.is_empty() {
            message.topic = MqttStr::from_static("resolved/alias");
        }
        let shared = SharedPublish::from_publish(version, &message).expect("encodable");
        let topic_alias = match alias_kind {
            0 => TopicAliasUse::None,
            1 => TopicAliasUse::Establish(alias),
            _ => TopicAliasUse::Reuse(alias),
        };
        let packet_id = (qos != QoS::AtMostOnce).then_some(id);
        let delivery = Delivery {
            qos,
            packet_id,
            dup: dup && qos != QoS::AtMostOnce,
            retain,
            topic_alias,
            subscription_ids: &subscription_ids,
            message_expiry_interval: expiry,
        };
        let mut frame = shared.frame(&delivery).expect("encodable");
        let mut copied = BytesMut::new();
        frame.write_to(&mut copied);
        let mut consumed = Vec::new();
        while frame.has_remaining() {
            let chunk = frame.chunk();
            let step = chunk.len().min(5);
            consumed.extend_from_slice(&chunk[..step]);
            frame.advance(step);
        }
        prop_assert_eq!(&consumed[..], &copied[..]);

        let mut expected = Publish { qos, packet_id, dup: delivery.dup, retain, ..message };
        match version {
            V311 => expected.properties = Properties::default(),
            V5 => {
                expected.properties.message_expiry_interval = expiry;
                expected.properties.subscription_identifiers =
                    SubscriptionIds::from_ids(subscription_ids.iter().copied()).expect("valid ids");
                expected.properties.topic_alias = None;
                if let TopicAliasUse::Establish(alias) | TopicAliasUse::Reuse(alias) = topic_alias {
                    expected.properties.topic_alias = Some(alias);
                }
                if let TopicAliasUse::Reuse(_) = topic_alias {
                    expected.topic = MqttStr::default();
                }
            }
        }
        let expected = Packet::Publish(expected);
        prop_assert_eq!(copied.len(), expected.encoded_len(version).expect("encodable"));
        let (decoded, outcome) = decode_stream(&copied, version, MAX_PACKET_SIZE);
        prop_assert_eq!(outcome, Ok(()));
        prop_assert_eq!(decoded, vec![expected]);
    }
}
