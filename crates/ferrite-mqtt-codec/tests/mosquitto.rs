//! The codec against real clients: this test plays the broker on a local socket for mosquitto_pub (decoding what
//! it sends, answering with encoded acknowledgements) and for mosquitto_sub (delivering a fan-out frame through a
//! vectored write), in both protocol versions.

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::num::NonZeroU16;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use ferrite_mqtt_codec::*;

const TIMEOUT: Duration = Duration::from_secs(20);

fn spawn(program: &str, args: &[&str]) -> Child {
    Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): install mosquitto-clients"))
}

/// One accepted client connection, read in small pieces so packets arrive split across reads.
struct Peer {
    stream: TcpStream,
    buf: BytesMut,
    version: Option<ProtocolVersion>,
}

impl Peer {
    fn accept(listener: &TcpListener) -> Self {
        let (stream, _) = listener.accept().expect("a client connects");
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        Self { stream, buf: BytesMut::new(), version: None }
    }

    fn read(&mut self) -> Packet {
        loop {
            if self.version.is_none() {
                self.version = peek_connect_version(&self.buf).expect("a valid CONNECT");
            }
            if let Some(version) = self.version
                && let Some(packet) = decode(&mut self.buf, version, 64 * 1024).expect("a valid packet")
            {
                return packet;
            }
            let mut chunk = [0u8; 7];
            let n = self.stream.read(&mut chunk).expect("the client sends");
            assert!(n > 0, "the client closed early");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.encode(self.version.expect("connected"), &mut out).expect("encodable");
        self.stream.write_all(&out).expect("the client reads");
    }

    /// Writes a frame the way the broker will: vectored writes of its pieces until all are sent.
    fn send_frame(&mut self, mut frame: PublishFrame) {
        while frame.has_remaining() {
            let mut slices = [IoSlice::new(&[]); 5];
            let n = frame.chunks_vectored(&mut slices);
            match self.stream.write_vectored(&slices[..n]) {
                Ok(written) => frame.advance(written),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("write failed: {e}"),
            }
        }
    }

    fn connack(&mut self) -> Box<Connect> {
        let Packet::Connect(connect) = self.read() else { panic!("the first packet is not a CONNECT") };
        self.send(Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }));
        connect
    }
}

fn finish(child: Child) -> String {
    let output = child.wait_with_output().expect("the client exits");
    assert!(output.status.success(), "client failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8 output")
}

#[test]
fn mosquitto_pub_publishes_at_every_qos_in_both_versions() {
    for (version, flag) in [(ProtocolVersion::V311, "mqttv311"), (ProtocolVersion::V5, "mqttv5")] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let port = listener.local_addr().expect("address").port().to_string();
            let qos_arg = (qos as u8).to_string();
            let mut args = vec![
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                flag,
                "-i",
                "codec-test",
                "-q",
                &qos_arg,
                "-t",
                "sensors/sim-0042/temperature",
                "-m",
                "21.5",
            ];
            if version == ProtocolVersion::V5 {
                args.extend([
                    "-D",
                    "publish",
                    "user-property",
                    "unit",
                    "C",
                    "-D",
                    "publish",
                    "content-type",
                    "text/plain",
                ]);
                args.extend(["-D", "publish", "message-expiry-interval", "60"]);
            }
            let child = spawn("mosquitto_pub", &args);
            let mut peer = Peer::accept(&listener);
            let connect = peer.connack();
            assert_eq!((connect.protocol, connect.client_id.as_str()), (version, "codec-test"));
            let Packet::Publish(publish) = peer.read() else { panic!("expected a PUBLISH") };
            assert_eq!((publish.qos, publish.topic.as_str()), (qos, "sensors/sim-0042/temperature"));
            assert_eq!(&publish.payload[..], b"21.5");
            if version == ProtocolVersion::V5 {
                let users: Vec<_> = publish.properties.user_properties.iter().collect();
                assert_eq!(users, vec![(MqttStr::from_static("unit"), MqttStr::from_static("C"))]);
                assert_eq!(publish.properties.content_type, Some(MqttStr::from_static("text/plain")));
                assert_eq!(publish.properties.message_expiry_interval, Some(60));
            }
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => peer.send(Packet::PubAck(PubResponse::new(publish.packet_id.expect("an id")))),
                QoS::ExactlyOnce => {
                    let id = publish.packet_id.expect("an id");
                    peer.send(Packet::PubRec(PubResponse::new(id)));
                    assert_eq!(peer.read(), Packet::PubRel(PubResponse::new(id)));
                    peer.send(Packet::PubComp(PubResponse::new(id)));
                }
            }
            assert_eq!(peer.read(), Packet::Disconnect(Disconnect::default()));
            finish(child);
        }
    }
}

#[test]
fn mosquitto_sub_receives_a_shared_frame_in_both_versions() {
    for (version, flag) in [(ProtocolVersion::V311, "mqttv311"), (ProtocolVersion::V5, "mqttv5")] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port().to_string();
        let args =
            ["-h", "127.0.0.1", "-p", &port, "-V", flag, "-q", "1", "-t", "sensors/+/temperature", "-C", "1", "-v"];
        let child = spawn("mosquitto_sub", &args);
        let mut peer = Peer::accept(&listener);
        peer.connack();
        let Packet::Subscribe(subscribe) = peer.read() else { panic!("expected a SUBSCRIBE") };
        let filters: Vec<_> = subscribe.filters.iter().collect();
        assert_eq!(filters.len(), 1);
        assert_eq!((filters[0].0.as_str(), filters[0].1.qos), ("sensors/+/temperature", QoS::AtLeastOnce));
        peer.send(Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            properties: Properties::default(),
            reasons: ReasonCodes::new([ReasonCode::GrantedQoS1]),
        }));

        let properties: Properties =
            PropertyValues { content_type: Some(MqttStr::from_static("text/plain")), ..Default::default() }.into();
        let shared = SharedPublish::new(
            version,
            &MqttStr::from_static("sensors/sim-0042/temperature"),
            &properties,
            Bytes::from_static(b"21.5"),
        )
        .expect("encodable");
        let id = NonZeroU16::new(9).expect("non-zero");
        let delivery = Delivery {
            qos: QoS::AtLeastOnce,
            packet_id: Some(id),
            topic_alias: TopicAliasUse::None,
            subscription_ids: if version == ProtocolVersion::V5 { &[7] } else { &[] },
            message_expiry_interval: Some(30),
            ..Default::default()
        };
        peer.send_frame(shared.frame(&delivery).expect("encodable"));
        assert_eq!(peer.read(), Packet::PubAck(PubResponse::new(id)));
        assert_eq!(peer.read(), Packet::Disconnect(Disconnect::default()));
        assert_eq!(finish(child), "sensors/sim-0042/temperature 21.5\n");
    }
}
