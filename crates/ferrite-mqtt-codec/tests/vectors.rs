//! Hand-written byte vectors: real packets as mosquitto_pub sends them (captured once and kept here), the
//! specification's variable byte integer examples, and one vector per protocol violation the decoder must reject.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Buf, Bytes, BytesMut};
use ferrite_mqtt_codec::*;

const MAX: u32 = 1024 * 1024;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn decode_all(bytes: &[u8], version: ProtocolVersion) -> Result<Packet, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, version, MAX)?.expect("a whole packet");
    assert!(buf.is_empty(), "the packet's bytes were all consumed");
    Ok(packet)
}

fn err(bytes: &[u8], version: ProtocolVersion) -> DecodeError {
    decode_all(bytes, version).expect_err("must be rejected")
}

fn encode(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    packet.encode(version, &mut buf).expect("encodable");
    assert_eq!(buf.len(), packet.encoded_len(version).expect("encodable"), "encoded_len is exact");
    buf.to_vec()
}

fn s(text: &'static str) -> MqttStr {
    MqttStr::from_static(text)
}

fn pid(id: u16) -> NonZeroU16 {
    NonZeroU16::new(id).expect("non-zero")
}

use ProtocolVersion::{V5, V311};

/// `mosquitto_pub -V mqttv311 -i sensor-1 -u dev -P secret -k 30 -q 1 --will-topic devices/sim-0042/status
/// --will-payload offline --will-qos 1 --will-retain` (mosquitto 2.0.11).
const MOSQUITTO_CONNECT_V311: &str = "104300044d51545404ee001e000873656e736f722d31\
    0017646576696365732f73696d2d303034322f73746174757300076f66666c696e6500036465760006736563726574";

/// `mosquitto_pub -V mqttv5 -i sensor-1 -D connect session-expiry-interval 3600 -D connect user-property k v`.
const MOSQUITTO_CONNECT_V5: &str = "102400044d5154540502003c0f1100000e102600016b000176210014000873656e736f722d31";

#[test]
fn mosquitto_pub_v311_connect() {
    let bytes = hex(MOSQUITTO_CONNECT_V311);
    assert_eq!(peek_connect_version(&bytes), Ok(Some(V311)));
    let Packet::Connect(connect) = decode_all(&bytes, V5).expect("valid") else { panic!("not a CONNECT") };
    assert_eq!(connect.protocol, V311);
    assert!(connect.clean_start);
    assert_eq!(connect.keep_alive, 30);
    assert_eq!(connect.client_id, "sensor-1");
    assert_eq!(connect.username.as_ref().map(MqttStr::as_str), Some("dev"));
    assert_eq!(connect.password.as_deref(), Some(&b"secret"[..]));
    let will = connect.will.as_ref().expect("a will");
    assert_eq!((will.qos, will.retain), (QoS::AtLeastOnce, true));
    assert_eq!(will.topic, "devices/sim-0042/status");
    assert_eq!(&will.payload[..], b"offline");
    // Written back byte for byte (in the CONNECT's own version, whatever the caller passes).
    assert_eq!(encode(&Packet::Connect(connect), V5), bytes);
}

#[test]
fn mosquitto_pub_v5_connect() {
    let bytes = hex(MOSQUITTO_CONNECT_V5);
    assert_eq!(peek_connect_version(&bytes), Ok(Some(V5)));
    let packet = decode_all(&bytes, V311).expect("valid");
    let Packet::Connect(connect) = &packet else { panic!("not a CONNECT") };
    assert_eq!(connect.protocol, V5);
    assert_eq!(connect.keep_alive, 60);
    assert_eq!(connect.properties.session_expiry_interval, Some(3600));
    assert_eq!(connect.properties.receive_maximum, NonZeroU16::new(20));
    let users: Vec<_> = connect.properties.user_properties.iter().collect();
    assert_eq!(users, vec![(s("k"), s("v"))]);
    assert_eq!(connect.client_id, "sensor-1");
    assert!(connect.will.is_none() && connect.username.is_none() && connect.password.is_none());
    // Properties are written in identifier order, so compare through a decode.
    let again = encode(&packet, V5);
    assert_eq!(again.len(), bytes.len());
    assert_eq!(decode_all(&again, V5).expect("valid"), packet);
}

#[test]
fn connect_version_is_known_from_the_first_nine_bytes() {
    let bytes = hex(MOSQUITTO_CONNECT_V311);
    for len in 0..9 {
        assert_eq!(peek_connect_version(&bytes[..len]), Ok(None), "prefix of {len} bytes");
    }
    assert_eq!(peek_connect_version(&bytes[..9]), Ok(Some(V311)));
    // MQTT 3.1 ("MQIsdp", level 3) is refused with the level, so the broker can answer return code 1.
    let mqtt31 = hex("10 10 0006 4d5149736470 03 02 003c 0002 6964");
    assert_eq!(peek_connect_version(&mqtt31), Err(DecodeError::UnsupportedProtocolVersion(3)));
    assert_eq!(err(&mqtt31, V311), DecodeError::UnsupportedProtocolVersion(3));
    assert_eq!(peek_connect_version(&hex("10 0c 0004 4d515858")), Err(DecodeError::InvalidProtocolName));
    assert_eq!(peek_connect_version(&hex("10 0c 0004 58")), Err(DecodeError::InvalidProtocolName));
    assert_eq!(peek_connect_version(&hex("30 00")), Err(DecodeError::FirstPacketNotConnect));
    assert_eq!(peek_connect_version(&hex("10 0c 0004 4d51 54 54 06")), Err(DecodeError::UnsupportedProtocolVersion(6)));
}

/// The specification's table of variable byte integer sizes (section 1.5.5), through the remaining length of a
/// PUBLISH whose payload makes it hit each boundary.
#[test]
fn remaining_length_boundaries() {
    for (remaining, encoded) in [
        (3usize, "03"),
        (127, "7f"),
        (128, "8001"),
        (16_383, "ff7f"),
        (16_384, "808001"),
        (2_097_151, "ffff7f"),
        (2_097_152, "80808001"),
    ] {
        // Topic "a" (3 bytes) plus payload.
        let publish = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: s("a"),
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::from(vec![7u8; remaining - 3]),
        });
        let bytes = encode(&publish, V311);
        let header = hex(encoded);
        assert_eq!(&bytes[1..1 + header.len()], &header[..], "remaining length {remaining}");
        assert_eq!(bytes.len(), 1 + header.len() + remaining);
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(decode(&mut buf, V311, MAX_PACKET_SIZE).expect("valid"), Some(publish));
    }
    // 268,435,455 is the largest; a fifth byte is malformed.
    let header = peek_header(&hex("30 ffffff7f"), V311, MAX_PACKET_SIZE).expect("valid").expect("complete");
    assert_eq!(header.remaining_length, MAX_VARINT);
    assert_eq!(err(&hex("30 ffffffff7f"), V311), DecodeError::MalformedVarInt);
}

#[test]
fn publish_and_acks_both_versions() {
    // QoS 1, topic "a/b", packet id 10, payload "hi".
    let v311 = hex("32 09 0003 612f62 000a 6869");
    let Packet::Publish(publish) = decode_all(&v311, V311).expect("valid") else { panic!("not a PUBLISH") };
    assert_eq!((publish.qos, publish.packet_id, publish.topic.as_str()), (QoS::AtLeastOnce, Some(pid(10)), "a/b"));
    assert_eq!(&publish.payload[..], b"hi");
    // MQTT 5 adds a property block: message expiry 60, content type "t", topic alias 3.
    let v5 = hex("32 16 0003 612f62 000a 0c 020000003c 03000174 230003 6869");
    let Packet::Publish(publish) = decode_all(&v5, V5).expect("valid") else { panic!("not a PUBLISH") };
    assert_eq!(publish.properties.message_expiry_interval, Some(60));
    assert_eq!(publish.properties.content_type, Some(s("t")));
    assert_eq!(publish.properties.topic_alias, NonZeroU16::new(3));
    assert_eq!(&publish.payload[..], b"hi");
    assert_eq!(encode(&Packet::Publish(publish), V5), v5);

    // PUBACK: 3.1.1 has only the id; MQTT 5's short forms drop success and empty properties.
    assert_eq!(decode_all(&hex("40 02 000a"), V311), Ok(Packet::PubAck(PubResponse::new(pid(10)))));
    assert_eq!(decode_all(&hex("40 02 000a"), V5), Ok(Packet::PubAck(PubResponse::new(pid(10)))));
    let no_subscribers = PubResponse { reason: ReasonCode::NoMatchingSubscribers, ..PubResponse::new(pid(10)) };
    assert_eq!(decode_all(&hex("40 03 000a 10"), V5), Ok(Packet::PubAck(no_subscribers.clone())));
    assert_eq!(encode(&Packet::PubAck(no_subscribers), V5), hex("40 03 000a 10"));
    let with_reason_string = hex("50 08 000a 80 04 1f000178");
    let Packet::PubRec(rec) = decode_all(&with_reason_string, V5).expect("valid") else { panic!("not a PUBREC") };
    assert_eq!((rec.reason, rec.properties.reason_string.clone()), (ReasonCode::UnspecifiedError, Some(s("x"))));
    assert_eq!(encode(&Packet::PubRec(rec), V5), with_reason_string);
    assert_eq!(encode(&Packet::PubRel(PubResponse::new(pid(1))), V311), hex("62 02 0001"));
    assert_eq!(encode(&Packet::PubComp(PubResponse::new(pid(1))), V5), hex("70 02 0001"));
    assert_eq!(encode(&Packet::PingReq, V311), hex("c0 00"));
    assert_eq!(encode(&Packet::PingResp, V5), hex("d0 00"));
    assert_eq!(encode(&Packet::Disconnect(Disconnect::default()), V5), hex("e0 00"));
    assert_eq!(encode(&Packet::Auth(Auth::default()), V5), hex("f0 00"));
    assert_eq!(
        Packet::Auth(Auth::default()).encode(V311, &mut BytesMut::new()),
        Err(EncodeError::NotInVersion(PacketType::Auth))
    );
}

#[test]
fn subscribe_options_and_acks() {
    // MQTT 5: packet id 1, subscription identifier 5, "a/+" with QoS 1, no local, retain as published, retain
    // handling 2; "$share/g/#" at QoS 0.
    let v5 = hex("82 18 0001 02 0b05 0003 612f2b 2d 000a 2473686172652f672f23 00");
    let Packet::Subscribe(sub) = decode_all(&v5, V5).expect("valid") else { panic!("not a SUBSCRIBE") };
    assert_eq!(sub.properties.subscription_identifiers.iter().collect::<Vec<_>>(), vec![5]);
    let filters: Vec<_> = sub.filters.iter().collect();
    assert_eq!(filters.len(), 2);
    assert_eq!(filters[0].0, "a/+");
    assert_eq!(
        filters[0].1,
        SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::Never
        }
    );
    assert_eq!(filters[1], (s("$share/g/#"), SubscriptionOptions::qos(QoS::AtMostOnce)));
    assert_eq!(encode(&Packet::Subscribe(sub.clone()), V5), v5);
    // Written for a 3.1.1 peer, only QoS remains.
    assert_eq!(encode(&Packet::Subscribe(sub), V311), hex("82 15 0001 0003 612f2b 01 000a 2473686172652f672f23 00"));

    let suback = hex("90 05 0001 00 01 87");
    let Packet::SubAck(ack) = decode_all(&suback, V5).expect("valid") else { panic!("not a SUBACK") };
    assert_eq!(ack.reasons.iter().collect::<Vec<_>>(), vec![ReasonCode::GrantedQoS1, ReasonCode::NotAuthorized]);
    // 3.1.1 knows only "failure" (0x80).
    assert_eq!(encode(&Packet::SubAck(ack), V311), hex("90 04 0001 01 80"));
    assert_eq!(
        err(&hex("90 03 0001 87"), V311),
        DecodeError::InvalidReasonCode { packet: PacketType::SubAck, code: 0x87 }
    );

    let unsubscribe = hex("a2 07 0001 0003 612f62");
    let Packet::Unsubscribe(unsub) = decode_all(&unsubscribe, V311).expect("valid") else { panic!("not UNSUBSCRIBE") };
    assert_eq!(unsub.filters.iter().collect::<Vec<_>>(), vec![s("a/b")]);
    assert_eq!(encode(&Packet::Unsubscribe(unsub), V311), unsubscribe);
    let unsuback = hex("b0 04 0001 00 11");
    let Packet::UnsubAck(ack) = decode_all(&unsuback, V5).expect("valid") else { panic!("not UNSUBACK") };
    assert_eq!(ack.reasons.iter().collect::<Vec<_>>(), vec![ReasonCode::NoSubscriptionExisted]);
    assert_eq!(encode(&Packet::UnsubAck(ack), V311), hex("b0 02 0001"));
}

#[test]
fn connack_both_versions() {
    assert_eq!(
        decode_all(&hex("20 02 01 00"), V311),
        Ok(Packet::ConnAck(ConnAck {
            session_present: true,
            reason: ReasonCode::Success,
            properties: Default::default()
        }))
    );
    let refused =
        ConnAck { session_present: false, reason: ReasonCode::BadUserNameOrPassword, properties: Default::default() };
    assert_eq!(encode(&Packet::ConnAck(refused.clone()), V311), hex("20 02 00 04"));
    assert_eq!(encode(&Packet::ConnAck(refused), V5), hex("20 03 00 86 00"));
    let mut properties: Properties = PropertyValues {
        maximum_qos: Some(QoS::AtLeastOnce),
        topic_alias_maximum: Some(10),
        maximum_packet_size: NonZeroU32::new(1024),
        ..Default::default()
    }
    .into();
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::Success,
        properties: properties.clone(),
    });
    let bytes = encode(&connack, V5);
    assert_eq!(bytes, hex("20 0d 00 00 0a 22000a 2401 2700000400"));
    assert_eq!(decode_all(&bytes, V5), Ok(connack));
    // Maximum QoS 2 does not exist.
    properties.maximum_qos = Some(QoS::ExactlyOnce);
    let bad = Packet::ConnAck(ConnAck { session_present: false, reason: ReasonCode::Success, properties });
    assert_eq!(bad.encode(V5, &mut BytesMut::new()), Err(EncodeError::InvalidPropertyValue(PropertyId::MaximumQoS)));
    assert_eq!(err(&hex("20 05 00 00 02 2402"), V5), DecodeError::InvalidPropertyValue(PropertyId::MaximumQoS));
}

/// One vector per rule the decoder enforces.
#[test]
fn protocol_violations_are_typed_errors() {
    use DecodeError::*;
    let cases: &[(&str, ProtocolVersion, DecodeError)] = &[
        // Fixed header.
        ("00 00", V5, ReservedPacketType(0)),
        ("f0 00", V311, ReservedPacketType(15)),
        ("80 02 0001", V311, InvalidHeaderFlags { packet: PacketType::Subscribe, flags: 0 }),
        ("60 02 0001", V5, InvalidHeaderFlags { packet: PacketType::PubRel, flags: 0 }),
        ("c1 00", V311, InvalidHeaderFlags { packet: PacketType::PingReq, flags: 1 }),
        ("36 05 0001 61 0001", V311, InvalidQoS),
        ("38 03 0001 61", V311, DupWithQoS0),
        ("c0 01 00", V311, TrailingBytes(1)),
        // Strings.
        ("30 05 0003 c328 41", V311, InvalidUtf8),
        ("30 05 0003 eda080", V311, InvalidUtf8),
        ("30 05 0003 61 00 62", V311, NullCharacter),
        ("30 04 0003 6161", V311, UnexpectedEnd),
        // Topic names.
        ("30 05 0003 612f2b", V311, WildcardInTopicName),
        ("30 03 0001 23", V5, WildcardInTopicName),
        ("30 02 0000", V311, EmptyTopic),
        ("30 03 0000 00", V5, EmptyTopic),
        ("30 06 0000 03 230000", V5, InvalidPropertyValue(PropertyId::TopicAlias)),
        // Packet identifiers.
        ("40 02 0000", V311, ZeroPacketId),
        ("32 05 0001 61 0000", V311, ZeroPacketId),
        ("82 06 0000 0001 61 00", V311, ZeroPacketId),
        // Topic filters and subscription options.
        ("82 08 0001 0003 232f61 00", V311, InvalidTopicFilter),
        ("82 0a 0001 0005 612f232f62 00", V311, InvalidTopicFilter),
        ("82 07 0001 0002 612b 00", V311, InvalidTopicFilter),
        ("82 05 0001 0000 00", V311, InvalidTopicFilter),
        ("82 0d 0001 0008 2473686172652f78 00", V311, InvalidTopicFilter),
        ("82 0e 0001 0009 2473686172652f2f61 00", V311, InvalidTopicFilter),
        ("82 10 0001 000a 2473686172652f672b2f61 00", V311, InvalidTopicFilter),
        ("82 02 0001", V311, EmptyList(PacketType::Subscribe)),
        ("82 03 0001 00", V5, EmptyList(PacketType::Subscribe)),
        ("a2 02 0001", V311, EmptyList(PacketType::Unsubscribe)),
        ("82 06 0001 0001 61 03", V311, InvalidSubscriptionOptions(3)),
        ("82 06 0001 0001 61 04", V311, InvalidSubscriptionOptions(4)),
        ("82 07 0001 00 0001 61 30", V5, InvalidSubscriptionOptions(0x30)),
        ("82 07 0001 00 0001 61 40", V5, InvalidSubscriptionOptions(0x40)),
        ("82 10 0001 00 000a 2473686172652f672f61 04", V5, NoLocalOnSharedSubscription),
        // Properties.
        ("32 10 0001 61 0001 0a 0200000001 0200000002", V5, DuplicateProperty(PropertyId::MessageExpiryInterval)),
        (
            "30 09 0001 61 05 1100000001",
            V5,
            PropertyNotAllowed { property: PropertyId::SessionExpiryInterval, packet: PacketType::Publish },
        ),
        ("30 06 0001 61 02 0500", V5, UnknownProperty(5)),
        ("30 06 0001 61 02 0102", V5, InvalidPropertyValue(PropertyId::PayloadFormatIndicator)),
        ("30 06 0001 61 05 0100", V5, UnexpectedEnd),
        ("82 0b 0001 04 0b01 0b02 0001 61 00", V5, DuplicateProperty(PropertyId::SubscriptionIdentifier)),
        ("82 09 0001 02 0b00 0001 61 00", V5, InvalidPropertyValue(PropertyId::SubscriptionIdentifier)),
        ("30 08 0001 61 03 080001 2b", V5, UnexpectedEnd),
        ("30 08 0001 61 04 08000123", V5, InvalidPropertyValue(PropertyId::ResponseTopic)),
        ("30 08 0001 61 ffffffff7f", V5, MalformedVarInt),
        // Reason codes.
        ("40 03 0001 92", V5, InvalidReasonCode { packet: PacketType::PubAck, code: 0x92 }),
        ("62 03 0001 10", V5, InvalidReasonCode { packet: PacketType::PubRel, code: 0x10 }),
        ("e0 01 05", V5, InvalidReasonCode { packet: PacketType::Disconnect, code: 0x05 }),
        ("f0 01 00", V5, UnexpectedEnd),
        ("f0 02 8f 00", V5, InvalidReasonCode { packet: PacketType::Auth, code: 0x8f }),
        ("b0 03 0001 00", V5, EmptyList(PacketType::UnsubAck)),
        ("b0 03 0001 00", V311, TrailingBytes(1)),
        ("e0 01 00", V311, TrailingBytes(1)),
        // CONNECT and CONNACK.
        ("10 0d 0004 4d515454 04 01 003c 0001 61", V311, ReservedConnectFlag),
        ("10 0d 0004 4d515454 04 08 003c 0001 61", V311, InvalidWillFlags),
        ("10 0d 0004 4d515454 04 20 003c 0001 61", V311, InvalidWillFlags),
        ("10 0d 0004 4d515454 04 1c 003c 0001 61", V311, InvalidWillFlags),
        ("10 0f 0004 4d515454 04 40 003c 0001 61 0000", V311, PasswordWithoutUsername),
        ("10 0c 0004 4d515454 07 00 003c 0000", V311, UnsupportedProtocolVersion(7)),
        ("10 11 0004 4d515454 04 04 003c 0000 0001 23 0000", V311, WildcardInTopicName),
        ("10 10 0004 4d515454 04 04 003c 0000 0000 0000", V311, EmptyTopic),
        (
            "10 0f 0004 4d515454 05 00 003c 02 2301 0000",
            V5,
            PropertyNotAllowed { property: PropertyId::TopicAlias, packet: PacketType::Connect },
        ),
        (
            "10 15 0004 4d515454 05 04 003c 00 0000 02 1100 0001 61 0000",
            V5,
            PropertyNotAllowed { property: PropertyId::SessionExpiryInterval, packet: PacketType::Connect },
        ),
        ("10 10 0004 4d515454 05 00 003c 03 210000 0000", V5, InvalidPropertyValue(PropertyId::ReceiveMaximum)),
        ("20 02 02 00", V311, ReservedConnAckFlags),
        ("20 02 01 05", V311, SessionPresentWithError),
        ("20 02 00 06", V311, InvalidReasonCode { packet: PacketType::ConnAck, code: 6 }),
        ("20 03 00 8b 00", V5, InvalidReasonCode { packet: PacketType::ConnAck, code: 0x8b }),
    ];
    for (bytes, version, expected) in cases {
        assert_eq!(&err(&hex(bytes), *version), expected, "{bytes} ({version:?})");
    }
}

#[test]
fn too_large_is_detected_from_the_fixed_header_alone() {
    // A PUBLISH announcing 2 MB: rejected with only its two header bytes present, nothing buffered.
    let mut buf = BytesMut::from(&hex("30 80 80 80 01")[..]);
    assert_eq!(
        decode(&mut buf, V311, 1024 * 1024),
        Err(DecodeError::PacketTooLarge { size: 5 + 2_097_152, max: 1024 * 1024 })
    );
    // The bound is on the whole packet, header included: 4 + 2 bytes fit in 6, not in 5.
    let ping_like = hex("30 04 0001 61 00");
    assert!(decode(&mut BytesMut::from(&ping_like[..]), V311, 6).is_ok());
    assert_eq!(
        decode(&mut BytesMut::from(&ping_like[..]), V311, 5),
        Err(DecodeError::PacketTooLarge { size: 6, max: 5 })
    );
    // Bad flags are reported from the first byte, before the length has arrived.
    assert_eq!(decode(&mut BytesMut::from(&[0x36u8][..]), V311, 5), Err(DecodeError::InvalidQoS));
}

#[test]
fn incomplete_input_is_left_untouched() {
    let bytes = hex(MOSQUITTO_CONNECT_V311);
    for len in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..len]);
        assert_eq!(decode(&mut buf, V311, MAX), Ok(None), "prefix of {len} bytes");
        assert_eq!(&buf[..], &bytes[..len]);
    }
}

#[test]
fn interleaved_user_properties_are_collected_in_order() {
    // user (a, 1), content type "t", user (b, 2): the two user properties are not contiguous in the frame.
    let bytes = hex("30 18 0001 61 12 26000161000131 03000174 26000162000132 6869");
    let Packet::Publish(publish) = decode_all(&bytes, V5).expect("valid") else { panic!("not a PUBLISH") };
    let users: Vec<_> = publish.properties.user_properties.iter().collect();
    assert_eq!(users, vec![(s("a"), s("1")), (s("b"), s("2"))]);
    assert_eq!(publish.properties.content_type, Some(s("t")));
    assert_eq!(&publish.payload[..], b"hi");
}

fn publish_v5() -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: s("sensors/sim-0042/temperature"),
        packet_id: None,
        properties: PropertyValues {
            content_type: Some(s("application/json")),
            correlation_data: Some(Bytes::from_static(b"\x01\x02")),
            user_properties: UserProperties::from_pairs([(&s("k"), &s("v"))]),
            ..Default::default()
        }
        .into(),
        payload: Bytes::from_static(b"{\"value\":21.5}"),
    }
}

/// Every frame of a shared PUBLISH is byte for byte the packet the plain encoder writes for that subscriber.
#[test]
fn fan_out_frames_equal_the_plain_encoding() {
    let message = publish_v5();
    let many_ids: Vec<u32> = (1..=20).map(|i| i * 1_000_000).collect();
    for version in [V311, V5] {
        let shared = SharedPublish::from_publish(version, &message).expect("encodable");
        let deliveries = [
            Delivery::default(),
            Delivery { qos: QoS::AtLeastOnce, packet_id: Some(pid(7)), retain: true, ..Default::default() },
            Delivery { qos: QoS::ExactlyOnce, packet_id: Some(pid(65535)), dup: true, ..Default::default() },
            Delivery {
                topic_alias: TopicAliasUse::Establish(pid(3)),
                message_expiry_interval: Some(59),
                ..Default::default()
            },
            Delivery {
                topic_alias: TopicAliasUse::Reuse(pid(3)),
                subscription_ids: &[1, 268_435_455],
                ..Default::default()
            },
            Delivery {
                qos: QoS::AtLeastOnce,
                packet_id: Some(pid(1)),
                subscription_ids: &many_ids,
                ..Default::default()
            },
        ];
        for delivery in &deliveries {
            let frame = shared.frame(delivery).expect("encodable");
            let mut expected = message.clone();
            expected.qos = delivery.qos;
            expected.packet_id = delivery.packet_id;
            expected.dup = delivery.dup;
            expected.retain = delivery.retain;
            if version == V5 {
                expected.properties.message_expiry_interval = delivery.message_expiry_interval;
                expected.properties.subscription_identifiers =
                    SubscriptionIds::from_ids(delivery.subscription_ids.iter().copied()).expect("valid ids");
                match delivery.topic_alias {
                    TopicAliasUse::None => {}
                    TopicAliasUse::Establish(alias) => expected.properties.topic_alias = Some(alias),
                    TopicAliasUse::Reuse(alias) => {
                        expected.properties.topic_alias = Some(alias);
                        expected.topic = MqttStr::default();
                    }
                }
            }
            let mut copied = BytesMut::new();
            frame.write_to(&mut copied);
            assert_eq!(copied.len(), frame.len());
            // Consumed through the Buf interface, in uneven steps, as a socket write would.
            let mut consumed = shared.frame(delivery).expect("encodable");
            let mut through_buf = Vec::new();
            while consumed.has_remaining() {
                let mut slices = [std::io::IoSlice::new(&[]); 8];
                let n = consumed.chunks_vectored(&mut slices);
                assert!(n > 0);
                let step = slices[0].len().min(3);
                through_buf.extend_from_slice(&slices[0][..step]);
                consumed.advance(step);
            }
            assert_eq!(through_buf, copied.to_vec());
            // Decoding the frame gives the subscriber's packet. Properties come back in identifier order, so
            // compare packets rather than bytes, then bytes against the plain encoder's when no reordering applies.
            let decoded = decode_all(&copied, version).expect("a frame decodes");
            let Packet::Publish(decoded) = decoded else { panic!("not a PUBLISH") };
            if version == V311 {
                expected.properties = Properties::default();
            }
            assert_eq!(decoded, expected, "{delivery:?} {version:?}");
            assert_eq!(copied.len(), Packet::Publish(expected).encoded_len(version).expect("encodable"));
        }
    }
}
