//! A lean MQTT 3.1.1 connection for load generation.
//!
//! rumqttc's event loop writes and flushes every publish on its own (one `write` system call per message),
//! so at a few hundred thousand messages per second the client would measure itself.
//! Here the hot path is ours: PUBLISH frames are encoded straight into one buffer and written in batches,
//! and incoming PUBLISH frames are decoded in place without allocating.
//! The rarer packets (CONNECT, SUBSCRIBE, acknowledgements) go through rumqttc's own codec.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Buf, BufMut, BytesMut};
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, PubRel, Subscribe};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use rumqttc::{SubscribeReasonCode, Unsubscribe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest packet we accept or send; far above any benchmark payload.
pub const MAX_PACKET: usize = 16 * 1024 * 1024;

/// Read buffer growth step: big enough that one read usually drains the socket.
const READ_CHUNK: usize = 64 * 1024;

/// How long the handshake (CONNECT -> CONNACK, SUBSCRIBE -> SUBACK) may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The MQTT packet type of PUBLISH in the high nibble of the first byte.
const PUBLISH: u8 = 3;

/// What arrived on a connection.
#[derive(Debug)]
pub enum Incoming<'a> {
    /// A PUBLISH, decoded in place: the payload borrows the read buffer.
    Publish { qos: u8, pkid: u16, topic_len: usize, payload: &'a [u8] },
    /// Any other packet, through rumqttc's codec.
    Other(Packet),
}

/// Appends one PUBLISH frame to `buf`: `payload_len` bytes, starting with `head` and padded with zeros.
pub fn encode_publish(buf: &mut BytesMut, topic: &str, qos: u8, pkid: u16, head: &[u8], payload_len: usize) {
    debug_assert!(head.len() <= payload_len);
    let remaining = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload_len;
    buf.reserve(5 + remaining);
    buf.put_u8((PUBLISH << 4) | (qos << 1));
    put_remaining_length(buf, remaining);
    // Topics are short; a longer one would be refused by validation before a run starts.
    buf.put_u16(topic.len() as u16);
    buf.put_slice(topic.as_bytes());
    if qos > 0 {
        buf.put_u16(pkid);
    }
    buf.put_slice(head);
    buf.put_bytes(0, payload_len - head.len());
}

fn put_remaining_length(buf: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

/// The fixed header of the frame at the start of `buf`: (first byte, header length, remaining length),
/// or `None` while the header is incomplete.
fn fixed_header(buf: &[u8]) -> anyhow::Result<Option<(u8, usize, usize)>> {
    let Some(&first) = buf.first() else { return Ok(None) };
    let mut len = 0usize;
    for idx in 0..4 {
        let Some(&byte) = buf.get(1 + idx) else { return Ok(None) };
        len |= usize::from(byte & 0x7f) << (7 * idx);
        if byte & 0x80 == 0 {
            if len > MAX_PACKET {
                bail!("the broker sent a packet of {len} bytes");
            }
            return Ok(Some((first, 2 + idx, len)));
        }
    }
    bail!("malformed remaining length from the broker")
}

/// Decodes the next complete packet at the start of `buf` and returns it with its frame length;
/// the caller advances `buf` by that length once done with a borrowed publish.
pub fn peek_packet(buf: &mut BytesMut) -> anyhow::Result<Option<(Incoming<'_>, usize)>> {
    let Some((first, header, remaining)) = fixed_header(buf)? else { return Ok(None) };
    let frame = header + remaining;
    if buf.len() < frame {
        return Ok(None);
    }
    if first >> 4 == PUBLISH {
        let qos = (first >> 1) & 0b11;
        let body = &buf[header..frame];
        if body.len() < 2 {
            bail!("truncated PUBLISH from the broker");
        }
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let id_len = if qos > 0 { 2 } else { 0 };
        if body.len() < 2 + topic_len + id_len || qos > 2 {
            bail!("malformed PUBLISH from the broker");
        }
        let pkid = if qos > 0 { u16::from_be_bytes([body[2 + topic_len], body[3 + topic_len]]) } else { 0 };
        let payload = &body[2 + topic_len + id_len..];
        return Ok(Some((Incoming::Publish { qos, pkid, topic_len, payload }, frame)));
    }
    // rumqttc splits the frame off itself; report a zero length so the caller does not advance again.
    match Packet::read(buf, MAX_PACKET) {
        Ok(packet) => Ok(Some((Incoming::Other(packet), 0))),
        Err(CodecError::InsufficientBytes(_)) => Ok(None),
        Err(error) => bail!("undecodable packet from the broker: {error:?}"),
    }
}

/// One TCP connection to the broker with its buffers.
pub struct Conn {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
}

/// Connection options shared by every client of a run.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub addr: String,
    pub keep_alive: Duration,
    pub credentials: Option<(String, String)>,
}

impl Conn {
    /// Opens the socket, sends CONNECT (clean session) and waits for a successful CONNACK.
    pub async fn connect(options: &ConnectOptions, client_id: &str) -> anyhow::Result<Conn> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, Self::connect_inner(options, client_id))
            .await
            .with_context(|| format!("no CONNACK from {} within {HANDSHAKE_TIMEOUT:?}", options.addr))?
    }

    async fn connect_inner(options: &ConnectOptions, client_id: &str) -> anyhow::Result<Conn> {
        let stream =
            TcpStream::connect(&options.addr).await.with_context(|| format!("cannot connect to {}", options.addr))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn { stream, rbuf: BytesMut::with_capacity(READ_CHUNK), wbuf: BytesMut::new() };
        let mut connect = Connect::new(client_id);
        connect.keep_alive = u16::try_from(options.keep_alive.as_secs()).unwrap_or(u16::MAX);
        connect.clean_session = true;
        if let Some((user, pass)) = &options.credentials {
            connect.set_login(user, pass);
        }
        conn.send(Packet::Connect(connect))?;
        conn.flush().await?;
        match conn.next_control().await? {
            Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success => Ok(conn),
            Packet::ConnAck(ack) => bail!("the broker refused the connection: {:?}", ack.code),
            other => bail!("expected CONNACK, got {other:?}"),
        }
    }

    /// Subscribes to `filter` and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        let mut subscribe = Subscribe::new(filter, qos);
        subscribe.pkid = 1;
        self.send(Packet::Subscribe(subscribe))?;
        self.flush().await?;
        let packet = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.next_control())
            .await
            .with_context(|| format!("no SUBACK for {filter:?} within {HANDSHAKE_TIMEOUT:?}"))??;
        match packet {
            Packet::SubAck(ack) if ack.return_codes.iter().all(|c| *c != SubscribeReasonCode::Failure) => Ok(()),
            Packet::SubAck(_) => bail!("the broker refused the subscription to {filter:?}"),
            other => bail!("expected SUBACK, got {other:?}"),
        }
    }

    /// Queues an unsubscribe (not awaited).
    pub fn unsubscribe(&mut self, filter: &str) -> anyhow::Result<()> {
        let mut unsubscribe = Unsubscribe::new(filter);
        unsubscribe.pkid = 2;
        self.send(Packet::Unsubscribe(unsubscribe))
    }

    /// Waits for the next packet that is not a PUBLISH (used only during the handshake).
    async fn next_control(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some((incoming, len)) = peek_packet(&mut self.rbuf)? {
                let packet = match incoming {
                    Incoming::Other(packet) => Some(packet),
                    Incoming::Publish { .. } => None,
                };
                self.rbuf.advance(len);
                if let Some(packet) = packet {
                    return Ok(packet);
                }
                continue;
            }
            self.read_more().await?;
        }
    }

    /// Encodes a control packet into the write buffer.
    pub fn send(&mut self, packet: Packet) -> anyhow::Result<()> {
        packet.write(&mut self.wbuf, MAX_PACKET).map_err(|error| anyhow::anyhow!("cannot encode {error:?}"))?;
        Ok(())
    }

    pub fn send_puback(&mut self, pkid: u16) {
        // Encoding a 4-byte acknowledgement cannot fail.
        let _ = PubAck::new(pkid).write(&mut self.wbuf);
    }

    pub fn send_pubrec(&mut self, pkid: u16) {
        let _ = PubRec::new(pkid).write(&mut self.wbuf);
    }

    pub fn send_pubrel(&mut self, pkid: u16) {
        let _ = PubRel::new(pkid).write(&mut self.wbuf);
    }

    pub fn send_pubcomp(&mut self, pkid: u16) {
        let _ = PubComp::new(pkid).write(&mut self.wbuf);
    }

    pub fn send_pingreq(&mut self) {
        self.wbuf.put_slice(&[0xc0, 0x00]);
    }

    pub fn send_disconnect(&mut self) {
        self.wbuf.put_slice(&[0xe0, 0x00]);
    }

    /// Writes out everything buffered.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await.context("write to the broker failed")?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads at least one byte (cancel safe: nothing is lost if the future is dropped).
    pub async fn read_more(&mut self) -> anyhow::Result<()> {
        self.rbuf.reserve(READ_CHUNK);
        let read = self.stream.read_buf(&mut self.rbuf).await.context("read from the broker failed")?;
        if read == 0 {
            bail!("the broker closed the connection");
        }
        Ok(())
    }

    /// Reads what is already there without waiting; false when nothing was.
    pub fn try_read_more(&mut self) -> anyhow::Result<bool> {
        self.rbuf.reserve(READ_CHUNK);
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => bail!("the broker closed the connection"),
            Ok(_) => Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(error) => Err(error).context("read from the broker failed"),
        }
    }
}

/// The QoS level as a number (0, 1, 2).
pub fn qos_level(qos: QoS) -> u8 {
    match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our hand-encoded frame must be what rumqttc's codec reads, for every QoS and across the
    /// one-to-two-byte boundary of the remaining length.
    #[test]
    fn publish_frames_round_trip_through_rumqttc() {
        for qos in [0u8, 1, 2] {
            for len in [0usize, 8, 100, 127, 200, 20_000] {
                let mut buf = BytesMut::new();
                let head = [7u8; 8];
                let head = &head[..len.min(8)];
                encode_publish(&mut buf, "bench/x/p1", qos, 42, head, len);
                let mut copy = buf.clone();
                match Packet::read(&mut copy, MAX_PACKET).expect("rumqttc decodes our frame") {
                    Packet::Publish(publish) => {
                        assert_eq!(publish.topic, "bench/x/p1");
                        assert_eq!(qos_level(publish.qos), qos);
                        assert_eq!(publish.pkid, if qos > 0 { 42 } else { 0 });
                        assert_eq!(publish.payload.len(), len);
                        assert_eq!(&publish.payload[..head.len()], head);
                    }
                    other => panic!("decoded as {other:?}"),
                }
                let (incoming, frame) = peek_packet(&mut buf).expect("valid").expect("complete");
                match incoming {
                    Incoming::Publish { qos: got_qos, pkid, topic_len, payload } => {
                        assert_eq!((got_qos, topic_len, payload.len()), (qos, 10, len));
                        assert_eq!(pkid, if qos > 0 { 42 } else { 0 });
                    }
                    other => panic!("decoded as {other:?}"),
                }
                assert_eq!(frame, buf.len());
            }
        }
    }

    #[test]
    fn incomplete_frames_wait_for_more_bytes() {
        let mut full = BytesMut::new();
        encode_publish(&mut full, "t", 1, 1, &[], 300);
        for cut in [0, 1, 2, 3, 10, full.len() - 1] {
            let mut part = BytesMut::from(&full[..cut]);
            assert!(peek_packet(&mut part).expect("no error").is_none(), "cut at {cut}");
        }
        let mut ack = BytesMut::new();
        PubAck::new(9).write(&mut ack).expect("encodes");
        let mut part = BytesMut::from(&ack[..3]);
        assert!(peek_packet(&mut part).expect("no error").is_none());
        let (incoming, frame) = peek_packet(&mut ack).expect("valid").expect("complete");
        assert!(matches!(incoming, Incoming::Other(Packet::PubAck(PubAck { pkid: 9 }))), "{incoming:?}");
        assert_eq!(frame, 0);
        assert!(ack.is_empty());
    }

    #[test]
    fn malformed_length_is_an_error() {
        let mut buf = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert!(peek_packet(&mut buf).is_err());
    }
}
