//! Misbehaving sockets: idle ones, garbage, half-finished CONNECTs and WebSocket upgrades
//! must not keep normal clients out, and a stuck CONNECT is cut off after the connect timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{HANG_GUARD, Paho, TestBroker};

/// The first 11 bytes of a 30-byte MQTT 3.1.1 CONNECT: enough to recognise the protocol,
/// not enough for a whole packet.
const PARTIAL_CONNECT: &[u8] = b"\x10\x1e\x00\x04MQTT\x04\x02\x00";

/// A WebSocket upgrade request for `/mqtt` with the MQTT subprotocol, as browsers send it.
const WS_UPGRADE: &[u8] = b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

/// Deterministic bytes that are not MQTT (xorshift, so the test needs no random crate and repeats exactly).
fn garbage(seed: u32, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        })
        .collect()
}

async fn open(addr: SocketAddr, first_bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("the broker accepts TCP connections");
    if !first_bytes.is_empty() {
        stream.write_all(first_bytes).await.expect("the broker accepts bytes");
    }
    stream
}

/// Completes a WebSocket upgrade on `/mqtt` and returns the socket, positioned after the 101 response.
async fn upgraded(addr: SocketAddr) -> TcpStream {
    let mut stream = open(addr, WS_UPGRADE).await;
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(HANG_GUARD, stream.read(&mut byte)).await.expect("the upgrade is answered");
        assert_eq!(read.expect("the upgrade response can be read"), 1, "the broker answered the upgrade");
        response.push(byte[0]);
    }
    assert!(response.starts_with(b"HTTP/1.1 101"), "upgrade accepted: {}", String::from_utf8_lossy(&response));
    stream
}

/// A binary WebSocket frame as a client must send it (masked; the zero mask leaves the payload as is).
fn ws_binary_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126, "short frames only");
    let mut frame = vec![0x82, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    frame
}

#[tokio::test]
async fn idle_and_garbage_sockets_do_not_keep_clients_out() {
    let broker = TestBroker::start().await;
    let mut nuisances = Vec::new();
    for (port, addr) in [("tcp", broker.mqtt), ("ws", broker.ws)] {
        for n in 0..20 {
            nuisances.push(open(addr, b"").await);
            nuisances.push(open(addr, &garbage(n, 64)).await);
        }
        nuisances.push(open(addr, PARTIAL_CONNECT).await);
        nuisances.push(open(addr, b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\n").await);
        nuisances.push(open(addr, &[0x10, 0xff, 0xff, 0xff]).await);
        if port == "ws" {
            nuisances.push(upgraded(addr).await);
            let mut stuck = upgraded(addr).await;
            stuck.write_all(&ws_binary_frame(PARTIAL_CONNECT)).await.expect("the broker accepts frames");
            nuisances.push(stuck);
            let mut noisy = upgraded(addr).await;
            noisy.write_all(&ws_binary_frame(&garbage(99, 100))).await.expect("the broker accepts frames");
            nuisances.push(noisy);
        }
    }

    // The Paho script waits up to 15 s for CONNACK: generous, and no timing is asserted beyond it.
    for (transport, paho) in [("tcp v5", Paho::tcp(broker.mqtt)), ("ws v3.1.1", Paho::ws(broker.ws).v3())] {
        let events = paho.sub("still/working", 1).publish("still/working", 1, false, transport).expect(1).run().await;
        assert_eq!(events.connack_reason(), 0, "{transport} client connects among {} nuisances", nuisances.len());
        assert_eq!(events.payloads(), [transport]);
    }
    drop(nuisances);
    broker.stop().await;
}

#[tokio::test]
async fn a_connect_that_never_completes_is_closed_after_the_connect_timeout() {
    let broker = TestBroker::start_with(std::sync::Arc::new(ferrite_broker::AllowAll), |config| {
        config.connect_timeout = Duration::from_secs(1);
    })
    .await;

    let mut tcp = open(broker.mqtt, PARTIAL_CONNECT).await;
    assert_closed_by_broker(&mut tcp, "TCP").await;

    let mut ws = upgraded(broker.ws).await;
    ws.write_all(&ws_binary_frame(PARTIAL_CONNECT)).await.expect("the broker accepts frames");
    assert_closed_by_broker(&mut ws, "WebSocket").await;

    broker.stop().await;
}

/// Reads until the broker closes the connection; anything but end-of-stream or a reset fails.
async fn assert_closed_by_broker(stream: &mut TcpStream, what: &str) {
    let mut buffer = [0u8; 256];
    loop {
        let read = tokio::time::timeout(HANG_GUARD, stream.read(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("{what}: the broker never closed the stuck connection"));
        match read {
            Ok(0) => return,
            // A WebSocket close frame, or a v3.1.1 CONNACK refusal, may come before the end of the stream.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("{what}: unexpected read error {e}"),
        }
    }
}

#[tokio::test]
async fn malformed_packets_after_connect_only_end_their_own_connection() {
    let broker = TestBroker::start().await;
    let mut watcher = Paho::tcp(broker.mqtt).sub("alive/#", 1).hold().spawn();
    watcher.wait_for("ready").await;

    // A valid MQTT 3.1.1 CONNECT (client id "bad-n"), then random bytes where packets should be.
    for n in 0..100u32 {
        let client_id = format!("bad-{n:03}");
        let mut connect = vec![0x10, 12 + client_id.len() as u8, 0x00, 0x04];
        connect.extend_from_slice(b"MQTT\x04\x02\x00\x3c");
        connect.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
        connect.extend_from_slice(client_id.as_bytes());
        let mut stream = open(broker.mqtt, &connect).await;
        let _ = stream.write_all(&garbage(n + 1000, 200)).await;
    }

    let events = Paho::tcp(broker.mqtt).v3().publish("alive/yes", 1, false, "still serving").run().await;
    assert_eq!(events.connack_reason(), 0);
    let message = watcher.wait_for("message").await;
    assert_eq!(message["payload"], "still serving", "the watcher kept its connection");
    watcher.kill().await;
    broker.stop().await;
}

/// One anonymous client subscribing to ever more distinct filters is refused past its allowance (1,000), in the
/// SUBACK, without losing the connection or what it already holds; another client still subscribes.
#[tokio::test]
async fn a_subscription_flood_is_refused_past_the_allowance() {
    use bytes::BytesMut;
    use ferrite_mqtt_codec::{
        Connect, MqttStr, Packet, Properties, ProtocolVersion, QoS, Subscribe, SubscribeFilters, SubscriptionOptions,
    };

    let broker = TestBroker::start().await;
    let version = ProtocolVersion::V311;
    let mut stream = TcpStream::connect(broker.mqtt).await.expect("the broker accepts");
    let connect = Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: MqttStr::from_static("subscription-flood"),
        will: None,
        username: None,
        password: None,
    };
    let send = |packet: Packet| {
        let mut buf = BytesMut::new();
        packet.encode(version, &mut buf).expect("the packet encodes");
        buf
    };
    stream.write_all(&send(Packet::Connect(Box::new(connect)))).await.expect("CONNECT is sent");
    let mut received = BytesMut::new();
    let mut next = async |stream: &mut TcpStream| loop {
        if let Some(packet) =
            ferrite_mqtt_codec::decode(&mut received, version, u32::MAX).expect("the broker's packets decode")
        {
            return packet;
        }
        let read = tokio::time::timeout(HANG_GUARD, stream.read_buf(&mut received)).await.expect("the broker answers");
        assert!(read.expect("the socket reads") > 0, "the broker closed the connection");
    };
    assert!(matches!(next(&mut stream).await, Packet::ConnAck(ack) if !ack.reason.is_error()), "CONNACK accepts");

    let filters: Vec<MqttStr> =
        (0..1001).map(|n| MqttStr::try_from(format!("flood/{n}")).expect("a valid filter")).collect();
    let options = SubscriptionOptions::qos(QoS::AtMostOnce);
    let subscribe = Subscribe {
        packet_id: std::num::NonZeroU16::MIN,
        properties: Properties::default(),
        filters: SubscribeFilters::new(filters.iter().map(|filter| (filter, options))).expect("valid filters"),
    };
    stream.write_all(&send(Packet::Subscribe(subscribe))).await.expect("SUBSCRIBE is sent");
    let Packet::SubAck(suback) = next(&mut stream).await else { panic!("the broker answers SUBSCRIBE with SUBACK") };
    let reasons: Vec<_> = suback.reasons.iter().collect();
    assert_eq!(reasons.len(), 1001, "one reason per filter");
    assert!(reasons[..1000].iter().all(|reason| !reason.is_error()), "the first 1,000 are granted");
    assert!(reasons[1000].is_error(), "the 1,001st is refused: {:?}", reasons[1000]);

    // The connection still serves: a ping is answered; and another client is not affected.
    stream.write_all(&send(Packet::PingReq)).await.expect("PINGREQ is sent");
    assert!(matches!(next(&mut stream).await, Packet::PingResp), "the flooding client is still served");
    let other = Paho::tcp(broker.mqtt).client_id("after-flood").sub("flood/other", 0).run().await;
    assert_eq!(other.connack_reason(), 0, "another client connects and subscribes");
    drop(stream);
    broker.stop().await;
}
