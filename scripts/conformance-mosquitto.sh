#!/usr/bin/env bash
# The broker conformance scenarios (services/broker/tests/clients/conformance.py) against a real Mosquitto 2,
# so that what the reference broker misses is measured, not quoted.
#
# Every scenario gets a fresh mosquitto on a free loopback port, configured as our tests configure our broker:
#   - anonymous, no persistence;
#   - an ACL that allows everything but subscribing to `test/nosubscribe` (subscribe_failure);
#   - max_packet_size 1048576, as ferrite_core::limits::MAX_PACKET_SIZE (so CONNACK announces it);
#   - for server_keep_alive only: max_keepalive 10 (its minimum; Mosquitto refuses a v3.1.1 client whose keep alive is above it,
#     so the other scenarios run without it).
# Prints one line per scenario ("pass" or "FAIL: reason") and a summary; exits 1 if any failed.
#
# Usage: scripts/conformance-mosquitto.sh [--version 3|5] [--only NAME[,NAME...]] [--out DIR]
# MOSQUITTO=/path/to/mosquitto picks another binary. --out keeps each scenario's JSON lines and the broker log.
set -euo pipefail

cd "$(dirname "$0")/.."
script=services/broker/tests/clients/conformance.py

versions="3 5"
only=""
out=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --version) versions="$2"; shift 2 ;;
        --only) only=",$2,"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

mosquitto=${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
[[ -x "$mosquitto" ]] || { echo "mosquitto not found: apt-get install mosquitto" >&2; exit 1; }
python3 -c 'import paho.mqtt' 2>/dev/null || { echo "paho-mqtt not installed: pip install paho-mqtt" >&2; exit 1; }

work=$(mktemp -d)
# Mosquitto started as root drops to its own user before reading the ACL file.
chmod 755 "$work"
[[ -n "$out" ]] && mkdir -p "$out"
broker_pid=""
cleanup() {
    [[ -n "$broker_pid" ]] && kill "$broker_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_mosquitto() { # scenario -> sets port and broker_pid
    local scenario=$1
    port=$(free_port)
    printf 'topic readwrite #\ntopic deny test/nosubscribe\n' >"$work/acl"
    {
        echo "listener $port 127.0.0.1"
        echo "allow_anonymous true"
        echo "persistence false"
        echo "acl_file $work/acl"
        echo "max_packet_size 1048576"
        [[ "$scenario" == server_keep_alive ]] && echo "max_keepalive 10"
        echo "log_dest stderr"
        echo "log_type all"
    } >"$work/mosquitto.conf"
    : >"$work/mosquitto.log"
    "$mosquitto" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
    broker_pid=$!
    for _ in $(seq 500); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.1)" 2>/dev/null; then
            return 0
        fi
        kill -0 "$broker_pid" 2>/dev/null || { echo "mosquitto exited at start-up" >&2; cat "$work/mosquitto.log" >&2; exit 1; }
        sleep 0.01
    done
    echo "mosquitto did not listen on port $port" >&2
    exit 1
}

stop_mosquitto() {
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
    broker_pid=""
}

echo "$("$mosquitto" -h 2>/dev/null | head -1)"
total=0
failed=0
for version in $versions; do
    passed_here=0
    failed_here=()
    for scenario in $(python3 "$script" --version "$version" --list); do
        [[ -n "$only" && "$only" != *",$scenario,"* ]] && continue
        start_mosquitto "$scenario"
        log="$work/$scenario-v$version.jsonl"
        if python3 "$script" --host 127.0.0.1 --port "$port" --version "$version" "$scenario" >"$log" 2>/dev/null; then
            printf 'MQTT %s  %-26s pass\n' "$version" "$scenario"
            passed_here=$((passed_here + 1))
        else
            reason=$(python3 -c 'import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print(next((e["reason"] for e in lines if e.get("event") == "fail"), "no verdict (crashed?)"))' "$log")
            printf 'MQTT %s  %-26s FAIL: %s\n' "$version" "$scenario" "$reason"
            failed_here+=("$scenario")
        fi
        stop_mosquitto
        if [[ -n "$out" ]]; then
            cp "$log" "$out/"
            cp "$work/mosquitto.log" "$out/mosquitto-$scenario-v$version.log"
        fi
    done
    count=$((passed_here + ${#failed_here[@]}))
    echo "MQTT $version: Mosquitto passes $passed_here of $count, misses ${#failed_here[@]}${failed_here:+ (${failed_here[*]})}"
    total=$((total + count))
    failed=$((failed + ${#failed_here[@]}))
done
[[ $failed -eq 0 ]]
