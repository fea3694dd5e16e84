#!/usr/bin/env python3
"""Broker conformance scenarios, driven by Eclipse Paho (paho-mqtt 2) and a small raw MQTT client.

Each scenario checks one behaviour that the Eclipse Paho interoperability suites check (written here from
the behaviours and the MQTT 3.1.1 / 5.0 specifications, not from their code):

    python3 conformance.py --host 127.0.0.1 --port 1883 --version 3|5 <scenario>

It prints one JSON object per line on stdout: the steps it observed, then {"event": "pass"} and exit 0, or
{"event": "fail", "reason": ...} (also on stderr) and exit 1. Exit 2 is a usage error (unknown scenario, or a
scenario only MQTT 5 has asked for with --version 3); exit 3 means paho-mqtt is missing.

Paho's high-level client does the work wherever it can express the check; the raw client is used where a
check needs the wire itself: the DUP flag and packet ids of redelivered messages, a client that stays silent,
a zero-length client id with clean session 0 (paho refuses to send it), topic aliases on the wire, packet
sizes, and holding acknowledgements back to test the broker's flow control.

Broker configuration some scenarios need (the Rust tests and scripts/conformance-mosquitto.sh set it up):
- subscribe_failure: the broker denies subscriptions to `test/nosubscribe` (and allows everything else);
- server_keep_alive: the broker has a Server Keep Alive shorter than 60 s (the client asks for 60 s);
- maximum_packet_size: the broker announces a Maximum Packet Size in CONNACK;
- topic_alias_client: the broker accepts topic aliases from clients (Topic Alias Maximum >= 1).
"""

import argparse
import json
import os
import queue
import socket
import struct
import sys
import threading
import time
import uuid

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
except ImportError:
    print("paho-mqtt not installed: pip install paho-mqtt", file=sys.stderr)
    sys.exit(3)

# How long any one expected step may take before the scenario fails: a guard against hangs, generous for a
# loaded machine. Checks that something does NOT happen wait ABSENCE_WINDOW instead (a loaded machine can only
# make such a check pass by mistake, never fail by mistake).
STEP_TIMEOUT = 20.0
ABSENCE_WINDOW = 2.0
# Keep alive of the silent client in `keepalive` (seconds): short, so the scenario is quick.
SILENT_KEEP_ALIVE = 2
# Will Delay Interval in `will_delay` and Session Expiry Interval in `session_expiry` (seconds).
WILL_DELAY = 3
SESSION_EXPIRY = 3
# What a client announces in `flow_control` (Receive Maximum) and `maximum_packet_size` (Maximum Packet Size).
CLIENT_RECEIVE_MAXIMUM = 2
CLIENT_MAXIMUM_PACKET_SIZE = 256
# Topic Alias Maximum the client announces in `topic_alias_server`.
CLIENT_TOPIC_ALIAS_MAXIMUM = 2
# A subscription the broker under test is configured to refuse.
DENIED_FILTER = "test/nosubscribe"

EMIT_LOCK = threading.Lock()


def emit(**event):
    line = json.dumps(event, default=repr) + "\n"
    with EMIT_LOCK:
        sys.stdout.write(line)
        sys.stdout.flush()


class Failure(Exception):
    """A broker behaviour that differs from what the scenario requires."""


def check(condition, reason):
    if not condition:
        raise Failure(reason)


def reason_value(rc):
    return getattr(rc, "value", rc)


# ---------------------------------------------------------------------------------------------------------------
# Eclipse Paho, wrapped so a scenario reads events from queues instead of callbacks.


class Paho:
    """One paho-mqtt client connection; messages and acknowledgements arrive on queues."""

    def __init__(self, ctx, client_id="", clean=True, session_expiry=None, will=None, connect_props=None):
        self.ctx = ctx
        self.client_id = client_id
        self.v5 = ctx.v5
        kwargs = dict(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
        )
        if not self.v5:
            kwargs["clean_session"] = clean
        self.client = mqtt.Client(**kwargs)
        self.clean = clean
        self.session_expiry = session_expiry
        self.connect_props = connect_props or {}
        if will is not None:
            topic, payload, qos, retain, will_props = will
            properties = None
            if will_props:
                properties = Properties(PacketTypes.WILLMESSAGE)
                for name, value in will_props.items():
                    setattr(properties, name, value)
            self.client.will_set(topic, payload, qos=qos, retain=retain, properties=properties)
        self.connacks = queue.Queue()
        self.subacks = queue.Queue()
        self.messages = queue.Queue()
        self.acks = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, _c, _u, flags, rc, properties):
        self.connacks.put((reason_value(rc), bool(flags.session_present), properties))

    def _on_subscribe(self, _c, _u, mid, rcs, properties):
        self.subacks.put((mid, [reason_value(rc) for rc in rcs]))

    def _on_message(self, _c, _u, msg):
        self.messages.put(
            dict(topic=msg.topic, payload=bytes(msg.payload), qos=msg.qos, retain=bool(msg.retain), props=msg.properties)
        )

    def _on_publish(self, _c, _u, mid, rc, properties):
        self.acks.put((mid, reason_value(rc)))

    def _on_disconnect(self, _c, _u, flags, rc, properties):
        self.connacks.put(("closed", False, None))

    def connect(self, keepalive=60):
        """Connects and returns (reason, session_present, CONNACK properties); fails on a refusal."""
        properties = None
        if self.v5:
            properties = Properties(PacketTypes.CONNECT)
            if self.session_expiry is not None:
                properties.SessionExpiryInterval = self.session_expiry
            for name, value in self.connect_props.items():
                setattr(properties, name, value)
        kwargs = dict(keepalive=keepalive, properties=properties)
        if self.v5:
            kwargs["clean_start"] = self.clean
        self.client.connect(self.ctx.host, self.ctx.port, **kwargs)
        self.client.loop_start()
        try:
            reason, present, props = self.connacks.get(timeout=STEP_TIMEOUT)
        except queue.Empty:
            raise Failure(f"client {self.client_id!r}: no CONNACK within {STEP_TIMEOUT} s")
        check(reason != "closed", f"client {self.client_id!r}: connection closed before CONNACK")
        check(reason == 0, f"client {self.client_id!r}: CONNACK refused with reason {reason}")
        emit(event="connack", client=self.client_id, session_present=present)
        return reason, present, props

    def subscribe(self, filters, props=None):
        """Subscribes [(filter, qos)] in one SUBSCRIBE and returns the SUBACK reason codes."""
        properties = None
        if props:
            properties = Properties(PacketTypes.SUBSCRIBE)
            for name, value in props.items():
                setattr(properties, name, value)
        _, mid = self.client.subscribe(filters, properties=properties)
        try:
            got, reasons = self.subacks.get(timeout=STEP_TIMEOUT)
        except queue.Empty:
            raise Failure(f"client {self.client_id!r}: no SUBACK for {filters}")
        check(got == mid, f"SUBACK for packet {got}, expected {mid}")
        emit(event="suback", client=self.client_id, filters=[f for f, _ in filters], reasons=reasons)
        return reasons

    def publish(self, topic, payload, qos=0, retain=False, props=None):
        """Publishes and, for QoS 1/2, waits until the flow completes; returns the v5 reason (0 for QoS 0)."""
        properties = None
        if props:
            properties = Properties(PacketTypes.PUBLISH)
            for name, value in props.items():
                setattr(properties, name, value)
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        check(info.rc == mqtt.MQTT_ERR_SUCCESS, f"paho could not send the publish to {topic!r}: {info.rc}")
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            try:
                mid, reason = self.acks.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise Failure(f"publish to {topic!r} (QoS {qos}) was not acknowledged")
            if mid == info.mid:
                return reason

    def next_message(self, timeout=STEP_TIMEOUT):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def expect_message(self, what):
        message = self.next_message()
        check(message is not None, f"client {self.client_id!r}: no message within {STEP_TIMEOUT} s ({what})")
        return message

    def collect(self, count, window=ABSENCE_WINDOW, timeout=STEP_TIMEOUT):
        """Waits up to `timeout` for `count` messages, then keeps listening for `window` seconds for any extra ones."""
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            message = self.next_message(max(0.0, deadline - time.monotonic()))
            if message is None:
                break
            got.append(message)
        while True:
            message = self.next_message(window)
            if message is None:
                return got
            got.append(message)

    def disconnect(self):
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self):
        """Closes the socket without DISCONNECT, as a crashed client would."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


def prop(message, name, default=None):
    props = message.get("props")
    return getattr(props, name, default) if props is not None else default


# ---------------------------------------------------------------------------------------------------------------
# A raw MQTT client: just enough of the wire to see what the broker really sends.

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14


def varint(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text):
    data = text.encode("utf-8")
    return struct.pack("!H", len(data)) + data


def binary(data):
    return struct.pack("!H", len(data)) + data


def pack_props(packet_type, props):
    properties = Properties(packet_type)
    for name, value in (props or {}).items():
        setattr(properties, name, value)
    return properties.pack()


class Closed(Exception):
    """The broker closed the connection."""


class Packet:
    def __init__(self, kind, flags, body, size):
        self.kind, self.flags, self.body, self.size = kind, flags, body, size

    def __repr__(self):
        return f"Packet(type={self.kind}, flags={self.flags:#x}, {len(self.body)} body bytes)"


class Raw:
    """One MQTT connection spoken byte by byte."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.v5 = ctx.v5
        self.sock = socket.create_connection((ctx.host, ctx.port), timeout=STEP_TIMEOUT)
        self.buffer = b""
        self.next_id = 1

    def send(self, data):
        self.sock.sendall(data)

    def packet(self, first_byte, body):
        self.send(bytes([first_byte]) + varint(len(body)) + body)

    def recv(self, timeout=STEP_TIMEOUT):
        """The next packet, None after `timeout`, or raises Closed."""
        deadline = time.monotonic() + timeout
        while True:
            parsed = self._parse()
            if parsed is not None:
                return parsed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            except (ConnectionResetError, BrokenPipeError) as error:
                raise Closed(f"reset ({type(error).__name__})")
            if not data:
                raise Closed("closed (end of stream)")
            self.buffer += data

    def _parse(self):
        if len(self.buffer) < 2:
            return None
        length, multiplier, index = 0, 1, 1
        while True:
            if index >= len(self.buffer):
                return None
            byte = self.buffer[index]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            index += 1
            if not byte & 0x80:
                break
        if len(self.buffer) < index + length:
            return None
        first = self.buffer[0]
        body = self.buffer[index : index + length]
        self.buffer = self.buffer[index + length :]
        return Packet(first >> 4, first & 0x0F, body, index + length)

    def recv_kind(self, kind, what, timeout=STEP_TIMEOUT):
        """The next packet, which must be of type `kind`."""
        try:
            packet = self.recv(timeout)
        except Closed:
            raise Failure(f"the broker closed the connection while we waited for {what}")
        check(packet is not None, f"nothing received within {timeout} s while waiting for {what}")
        check(packet.kind == kind, f"waiting for {what}, got {packet}")
        return packet

    def connect(self, client_id, clean=True, keepalive=60, props=None, will=None):
        """Sends CONNECT; returns the CONNACK as dict(reason, session_present, props)."""
        flags = 0x02 if clean else 0
        payload = utf8(client_id)
        if will is not None:
            topic, message, qos, retain, will_props = will
            flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
            if self.v5:
                payload += pack_props(PacketTypes.WILLMESSAGE, will_props)
            payload += utf8(topic) + binary(message)
        body = utf8("MQTT") + bytes([5 if self.v5 else 4, flags]) + struct.pack("!H", keepalive)
        if self.v5:
            body += pack_props(PacketTypes.CONNECT, props)
        self.packet(0x10, body + payload)
        return self.read_connack()

    def read_connack(self):
        packet = self.recv_kind(CONNACK, "CONNACK")
        result = dict(session_present=bool(packet.body[0] & 1), reason=packet.body[1], props=None)
        if self.v5 and len(packet.body) > 2:
            result["props"] = Properties(PacketTypes.CONNACK).unpack(packet.body[2:])[0]
        return result

    def packet_id(self):
        pid = self.next_id
        self.next_id = self.next_id % 65535 + 1
        return pid

    def subscribe(self, filters, props=None):
        """Subscribes [(filter, options byte)] and returns the SUBACK reason codes."""
        pid = self.packet_id()
        body = struct.pack("!H", pid)
        if self.v5:
            body += pack_props(PacketTypes.SUBSCRIBE, props)
        for topic_filter, options in filters:
            body += utf8(topic_filter) + bytes([options])
        self.packet(0x82, body)
        packet = self.recv_kind(SUBACK, "SUBACK")
        check(struct.unpack("!H", packet.body[:2])[0] == pid, "SUBACK for another packet id")
        rest = packet.body[2:]
        if self.v5:
            _, used = Properties(PacketTypes.SUBACK).unpack(rest)
            rest = rest[used:]
        return list(rest)

    def publish(self, topic, payload, qos=0, retain=False, props=None, pid=None):
        """Sends a PUBLISH; returns its packet id (None for QoS 0)."""
        body = utf8(topic)
        if qos:
            pid = pid or self.packet_id()
            body += struct.pack("!H", pid)
        if self.v5:
            body += pack_props(PacketTypes.PUBLISH, props)
        self.packet(0x30 | (qos << 1) | (1 if retain else 0), body + payload)
        return pid

    def ack(self, kind, pid):
        first = {PUBACK: 0x40, PUBREC: 0x50, PUBREL: 0x62, PUBCOMP: 0x70}[kind]
        self.packet(first, struct.pack("!H", pid))

    def parse_publish(self, packet):
        body = packet.body
        qos = (packet.flags >> 1) & 3
        (topic_len,) = struct.unpack("!H", body[:2])
        topic = body[2 : 2 + topic_len].decode("utf-8")
        rest = body[2 + topic_len :]
        pid = None
        if qos:
            (pid,) = struct.unpack("!H", rest[:2])
            rest = rest[2:]
        props = None
        if self.v5:
            props, used = Properties(PacketTypes.PUBLISH).unpack(rest)
            rest = rest[used:]
        return dict(
            topic=topic,
            payload=bytes(rest),
            qos=qos,
            pid=pid,
            dup=bool(packet.flags & 0x08),
            retain=bool(packet.flags & 0x01),
            props=props,
            size=packet.size,
        )

    def disconnect_reason(self, packet):
        """The reason code of a DISCONNECT from the broker (0 when absent)."""
        return packet.body[0] if packet.body else 0

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def wait_closed(raw, deadline):
    """Reads (and ignores) packets until the broker closes the connection; returns the DISCONNECT reason seen."""
    reason = None
    while True:
        remaining = deadline - time.monotonic()
        check(remaining > 0, "the broker did not close the connection in time")
        try:
            packet = raw.recv(remaining)
        except Closed:
            return reason
        if packet is not None and packet.kind == DISCONNECT:
            reason = raw.disconnect_reason(packet)


# ---------------------------------------------------------------------------------------------------------------
# Scenarios. `ctx` carries host, port, version, and a prefix that keeps topics and client ids of one run apart.


def retained_seen(ctx, expected, name):
    """What a new subscriber to the retained topics gets: at once (a publish acknowledged is a retained value stored),
    or with --retained-eventually what one gets within STEP_TIMEOUT, fresh subscribers trying until one sees `expected`."""
    deadline = time.monotonic() + STEP_TIMEOUT
    attempts = 0
    while True:
        attempts += 1
        subscriber = Paho(ctx, ctx.cid(f"{name}-{attempts}"))
        subscriber.connect()
        subscriber.subscribe([(ctx.topic("retained/+"), 2)])
        wait = 1.0 if ctx.retained_eventually else STEP_TIMEOUT
        window = 0.5 if ctx.retained_eventually and expected else ABSENCE_WINDOW
        got = subscriber.collect(len(expected), window=window, timeout=wait)
        subscriber.disconnect()
        seen = sorted((m["topic"], m["payload"].decode(), m["qos"], m["retain"]) for m in got)
        if seen == expected or not ctx.retained_eventually or time.monotonic() > deadline:
            emit(event=name, messages=seen, attempts=attempts)
            return seen


def scenario_retained(ctx):
    """Retained messages of every QoS reach a later subscriber with RETAIN set; an empty retained message clears."""
    publisher = Paho(ctx, ctx.cid("retain-pub"))
    publisher.connect()
    for qos in (0, 1, 2):
        publisher.publish(ctx.topic(f"retained/q{qos}"), f"retained-{qos}", qos=qos, retain=True)
    expected = [(ctx.topic(f"retained/q{q}"), f"retained-{q}", q, True) for q in (0, 1, 2)]
    seen = retained_seen(ctx, expected, "retained_received")
    check(seen == expected, f"a new subscriber got {seen}, expected {expected}")

    for qos in (0, 1, 2):
        publisher.publish(ctx.topic(f"retained/q{qos}"), b"", qos=qos, retain=True)
    # A QoS 2 round trip after the QoS 0 clear makes sure the broker has handled all three.
    publisher.publish(ctx.topic("retained-barrier"), b"x", qos=2)
    leftovers = retained_seen(ctx, [], "after_clearing")
    check(not leftovers, f"empty retained messages did not clear: a new subscriber still got {leftovers}")
    publisher.disconnect()


def scenario_will(ctx):
    """A client that vanishes without DISCONNECT has its will published; one that disconnects cleanly does not."""
    watcher = Paho(ctx, ctx.cid("will-watch"))
    watcher.connect()
    watcher.subscribe([(ctx.topic("will/#"), 2)])
    polite = Paho(ctx, ctx.cid("will-polite"), will=(ctx.topic("will/polite"), b"must-not-appear", 1, False, None))
    polite.connect()
    polite.disconnect()
    crashing = Paho(ctx, ctx.cid("will-crash"), will=(ctx.topic("will/crash"), b"gone", 1, False, None))
    crashing.connect()
    crashing.drop()
    message = watcher.expect_message("the will of the dropped client")
    emit(event="will_received", topic=message["topic"], payload=message["payload"].decode())
    check(message["topic"] != ctx.topic("will/polite"), "the will of a client that sent DISCONNECT was published")
    check((message["topic"], message["payload"]) == (ctx.topic("will/crash"), b"gone"), f"unexpected {message}")
    extra = watcher.collect(0)
    check(not extra, f"unexpected further messages: {extra}")
    watcher.disconnect()


def scenario_zero_length_clientid(ctx):
    """An empty client id is accepted with clean session (v5: an id is assigned); v3.1.1 refuses it without."""
    first = Paho(ctx, "")
    _, _, props = first.connect()
    if ctx.v5:
        assigned = getattr(props, "AssignedClientIdentifier", None)
        second = Paho(ctx, "")
        _, _, second_props = second.connect()
        other = getattr(second_props, "AssignedClientIdentifier", None)
        emit(event="assigned", first=assigned, second=other)
        check(bool(assigned), "CONNACK carries no Assigned Client Identifier for an empty client id")
        check(assigned != other, "two clients were assigned the same client id")
        second.disconnect()
    first.disconnect()
    if not ctx.v5:
        raw = Raw(ctx)
        connack = raw.connect("", clean=False)
        emit(event="connack_without_clean_session", reason=connack["reason"])
        check(connack["reason"] == 2, f"empty client id with clean session 0: CONNACK code {connack['reason']}, expected 2")
        try:
            wait_closed(raw, time.monotonic() + STEP_TIMEOUT)
        except Failure:
            raise Failure("the broker kept the refused connection open")
        raw.close()


def persistent(ctx, name):
    """A client whose session outlives its connection."""
    return Paho(ctx, ctx.cid(name), clean=False, session_expiry=300 if ctx.v5 else None)


def scenario_offline_queueing(ctx):
    """QoS 1 and 2 messages published while a persistent client is away are delivered when it returns."""
    client = persistent(ctx, "offline")
    client.connect()
    client.subscribe([(ctx.topic("offline/#"), 2)])
    client.disconnect()
    publisher = Paho(ctx, ctx.cid("offline-pub"))
    publisher.connect()
    for qos in (0, 1, 2):
        publisher.publish(ctx.topic(f"offline/q{qos}"), f"queued-{qos}", qos=qos)
    publisher.disconnect()
    back = persistent(ctx, "offline")
    _, present, _ = back.connect()
    check(present, "the broker did not keep the session (session present 0)")
    got = back.collect(2)
    seen = sorted((m["payload"].decode(), m["qos"]) for m in got)
    emit(event="queued_received", messages=seen)
    # QoS 0 messages may be queued too, or not.
    check(
        seen in ([("queued-1", 1), ("queued-2", 2)], [("queued-0", 0), ("queued-1", 1), ("queued-2", 2)]), f"got {seen}"
    )
    back.disconnect()


def scenario_overlapping_subscriptions(ctx):
    """A message matching two subscriptions arrives once at the higher QoS, or once per subscription."""
    client = Paho(ctx, ctx.cid("overlap"))
    client.connect()
    client.subscribe([(ctx.topic("overlap/#"), 2), (ctx.topic("overlap/+"), 1)])
    client.publish(ctx.topic("overlap/x"), b"both", qos=2)
    got = client.collect(1)
    qos = sorted(m["qos"] for m in got)
    emit(event="overlap_received", qos=qos)
    check(all(m["payload"] == b"both" for m in got), f"unexpected payloads {got}")
    check(qos in ([2], [1, 2]), f"received QoS {qos}: expected one message at QoS 2 or two at QoS 1 and 2")
    client.disconnect()


def silent_client_is_closed(ctx, raw, keep_alive, watcher, will_payload):
    """The broker closes a client silent for 1.5x its keep alive (not before 1x), then publishes its will."""
    started = time.monotonic()
    reason = wait_closed(raw, started + keep_alive * 1.5 + STEP_TIMEOUT)
    elapsed = time.monotonic() - started
    emit(event="closed_by_broker", after_s=round(elapsed, 2), keep_alive_s=keep_alive, disconnect_reason=reason)
    check(elapsed >= keep_alive * 0.95, f"closed after {elapsed:.2f} s, before the keep alive of {keep_alive} s ran out")
    message = watcher.expect_message("the will of the silent client")
    check(message["payload"] == will_payload, f"unexpected message {message}")
    if ctx.v5 and reason is not None:
        check(reason == 0x8D, f"DISCONNECT reason {reason:#x}, expected 0x8d (keep alive timeout)")


def scenario_keepalive(ctx):
    """A client that sends nothing for 1.5x its keep alive is disconnected and its will published."""
    watcher = Paho(ctx, ctx.cid("keepalive-watch"))
    watcher.connect()
    watcher.subscribe([(ctx.topic("keepalive/will"), 1)])
    raw = Raw(ctx)
    connack = raw.connect(
        ctx.cid("keepalive-silent"), keepalive=SILENT_KEEP_ALIVE, will=(ctx.topic("keepalive/will"), b"silent", 1, False, None)
    )
    check(connack["reason"] == 0, f"CONNACK {connack['reason']}")
    keep_alive = getattr(connack["props"], "ServerKeepAlive", SILENT_KEEP_ALIVE)
    silent_client_is_closed(ctx, raw, keep_alive, watcher, b"silent")
    watcher.disconnect()


def scenario_server_keep_alive(ctx):
    """v5: the broker's Server Keep Alive replaces the client's in CONNACK, and the broker enforces it."""
    watcher = Paho(ctx, ctx.cid("ska-watch"))
    watcher.connect()
    watcher.subscribe([(ctx.topic("ska/will"), 1)])
    raw = Raw(ctx)
    connack = raw.connect(ctx.cid("ska-silent"), keepalive=60, will=(ctx.topic("ska/will"), b"silent", 1, False, None))
    check(connack["reason"] == 0, f"CONNACK {connack['reason']}")
    server_keep_alive = getattr(connack["props"], "ServerKeepAlive", None)
    emit(event="server_keep_alive", seconds=server_keep_alive)
    check(server_keep_alive is not None, "CONNACK carries no Server Keep Alive (configure the broker with one below 60 s)")
    check(0 < server_keep_alive < 60, f"Server Keep Alive {server_keep_alive}: configure one between 1 and 59 s")
    silent_client_is_closed(ctx, raw, server_keep_alive, watcher, b"silent")
    watcher.disconnect()


def raw_persistent(ctx, name):
    raw = Raw(ctx)
    props = {"SessionExpiryInterval": 300} if ctx.v5 else None
    connack = raw.connect(ctx.cid(name), clean=False, props=props)
    check(connack["reason"] == 0, f"CONNACK {connack['reason']}")
    return raw, connack


def scenario_redelivery_on_reconnect(ctx):
    """Unacknowledged QoS 1/2 messages are sent again, with DUP and their packet ids, in order, on reconnect."""
    raw, _ = raw_persistent(ctx, "redeliver")
    check(raw.subscribe([(ctx.topic("redeliver/#"), 2)]) == [2], "subscription refused")
    publisher = Paho(ctx, ctx.cid("redeliver-pub"))
    publisher.connect()
    publisher.publish(ctx.topic("redeliver/q1"), b"first", qos=1)
    publisher.publish(ctx.topic("redeliver/q2"), b"second", qos=2)
    publisher.disconnect()
    original = [raw.parse_publish(raw.recv_kind(PUBLISH, f"delivery {n}")) for n in (1, 2)]
    emit(event="delivered", messages=[(m["payload"].decode(), m["qos"], m["pid"], m["dup"]) for m in original])
    check([m["payload"] for m in original] == [b"first", b"second"], f"delivered {original}")
    # Gone without acknowledging either.
    raw.close()

    again, connack = raw_persistent(ctx, "redeliver")
    check(connack["session_present"], "the broker did not keep the session (session present 0)")
    redelivered = []
    while len(redelivered) < 2:
        packet = again.recv_kind(PUBLISH, "a redelivered message")
        redelivered.append(again.parse_publish(packet))
    emit(event="redelivered", messages=[(m["payload"].decode(), m["qos"], m["pid"], m["dup"]) for m in redelivered])
    for message in redelivered:
        check(message["dup"], f"redelivered {message['payload']!r} without DUP")
    by_payload = {m["payload"]: m for m in original}
    for message in redelivered:
        first = by_payload.get(message["payload"])
        check(first is not None, f"redelivered an unknown message {message}")
        check(message["pid"] == first["pid"], f"{message['payload']!r} came back under another packet id")
        check(message["qos"] == first["qos"], f"{message['payload']!r} came back at another QoS")
    check([m["payload"] for m in redelivered] == [b"first", b"second"], "redelivered out of the original order")
    # Complete both flows, so the session ends clean.
    again.ack(PUBACK, redelivered[0]["pid"])
    again.ack(PUBREC, redelivered[1]["pid"])
    pubrel = again.recv_kind(PUBREL, "PUBREL")
    again.ack(PUBCOMP, struct.unpack("!H", pubrel.body[:2])[0])
    again.close()


def scenario_subscribe_failure(ctx):
    """A subscription the broker refuses gets a failure code in SUBACK; the others in the same SUBSCRIBE are granted."""
    client = Paho(ctx, ctx.cid("subfail"))
    client.connect()
    reasons = client.subscribe([(DENIED_FILTER, 2), (ctx.topic("allowed"), 1)])
    if ctx.v5:
        check(reasons[0] >= 0x80, f"the denied filter got reason {reasons[0]:#x}, expected a failure (>= 0x80)")
    else:
        check(reasons[0] == 0x80, f"the denied filter got {reasons[0]:#x}, expected 0x80 (configure the broker to deny it)")
    check(reasons[1] == 1, f"the allowed filter got {reasons[1]:#x}, expected QoS 1")
    client.disconnect()


def scenario_topic_alias_client(ctx):
    """v5: the broker resolves topic aliases a client sets and reuses, and refuses one beyond its maximum (0x94)."""
    watcher = Paho(ctx, ctx.cid("alias-watch"))
    watcher.connect()
    watcher.subscribe([(ctx.topic("alias/#"), 1)])
    raw = Raw(ctx)
    connack = raw.connect(ctx.cid("alias-pub"))
    maximum = getattr(connack["props"], "TopicAliasMaximum", 0)
    emit(event="broker_topic_alias_maximum", maximum=maximum)
    check(maximum >= 1, "the broker accepts no topic aliases (CONNACK Topic Alias Maximum absent or 0)")
    sends = [
        (ctx.topic("alias/one"), b"first"),
        ("", b"second"),
        (ctx.topic("alias/two"), b"third"),
        ("", b"fourth"),
    ]
    for topic, payload in sends:
        pid = raw.publish(topic, payload, qos=1, props={"TopicAlias": 1})
        ack = raw.recv_kind(PUBACK, f"PUBACK of {payload!r}")
        check(struct.unpack("!H", ack.body[:2])[0] == pid, "PUBACK for another packet id")
        reason = ack.body[2] if len(ack.body) > 2 else 0
        check(reason < 0x80, f"publish {payload!r} refused with {reason:#x}")
    got = watcher.collect(4)
    seen = [(m["topic"], m["payload"].decode()) for m in got]
    emit(event="received", messages=seen)
    expected = [(ctx.topic(t), p) for t, p in [("alias/one", "first"), ("alias/one", "second"), ("alias/two", "third"), ("alias/two", "fourth")]]
    check(seen == expected, f"subscriber got {seen}, expected {expected}")
    if maximum < 65535:
        raw.publish(ctx.topic("alias/over"), b"over", qos=1, props={"TopicAlias": maximum + 1})
        reason = wait_closed(raw, time.monotonic() + STEP_TIMEOUT)
        emit(event="alias_over_maximum", disconnect_reason=reason)
        check(reason == 0x94, f"an alias above the maximum: DISCONNECT reason {reason}, expected 0x94")
    watcher.disconnect()


def scenario_topic_alias_server(ctx):
    """v5: the broker uses topic aliases towards a client only if it allows them, and within its maximum."""
    allowing = Raw(ctx)
    check(allowing.connect(ctx.cid("salias-yes"), props={"TopicAliasMaximum": CLIENT_TOPIC_ALIAS_MAXIMUM})["reason"] == 0, "CONNACK")
    check(allowing.subscribe([(ctx.topic("salias/#"), 1)]) == [1], "subscription refused")
    refusing = Raw(ctx)
    check(refusing.connect(ctx.cid("salias-no"))["reason"] == 0, "CONNACK")
    check(refusing.subscribe([(ctx.topic("salias/#"), 1)]) == [1], "subscription refused")
    publisher = Paho(ctx, ctx.cid("salias-pub"))
    publisher.connect()
    topics = [ctx.topic(f"salias/{name}") for name in "xyzxyzxxyyzz"]
    for n, topic in enumerate(topics):
        publisher.publish(topic, f"m{n}", qos=1)
    publisher.disconnect()

    def receive(raw, name):
        aliases, resolved, alias_only = {}, [], 0
        for _ in topics:
            message = raw.parse_publish(raw.recv_kind(PUBLISH, f"a message for {name}"))
            raw.ack(PUBACK, message["pid"])
            alias = getattr(message["props"], "TopicAlias", None)
            topic = message["topic"]
            if alias is not None:
                check(name == "allowing", "the broker used a topic alias towards a client that allows none")
                check(1 <= alias <= CLIENT_TOPIC_ALIAS_MAXIMUM, f"alias {alias} beyond the client's maximum")
                if topic:
                    aliases[alias] = topic
                else:
                    check(alias in aliases, f"alias {alias} used before it was set")
                    topic = aliases[alias]
                    alias_only += 1
            else:
                check(topic, "a PUBLISH with neither topic nor alias")
            resolved.append((topic, message["payload"].decode()))
        return resolved, alias_only

    expected = [(topic, f"m{n}") for n, topic in enumerate(topics)]
    for raw, name in ((allowing, "allowing"), (refusing, "refusing")):
        resolved, alias_only = receive(raw, name)
        emit(event="received", client=name, alias_only=alias_only)
        check(resolved == expected, f"{name} client resolved {resolved}, expected {expected}")
        if name == "allowing":
            check(alias_only > 0, "the broker never used a topic alias, although the client allowed them")
        raw.close()


def scenario_flow_control(ctx):
    """v5: the broker never has more unacknowledged QoS 1/2 messages at a client than its Receive Maximum."""
    raw = Raw(ctx)
    connack = raw.connect(ctx.cid("flow"), props={"ReceiveMaximum": CLIENT_RECEIVE_MAXIMUM})
    check(connack["reason"] == 0, f"CONNACK {connack['reason']}")
    check(raw.subscribe([(ctx.topic("flow"), 2)]) == [2], "subscription refused")
    publisher = Paho(ctx, ctx.cid("flow-pub"))
    publisher.connect()
    count = 6
    for n in range(count):
        publisher.publish(ctx.topic("flow"), f"m{n}", qos=1 + n % 2)

    received, in_flight, max_in_flight = [], 0, 0
    acking = False

    def on_packet(packet):
        nonlocal in_flight, max_in_flight
        if packet.kind == PUBLISH:
            message = raw.parse_publish(packet)
            check(not message["dup"], f"unexpected duplicate {message['payload']!r}")
            received.append(message)
            in_flight += 1
            max_in_flight = max(max_in_flight, in_flight)
            check(
                in_flight <= CLIENT_RECEIVE_MAXIMUM,
                f"{in_flight} unacknowledged messages at once, above the client's Receive Maximum {CLIENT_RECEIVE_MAXIMUM}",
            )
            if acking:
                acknowledge(message)
        elif packet.kind == PUBREL:
            raw.ack(PUBCOMP, struct.unpack("!H", packet.body[:2])[0])
            in_flight -= 1
        else:
            raise Failure(f"unexpected {packet}")

    def acknowledge(message):
        nonlocal in_flight
        if message["qos"] == 1:
            raw.ack(PUBACK, message["pid"])
            in_flight -= 1
        else:
            raw.ack(PUBREC, message["pid"])  # in flight until PUBCOMP

    # Hold every acknowledgement back: the broker must stop at the Receive Maximum.
    while len(received) < CLIENT_RECEIVE_MAXIMUM:
        on_packet(raw.recv_kind(PUBLISH, "a message within the Receive Maximum"))
    extra = raw.recv(ABSENCE_WINDOW)
    check(extra is None, f"the broker sent {extra} while the client's Receive Maximum was used up")
    emit(event="held_at_receive_maximum", received=len(received))
    acking = True
    for message in list(received):
        acknowledge(message)
    deadline = time.monotonic() + STEP_TIMEOUT
    while len(received) < count or in_flight:
        check(time.monotonic() < deadline, f"only {len(received)} of {count} messages arrived")
        packet = raw.recv(max(0.0, deadline - time.monotonic()))
        if packet is not None:
            on_packet(packet)
    payloads = [m["payload"].decode() for m in received]
    emit(event="received", payloads=payloads, max_in_flight=max_in_flight)
    check(payloads == [f"m{n}" for n in range(count)], f"received {payloads}")
    publisher.disconnect()
    raw.close()


def scenario_will_delay(ctx):
    """v5: a will waits for its Will Delay Interval, and is not sent if the client reconnects within it."""
    watcher = Paho(ctx, ctx.cid("wd-watch"))
    watcher.connect()
    watcher.subscribe([(ctx.topic("willdelay/#"), 1)])

    def delayed(name, payload):
        will = (ctx.topic(f"willdelay/{name}"), payload, 1, False, {"WillDelayInterval": WILL_DELAY})
        return Paho(ctx, ctx.cid(f"wd-{name}"), clean=False, session_expiry=60, will=will)

    gone, returning = delayed("gone", b"delayed"), delayed("back", b"must-not-appear")
    gone.connect()
    returning.connect()
    dropped_at = time.monotonic()
    gone.drop()
    returning.drop()
    back = delayed("back", b"must-not-appear")
    _, present, _ = back.connect()
    check(present, "the reconnecting client's session was not kept")
    message = watcher.expect_message("the delayed will")
    after = time.monotonic() - dropped_at
    emit(event="will_received", topic=message["topic"], after_s=round(after, 2))
    check(message["payload"] == b"delayed", f"got {message['payload']!r}: the will of a client that came back was sent")
    check(after >= WILL_DELAY * 0.9, f"the will arrived after {after:.2f} s, before its delay of {WILL_DELAY} s")
    rest = watcher.collect(0, window=max(ABSENCE_WINDOW, WILL_DELAY + 1 - (time.monotonic() - dropped_at)))
    check(not rest, f"unexpected messages {[(m['topic'], m['payload']) for m in rest]}")
    back.disconnect()
    watcher.disconnect()


def scenario_shared_subscriptions(ctx):
    """v5: a shared group gets each message once, spread over its members; plain subscribers get all."""
    group = f"$share/conformance/{ctx.topic('shared')}"
    members = [Paho(ctx, ctx.cid(f"shared-{n}")) for n in (1, 2)]
    for member in members:
        member.connect()
        member.subscribe([(group, 1)])
    plain = Paho(ctx, ctx.cid("shared-plain"))
    plain.connect()
    plain.subscribe([(ctx.topic("shared"), 1)])
    publisher = Paho(ctx, ctx.cid("shared-pub"))
    publisher.connect()
    count = 10
    for n in range(count):
        publisher.publish(ctx.topic("shared"), f"s{n}", qos=1)
    everything = [m["payload"].decode() for m in plain.collect(count)]
    check(everything == [f"s{n}" for n in range(count)], f"the plain subscriber got {everything}")
    shares = [[m["payload"].decode() for m in member.collect(0, window=0.5)] for member in members]
    deadline = time.monotonic() + STEP_TIMEOUT
    while sum(map(len, shares)) < count and time.monotonic() < deadline:
        for member, share in zip(members, shares):
            share.extend(m["payload"].decode() for m in member.collect(0, window=0.2))
    for member, share in zip(members, shares):
        share.extend(m["payload"].decode() for m in member.collect(0))
    emit(event="shares", members=shares)
    combined = sorted(shares[0] + shares[1], key=lambda p: int(p[1:]))
    check(combined == [f"s{n}" for n in range(count)], f"the group got {combined}: each message exactly once expected")
    check(all(shares), f"one member got nothing: {shares}")
    for client in members + [plain, publisher]:
        client.disconnect()


def scenario_user_properties(ctx):
    """v5: user properties arrive complete and in order, repeated keys included."""
    client = Paho(ctx, ctx.cid("userprops"))
    client.connect()
    client.subscribe([(ctx.topic("userprops"), 1)])
    sent = [("b", "2"), ("a", "1"), ("b", "3"), ("unicode", "wörld ✓")]
    client.publish(ctx.topic("userprops"), b"x", qos=1, props={"UserProperty": sent})
    message = client.expect_message("the publish with user properties")
    got = [tuple(pair) for pair in prop(message, "UserProperty", [])]
    emit(event="user_properties", received=got)
    check(got == sent, f"received user properties {got}, sent {sent}")
    client.disconnect()


def scenario_request_response(ctx):
    """v5: Response Topic and Correlation Data pass from requester to responder and back."""
    requester = Paho(ctx, ctx.cid("requester"))
    responder = Paho(ctx, ctx.cid("responder"))
    requester.connect()
    responder.connect()
    responder.subscribe([(ctx.topic("request"), 1)])
    requester.subscribe([(ctx.topic("response/+"), 1)])
    correlation = b"\x00corr\xff-1"
    requester.publish(
        ctx.topic("request"), b"question", qos=1,
        props={"ResponseTopic": ctx.topic("response/requester"), "CorrelationData": correlation},
    )
    request = responder.expect_message("the request")
    response_topic = prop(request, "ResponseTopic")
    request_correlation = prop(request, "CorrelationData")
    emit(event="request", response_topic=response_topic, correlation=request_correlation and request_correlation.hex())
    check(response_topic == ctx.topic("response/requester"), f"Response Topic {response_topic!r}")
    check(request_correlation == correlation, f"Correlation Data {request_correlation!r}")
    responder.publish(response_topic, b"answer", qos=1, props={"CorrelationData": request_correlation})
    response = requester.expect_message("the response")
    check(response["payload"] == b"answer", f"response {response}")
    check(prop(response, "CorrelationData") == correlation, "the response lost its Correlation Data")
    requester.disconnect()
    responder.disconnect()


def scenario_payload_format(ctx):
    """v5: Payload Format Indicator and Content Type pass through unchanged."""
    client = Paho(ctx, ctx.cid("format"))
    client.connect()
    client.subscribe([(ctx.topic("format/+"), 1)])
    text = "héllo ✓".encode("utf-8")
    client.publish(ctx.topic("format/text"), text, qos=1,
                   props={"PayloadFormatIndicator": 1, "ContentType": "text/plain; charset=utf-8"})
    client.publish(ctx.topic("format/bytes"), b"\xff\x00\xfe", qos=1,
                   props={"PayloadFormatIndicator": 0, "ContentType": "application/octet-stream"})
    got = client.collect(2)
    seen = [(m["topic"], m["payload"], prop(m, "PayloadFormatIndicator", 0), prop(m, "ContentType")) for m in got]
    emit(event="received", messages=[(t, p.hex(), f, c) for t, p, f, c in seen])
    expected = [
        (ctx.topic("format/text"), text, 1, "text/plain; charset=utf-8"),
        (ctx.topic("format/bytes"), b"\xff\x00\xfe", 0, "application/octet-stream"),
    ]
    check(seen == expected, f"received {seen}, expected {expected}")
    client.disconnect()


def scenario_subscription_identifiers(ctx):
    """v5: a message carries the Subscription Identifiers of the subscriptions it matched, and only those."""
    client = Paho(ctx, ctx.cid("subid"))
    client.connect()
    client.subscribe([(ctx.topic("subid/+"), 1)], props={"SubscriptionIdentifier": 2})
    client.subscribe([(ctx.topic("subid/#"), 1)], props={"SubscriptionIdentifier": 3})
    client.subscribe([(ctx.topic("plain/#"), 1)])
    client.publish(ctx.topic("subid/a"), b"both", qos=1)
    client.publish(ctx.topic("subid/a/b"), b"deep", qos=1)
    client.publish(ctx.topic("plain/a"), b"none", qos=1)
    got = client.collect(3)
    seen = [(m["payload"].decode(), sorted(prop(m, "SubscriptionIdentifier", []))) for m in got]
    emit(event="received", messages=seen)
    both = sorted(ids for payload, ids in seen if payload == "both")
    check(both in ([[2, 3]], [[2], [3]]), f"a message matching ids 2 and 3 arrived with {both}")
    check([ids for p, ids in seen if p == "deep"] == [[3]], f"a message matching id 3 only: {seen}")
    check([ids for p, ids in seen if p == "none"] == [[]], f"a message matching no identified subscription: {seen}")
    client.disconnect()


def scenario_session_expiry(ctx):
    """v5: a session is kept within its Session Expiry Interval and gone after it, with its queued messages."""
    def client():
        return Paho(ctx, ctx.cid("expiry"), clean=False, session_expiry=SESSION_EXPIRY)

    first = client()
    first.connect()
    first.subscribe([(ctx.topic("expiry"), 1)])
    first.disconnect()
    second = client()
    _, present, _ = second.connect()
    check(present, "the session was gone at once, within its expiry interval")
    second.disconnect()
    left_at = time.monotonic()
    publisher = Paho(ctx, ctx.cid("expiry-pub"))
    publisher.connect()
    publisher.publish(ctx.topic("expiry"), b"expires-with-the-session", qos=1)
    publisher.disconnect()
    time.sleep(max(0.0, SESSION_EXPIRY + 2 - (time.monotonic() - left_at)))
    third = client()
    _, present, _ = third.connect()
    emit(event="after_expiry", session_present=present)
    check(not present, f"the session was still present {SESSION_EXPIRY + 2} s after it expired ({SESSION_EXPIRY} s)")
    leftovers = third.collect(0)
    check(not leftovers, f"the expired session's messages were delivered: {leftovers}")
    third.disconnect()


def scenario_maximum_packet_size(ctx):
    """v5: a publish above the broker's own Maximum Packet Size is refused with DISCONNECT 0x95; the broker sends
    nothing larger than the client's Maximum Packet Size, skipping such a message and going on with smaller ones."""
    sender = Raw(ctx)
    connack = sender.connect(ctx.cid("maxsize-big"))
    check(connack["reason"] == 0, f"CONNACK {connack['reason']}")
    broker_maximum = getattr(connack["props"], "MaximumPacketSize", None)
    emit(event="broker_maximum_packet_size", bytes=broker_maximum)
    check(broker_maximum is not None, "the broker announces no Maximum Packet Size in CONNACK")
    # One byte over the maximum whether it counts the whole packet (as MQTT 5 does) or the remaining length.
    topic = utf8(ctx.topic("maxsize/huge")) + struct.pack("!H", 1) + b"\x00"
    payload_len = broker_maximum + 1 - len(topic)
    header = bytes([0x32]) + varint(len(topic) + payload_len)
    sender.send(header + topic)
    reason, when, closed = None, "after its fixed header", None
    try:
        # A broker that judges the fixed header answers before the body; otherwise send it all.
        packet = sender.recv(ABSENCE_WINDOW)
        if packet is None:
            when = "after the whole packet"
            sender.send(b"x" * payload_len)
            packet = sender.recv(STEP_TIMEOUT)
        if packet is not None:
            check(packet.kind == DISCONNECT, f"an oversized publish was answered with {packet}")
            reason = sender.disconnect_reason(packet)
    except (Closed, BrokenPipeError, ConnectionResetError) as error:
        closed = str(error) or type(error).__name__
    emit(event="oversized_publish", disconnect_reason=reason, answered=when, closed_with=closed)
    check(reason == 0x95, f"an oversized publish got DISCONNECT reason {reason}, expected 0x95 (packet too large)")
    sender.close()

    raw = Raw(ctx)
    connack = raw.connect(ctx.cid("maxsize"), props={"MaximumPacketSize": CLIENT_MAXIMUM_PACKET_SIZE})
    check(connack["reason"] == 0, f"CONNACK {connack['reason']}")
    check(raw.subscribe([(ctx.topic("maxsize/+"), 1)]) == [1], "subscription refused")
    publisher = Paho(ctx, ctx.cid("maxsize-pub"))
    publisher.connect()
    publisher.publish(ctx.topic("maxsize/big"), b"x" * (CLIENT_MAXIMUM_PACKET_SIZE * 4), qos=1)
    publisher.publish(ctx.topic("maxsize/small"), b"small", qos=1)
    publisher.disconnect()
    packet = raw.recv_kind(PUBLISH, "the small message (the large one must be skipped)")
    message = raw.parse_publish(packet)
    emit(event="received", topic=message["topic"], size=packet.size)
    check(
        packet.size <= CLIENT_MAXIMUM_PACKET_SIZE,
        f"the broker sent a {packet.size}-byte packet to a client allowing {CLIENT_MAXIMUM_PACKET_SIZE}",
    )
    check(message["payload"] == b"small", f"got {message['payload'][:16]!r}... instead of the small message")
    raw.ack(PUBACK, message["pid"])
    raw.close()


BOTH = "3,5"
SCENARIOS = {
    "retained": (scenario_retained, BOTH),
    "will": (scenario_will, BOTH),
    "zero_length_clientid": (scenario_zero_length_clientid, BOTH),
    "offline_queueing": (scenario_offline_queueing, BOTH),
    "overlapping_subscriptions": (scenario_overlapping_subscriptions, BOTH),
    "keepalive": (scenario_keepalive, BOTH),
    "redelivery_on_reconnect": (scenario_redelivery_on_reconnect, BOTH),
    "subscribe_failure": (scenario_subscribe_failure, BOTH),
    "topic_alias_client": (scenario_topic_alias_client, "5"),
    "topic_alias_server": (scenario_topic_alias_server, "5"),
    "server_keep_alive": (scenario_server_keep_alive, "5"),
    "flow_control": (scenario_flow_control, "5"),
    "will_delay": (scenario_will_delay, "5"),
    "shared_subscriptions": (scenario_shared_subscriptions, "5"),
    "user_properties": (scenario_user_properties, "5"),
    "request_response": (scenario_request_response, "5"),
    "payload_format": (scenario_payload_format, "5"),
    "subscription_identifiers": (scenario_subscription_identifiers, "5"),
    "session_expiry": (scenario_session_expiry, "5"),
    "maximum_packet_size": (scenario_maximum_packet_size, "5"),
}


class Context:
    def __init__(self, host, port, version):
        self.host, self.port, self.v5 = host, port, version == "5"
        # Keeps the topics and client ids of one run apart from any other on the same broker.
        self.run = uuid.uuid4().hex[:8]
        self.retained_eventually = False

    def topic(self, name):
        return f"conformance/{self.run}/{name}"

    def cid(self, name):
        return f"conf-{self.run}-{name}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    parser.add_argument("--version", choices=["3", "5"], required=True)
    parser.add_argument(
        "--retained-eventually",
        action="store_true",
        help="retained: accept a retained value (or its clearing) that new subscribers see only a moment after the "
        "publisher's acknowledgement (for a broker that stores retained messages asynchronously)",
    )
    parser.add_argument("--list", action="store_true", help="print the scenarios of --version, one a line, and exit")
    parser.add_argument("scenario", nargs="?")
    args = parser.parse_args()
    if args.list:
        for name, (_, versions) in SCENARIOS.items():
            if args.version in versions.split(","):
                print(name)
        return
    if args.port is None:
        parser.error("--port is required")
    if args.scenario not in SCENARIOS:
        parser.error(f"unknown scenario {args.scenario!r}; --list shows them")
    run, versions = SCENARIOS[args.scenario]
    if args.version not in versions.split(","):
        parser.error(f"{args.scenario} is an MQTT 5 scenario")
    emit(event="start", scenario=args.scenario, version=args.version)
    try:
        context = Context(args.host, args.port, args.version)
        context.retained_eventually = args.retained_eventually
        run(context)
        failure = None
    except Failure as error:
        failure = str(error)
    except Exception as error:  # a socket error or a paho exception is the broker's doing too
        failure = f"{type(error).__name__}: {error}"
    if failure is None:
        emit(event="pass", scenario=args.scenario, version=args.version)
    else:
        emit(event="fail", scenario=args.scenario, version=args.version, reason=failure)
        print(f"{args.scenario} (MQTT {args.version}) failed: {failure}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # Paho's network threads must not keep the process alive, nor delay its verdict.
    os._exit(0 if failure is None else 1)

if __name__ == "__main__":
    main()
