#!/bin/bash
# ferrite-healthcheck PORT [PATH]: succeed when http://127.0.0.1:PORT/PATH (default /readyz: the service's database
# answers and its MQTT sessions are subscribed; /healthz is liveness only) answers 200.
# For docker compose health checks; bash's /dev/tcp does the request, so the image needs no curl.
set -euo pipefail
port=${1:?usage: ferrite-healthcheck PORT [PATH]}
path=${2:-/readyz}
exec 3<>"/dev/tcp/127.0.0.1/${port}"
printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3
IFS= read -r -t 5 status <&3
case "$status" in
  "HTTP/1."[01]" 200"*) exit 0 ;;
  *) echo "GET $path on port $port: ${status:-no answer}" >&2; exit 1 ;;
esac
