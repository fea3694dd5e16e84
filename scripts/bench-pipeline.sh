#!/usr/bin/env bash
# Pipeline benchmark: the whole platform (`ferrite up`: broker, ingester, a private PostgreSQL, gateway, APIs)
# on spare loopback ports, driven by `ferrite bench pipeline` (devices publishing readings, rows counted in
# PostgreSQL, browsers on the gateway's live WebSocket). Each run starts from an empty data directory.
#
# Usage: scripts/bench-pipeline.sh [--no-build] [--out DIR] [--keep] [-- BENCH FLAGS...]
#   BENCH FLAGS go to `ferrite bench pipeline` (see `ferrite bench pipeline --help`), e.g.
#   scripts/bench-pipeline.sh -- --devices 100 --rate 10000 --duration 10s --dashboards 100
#   scripts/bench-pipeline.sh -- --devices 100 --rate 0 --duration 10s --dashboards 0      # open loop: the most it commits
# FERRITE=/path/to/ferrite measures another build (CLIENT=/path/to/ferrite keeps the load generator fixed meanwhile);
# UP_FLAGS="--sessions 4" adds flags to `ferrite up`.
# The report (text and JSON) and the platform's log stay in --out (default target/bench-pipeline/<time>/).
set -euo pipefail

cd "$(dirname "$0")/.."

build=1
out=""
keep=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-build) build=0; shift ;;
        --out) out="$2"; shift 2 ;;
        --keep) keep=1; shift ;;
        --) shift; break ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [[ "$build" == 1 ]]; then
    echo "building target/release/ferrite ..." >&2
    cargo build --release --locked -p ferrite >&2
fi
ferrite="${FERRITE:-target/release/ferrite}"
[[ -x "$ferrite" ]] || { echo "error: $ferrite missing (run without --no-build)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

out="${out:-target/bench-pipeline/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
work="$(mktemp -d)"
chmod 755 "$work"  # the private PostgreSQL runs as the postgres user and must reach its data directory
up_pid=""
cleanup() {
    if [[ -n "$up_pid" ]] && kill -0 "$up_pid" 2>/dev/null; then
        kill -INT "$up_pid" 2>/dev/null || true
        wait "$up_pid" 2>/dev/null || true
    fi
    if [[ "$keep" == 0 ]]; then rm -rf "$work"; else echo "data directory kept: $work/data" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "starting ferrite up (empty data directory, ports chosen by the system) ..." >&2
# shellcheck disable=SC2086 # UP_FLAGS is a list of flags
"$ferrite" up --fleet 0 --data-dir "$work/data" \
    --mqtt-addr 127.0.0.1:0 --ws-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 --rest-addr 127.0.0.1:0 \
    ${UP_FLAGS:-} >"$out/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 1 600); do
    grep -q "Press Ctrl-C" "$out/up.log" && break
    kill -0 "$up_pid" 2>/dev/null || { echo "error: ferrite up exited; its log:" >&2; cat "$out/up.log" >&2; exit 1; }
    sleep 0.1
done
grep -q "Press Ctrl-C" "$out/up.log" || { echo "error: ferrite up not ready after 60 s; see $out/up.log" >&2; exit 1; }

mqtt=$(sed -n 's|^ *MQTT *\(mqtt://[0-9.:]*\).*|\1|p' "$out/up.log" | head -1)
live=$(sed -n 's|^ *Live WebSocket *\(ws://[^ ]*\).*|\1|p' "$out/up.log" | head -1)
cluster="$work/data/postgres"
database="postgres://postgres:$(cat "$cluster/password")@127.0.0.1:$(cat "$cluster/port")/postgres"
echo "platform ready: $mqtt, $live (pid $up_pid); load average: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$out/context.txt" >&2

"${CLIENT:-$ferrite}" bench pipeline --url "$mqtt" --database-url "$database" --gateway-url "$live" \
    --broker-pid "$up_pid" --label "ferrite up" --json "$out/pipeline.json" "$@" | tee "$out/pipeline.txt"

kill -INT "$up_pid"
wait "$up_pid" || echo "warning: ferrite up exited with $? (see $out/up.log)" >&2
up_pid=""
grep "Ferrite stopped" "$out/up.log" >&2 || true
echo "report: $out/pipeline.txt, $out/pipeline.json; platform log: $out/up.log" >&2
