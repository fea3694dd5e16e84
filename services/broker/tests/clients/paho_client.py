#!/usr/bin/env python3
"""A scriptable Eclipse Paho MQTT client for the broker tests.

It connects, subscribes, publishes, collects messages and reports every step as one JSON
object per line on stdout, so a Rust test can drive it and read what a real third-party
client saw. Exit status 0 means the script ran to the end (a refused CONNACK is reported,
not an error); 2 means paho-mqtt is missing; anything else is a failure.

Steps, in order: connect (and wait for CONNACK), subscribe (wait for SUBACK), print
{"event": "ready"}, publish (wait for each acknowledgement), wait for --expect messages, then disconnect cleanly, or with --hold
stay connected until killed, or with --drop close the socket without DISCONNECT.
"""

import argparse
import json
import sys
import threading
import time

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
except ImportError:
    print("paho-mqtt not installed: pip install paho-mqtt", file=sys.stderr)
    sys.exit(2)


# Paho's network thread and the main thread both report; one line must never interleave with another.
EMIT_LOCK = threading.Lock()


def emit(**event):
    line = json.dumps(event) + "\n"
    with EMIT_LOCK:
        sys.stdout.write(line)
        sys.stdout.flush()


def reason_value(rc):
    """paho 2 gives ReasonCode objects for v5 and v3 alike; plain ints in some paths."""
    return getattr(rc, "value", rc)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", choices=["3", "5"], default="5")
    parser.add_argument("--transport", choices=["tcp", "websockets"], default="tcp")
    parser.add_argument("--ws-path", default="/mqtt")
    parser.add_argument("--client-id", default="")
    parser.add_argument("--clean", choices=["yes", "no"], default="yes")
    parser.add_argument("--session-expiry", type=int, default=None)
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--will", help="topic:qos:retain(0|1):payload")
    parser.add_argument("--sub", action="append", default=[], help="filter:qos")
    parser.add_argument("--pub", action="append", default=[], help="topic:qos:retain(0|1):payload")
    parser.add_argument("--user-prop", action="append", default=[], help="key=value, added to every publish")
    parser.add_argument("--message-expiry", type=int, help="Message Expiry Interval of every publish (v5)")
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=15.0)
    ending = parser.add_mutually_exclusive_group()
    ending.add_argument("--hold", action="store_true")
    ending.add_argument("--drop", action="store_true")
    args = parser.parse_args()

    v5 = args.version == "5"
    protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    clean = args.clean == "yes"
    client_kwargs = dict(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        protocol=protocol,
        transport=args.transport,
    )
    if not v5:
        client_kwargs["clean_session"] = clean
    client = mqtt.Client(**client_kwargs)
    if args.transport == "websockets":
        client.ws_set_options(path=args.ws_path)
    if args.username is not None:
        client.username_pw_set(args.username, args.password)
    if args.will:
        topic, qos, retain, payload = args.will.split(":", 3)
        client.will_set(topic, payload, qos=int(qos), retain=retain == "1")

    lock = threading.Condition()
    state = {"connack": None, "suback": None, "messages": 0, "disconnected": False}

    def on_connect(_client, _userdata, flags, rc, properties):
        with lock:
            state["connack"] = (reason_value(rc), bool(flags.session_present))
            lock.notify_all()

    def on_subscribe(_client, _userdata, mid, rcs, properties):
        with lock:
            state["suback"] = [reason_value(rc) for rc in rcs]
            lock.notify_all()

    def on_message(_client, _userdata, msg):
        props = {}
        if msg.properties is not None and hasattr(msg.properties, "UserProperty"):
            props = {key: value for key, value in msg.properties.UserProperty}
        expiry = None
        if msg.properties is not None and hasattr(msg.properties, "MessageExpiryInterval"):
            expiry = msg.properties.MessageExpiryInterval
        emit(
            event="message",
            topic=msg.topic,
            payload=msg.payload.decode("utf-8", "replace"),
            qos=msg.qos,
            retain=bool(msg.retain),
            user_properties=props,
            message_expiry=expiry,
        )
        with lock:
            state["messages"] += 1
            lock.notify_all()

    def on_disconnect(_client, _userdata, flags, rc, properties):
        with lock:
            state["disconnected"] = True
            lock.notify_all()
        emit(event="disconnected", reason=reason_value(rc))

    def on_publish(_client, _userdata, mid, rc, properties):
        emit(event="puback", mid=mid, reason=reason_value(rc))

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_disconnect = on_disconnect

    def wait_for(predicate, what):
        deadline = time.monotonic() + args.timeout
        with lock:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    emit(event="timeout", waiting_for=what)
                    sys.exit(1)
                lock.wait(remaining)

    connect_properties = None
    if v5:
        connect_properties = Properties(PacketTypes.CONNECT)
        if args.session_expiry is not None:
            connect_properties.SessionExpiryInterval = args.session_expiry
    connect_kwargs = dict(keepalive=30, properties=connect_properties)
    if v5:
        connect_kwargs["clean_start"] = clean
    # A broker that closes the socket instead of answering is a test failure, reported as such.
    client.connect(args.host, args.port, **connect_kwargs)
    client.loop_start()
    wait_for(lambda: state["connack"] is not None or state["disconnected"], "connack")
    if state["connack"] is None:
        emit(event="closed_before_connack")
        sys.exit(1)
    rc, session_present = state["connack"]
    emit(event="connack", reason=rc, session_present=session_present)
    if rc != 0:
        client.loop_stop()
        return

    if args.sub:
        topics = []
        for spec in args.sub:
            topic, qos = spec.rsplit(":", 1)
            topics.append((topic, int(qos)))
        client.subscribe(topics)
        wait_for(lambda: state["suback"] is not None, "suback")
        emit(event="suback", reasons=state["suback"])

    emit(event="ready")

    for spec in args.pub:
        topic, qos, retain, payload = spec.split(":", 3)
        properties = None
        if v5 and (args.user_prop or args.message_expiry is not None):
            properties = Properties(PacketTypes.PUBLISH)
            if args.user_prop:
                properties.UserProperty = [tuple(prop.split("=", 1)) for prop in args.user_prop]
            if args.message_expiry is not None:
                properties.MessageExpiryInterval = args.message_expiry
        info = client.publish(topic, payload, qos=int(qos), retain=retain == "1", properties=properties)
        info.wait_for_publish(args.timeout)
        emit(event="published", topic=topic, acknowledged=info.is_published())

    wait_for(lambda: state["messages"] >= args.expect, "messages")
    emit(event="received_all", count=state["messages"])

    if args.hold:
        while True:
            time.sleep(3600)
    if args.drop:
        # Close the socket without DISCONNECT, as a crashed client would.
        client.loop_stop()
        client.socket().close()
        emit(event="dropped")
        return
    client.disconnect()
    client.loop_stop()
    emit(event="done")


if __name__ == "__main__":
    main()
