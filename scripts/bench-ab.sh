#!/usr/bin/env bash
# A/B benchmark: Ferrite's broker against Mosquitto, driven by the same `ferrite bench` client.
#
# Each scenario runs alternately A B A B ... (a fresh broker for every run, on spare loopback ports),
# so that machine drift (other builds, thermal throttling) hits both sides alike; then it prints the
# ratios ours/mosquitto from `ferrite bench compare`. Reports (JSON) and broker logs stay in --out.
#
# Usage: scripts/bench-ab.sh [--rounds N] [--duration 10s] [--only NAME[,NAME...]] [--idle N] [--no-build] [--out DIR]
# FERRITE=/path/to/ferrite measures another build (e.g. a copy from before a change) instead of target/release/ferrite.
# Scenario names: fanin-q0 fanin-q1 fanin-q1-8k fanout-q0 fanout-q1 fanout-q1-1k shared-q1 idle
set -euo pipefail

cd "$(dirname "$0")/.."

rounds=2
duration=10s
only=""
idle_connections=10000
build=1
out=""

while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) rounds="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        --idle) idle_connections="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done

mosquitto_bin="${MOSQUITTO:-/usr/sbin/mosquitto}"
if [[ ! -x "$mosquitto_bin" ]]; then
    mosquitto_bin="$(command -v mosquitto || true)"
fi
if [[ -z "$mosquitto_bin" || ! -x "$mosquitto_bin" ]]; then
    echo "error: mosquitto not found: install it (apt-get install mosquitto) or set MOSQUITTO=/path/to/mosquitto" >&2
    exit 1
fi

if [[ "$build" == 1 ]]; then
    echo "building target/release/ferrite ..." >&2
    cargo build --release --locked -p ferrite >&2
fi
ferrite="${FERRITE:-target/release/ferrite}"
[[ -x "$ferrite" ]] || { echo "error: $ferrite missing (run without --no-build)" >&2; exit 1; }

# Idle connections need a file descriptor each, on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
max_fds=$(ulimit -n)
if [[ "$idle_connections" -gt $((max_fds - 200)) ]]; then
    idle_connections=$((max_fds - 200))
    echo "note: idle connections lowered to $idle_connections (open-file limit $max_fds)" >&2
fi

out="${out:-target/bench-ab/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
work="$(mktemp -d)"
broker_pid=""

cleanup() {
    if [[ -n "$broker_pid" ]]; then
        kill "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free loopback TCP port (nothing accepts on it), below Linux's ephemeral range (32768+): the benchmark's
# own client sockets leave ports there in TIME_WAIT, and a broker cannot bind those.
free_port() {
    local port
    while :; do
        port=$((10000 + RANDOM % 20000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

wait_listening() {
    local port="$1" name="$2"
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$broker_pid" 2>/dev/null; then
            echo "error: $name exited at start; its log:" >&2
            tail -20 "$out/broker-$name.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "error: $name does not listen on $port after 10 s" >&2
    exit 1
}

# Starts broker $1 (ferrite | mosquitto) on port $2; sets broker_pid.
start_broker() {
    local name="$1" port="$2"
    case "$name" in
        ferrite)
            rm -rf "$work/ferrite-data"
            # No DATABASE_URL: anonymous clients, allowed because every listener is on loopback.
            "$ferrite" broker --mqtt-addr "127.0.0.1:$port" --ws-addr "127.0.0.1:$(free_port)" \
                --metrics-addr "127.0.0.1:$(free_port)" --data-dir "$work/ferrite-data" \
                >>"$out/broker-ferrite.log" 2>&1 &
            ;;
        mosquitto)
            # Queue and in-flight limits as the embedded broker's (services/broker/src/engine.rs), so both
            # brokers may buffer alike; no persistence, like a clean start of ours.
            cat >"$work/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 100000
max_inflight_messages 4096
log_dest stderr
log_type error
log_type warning
EOF
            "$mosquitto_bin" -c "$work/mosquitto.conf" >>"$out/broker-mosquitto.log" 2>&1 &
            ;;
    esac
    broker_pid=$!
    wait_listening "$port" "$name"
}

stop_broker() {
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
    broker_pid=""
}

# name | ferrite bench arguments
scenarios=(
    "fanin-q0|fan-in --publishers 8 --qos 0"
    "fanin-q1|fan-in --publishers 8 --qos 1"
    "fanin-q1-8k|fan-in --publishers 8 --qos 1 --rate 8000"
    "fanout-q0|fan-out --subscribers 50 --qos 0"
    "fanout-q1|fan-out --subscribers 50 --qos 1"
    "fanout-q1-1k|fan-out --subscribers 50 --qos 1 --rate 1000"
    "shared-q1|shared --publishers 8 --subscribers 4 --qos 1"
    "idle|idle --connections $idle_connections"
)

selected() {
    [[ -z "$only" ]] && return 0
    [[ ",$only," == *",$1,"* ]]
}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "mosquitto: $("$mosquitto_bin" -h 2>/dev/null | head -1)"
    echo "ferrite: $("$ferrite" --version)"
    echo "rounds: $rounds, duration: $duration"
} | tee "$out/machine.txt"

for entry in "${scenarios[@]}"; do
    name="${entry%%|*}"
    args="${entry#*|}"
    selected "$name" || continue
    for round in $(seq 1 "$rounds"); do
        for broker in ferrite mosquitto; do
            port=$(free_port)
            start_broker "$broker" "$port"
            echo "== $name round $round: $broker (pid $broker_pid, port $port)" >&2
            extra=()
            [[ "$name" != idle ]] && extra=(--duration "$duration")
            # shellcheck disable=SC2086 # $args is a list of words on purpose
            if ! "$ferrite" bench $args "${extra[@]}" --url "mqtt://127.0.0.1:$port" --broker-pid "$broker_pid" \
                --label "$broker" --json "$out/$name-$broker-$round.json" >"$out/$name-$broker-$round.txt" 2>"$out/$name-$broker-$round.err"; then
                echo "warning: $name with $broker failed:" >&2
                tail -3 "$out/$name-$broker-$round.err" >&2
            fi
            stop_broker
        done
    done
done

echo
echo "Ratios ours/mosquitto (means over $rounds rounds; reports in $out)"
for entry in "${scenarios[@]}"; do
    name="${entry%%|*}"
    selected "$name" || continue
    ours=("$out/$name-ferrite-"*.json)
    theirs=("$out/$name-mosquitto-"*.json)
    if [[ -e "${ours[0]}" && -e "${theirs[0]}" ]]; then
        echo
        "$ferrite" bench compare --ours "${ours[@]}" --theirs "${theirs[@]}" | tee "$out/$name-compare.txt"
    else
        echo "$name: no complete pair of reports"
    fi
done
