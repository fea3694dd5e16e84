#!/usr/bin/env bash
# Builds deploy/Dockerfile and runs the compose stack for real: every service must turn healthy (their health checks
# ask /readyz), the simulated fleet's readings must reach PostgreSQL, and the registry's /readyz must answer 503
# naming the database while PostgreSQL is stopped, then 200 again once it is back. Everything is torn down at exit.
#
#   scripts/docker-smoke.sh                # with the official base images (rust, debian, postgres) from Docker Hub
#   scripts/docker-smoke.sh --local-base   # no image registry reachable: stand-ins built from Debian's packages
#   scripts/docker-smoke.sh --local-base --binary target/debug/ferrite
#                                          # the Dockerfile's runtime stage around a binary built on this (Debian 12)
#                                          # host instead of its build stages: checks the stack in minutes
#
# --local-base builds, once, `ferrite-smoke/debian:bookworm` with debootstrap + `docker import`, tags it as
# debian:bookworm-slim, and builds rust:1.95-bookworm (the host's Rust toolchain and CA certificates) and postgres:15
# (Debian's PostgreSQL 15 with the part of the official entrypoint compose relies on) from scripts/docker-smoke/.
# It also drops the Dockerfile's `# syntax=` line, for which BuildKit would fetch its frontend from Docker Hub.
# Needs: a Docker engine (DOCKER_HOST is honoured), docker-compose 1.29+ or the Compose v2 plugin, curl;
# with --local-base also debootstrap and rustc on the host. Published ports go to FERRITE_PUBLISH_IP (default
# 127.0.0.77, so they do not collide with anything on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."

local_base=false
binary=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --local-base) local_base=true ;;
    --binary) binary=${2:?--binary needs a path}; shift ;;
    *) echo "usage: $0 [--local-base] [--binary PATH]" >&2; exit 2 ;;
  esac
  shift
done

docker=${DOCKER:-docker}
if command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
elif $docker compose version >/dev/null 2>&1; then
  compose=($docker compose)
else
  echo "docker-smoke: no docker-compose: apt install docker-compose, or the Compose v2 plugin" >&2
  exit 1
fi
command -v curl >/dev/null || { echo "docker-smoke: curl is missing: apt install curl" >&2; exit 1; }
$docker info >/dev/null 2>&1 || { echo "docker-smoke: no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unset})" >&2; exit 1; }

export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-ferrite-smoke}
export FERRITE_IMAGE=${FERRITE_IMAGE:-ferrite:smoke}
export FERRITE_PUBLISH_IP=${FERRITE_PUBLISH_IP:-127.0.0.77}
export FERRITE_FLEET_DEVICES=${FERRITE_FLEET_DEVICES:-5}
work=$(mktemp -d)

cleanup() {
  status=$?
  if [[ $status -ne 0 ]]; then
    echo "docker-smoke: FAILED; the services' last logs:" >&2
    "${compose[@]}" logs --tail 30 >&2 || true
  fi
  "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$work"
  exit $status
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

build_local_base() {
  if ! $docker image inspect ferrite-smoke/debian:bookworm >/dev/null 2>&1; then
    step "debootstrap a Debian bookworm base and import it"
    command -v debootstrap >/dev/null || { echo "docker-smoke: apt install debootstrap" >&2; exit 1; }
    debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log"
    tar -C "$work/rootfs" -c . | $docker import - ferrite-smoke/debian:bookworm
  fi
  $docker tag ferrite-smoke/debian:bookworm debian:bookworm-slim
  step "rust:1.95-bookworm stand-in (host toolchain $(rustc --version))"
  local sysroot context=$work/rust
  sysroot=$(rustc --print sysroot)
  mkdir -p "$context/toolchain"
  cp -a "$sysroot/bin" "$sysroot/lib" "$context/toolchain/"
  cp /etc/ssl/certs/ca-certificates.crt "$context/"
  cp scripts/docker-smoke/rust.Dockerfile "$context/Dockerfile"
  DOCKER_BUILDKIT=1 $docker build -q -t rust:1.95-bookworm "$context"
  step "postgres:15 stand-in"
  DOCKER_BUILDKIT=1 $docker build -q -t postgres:15 -f scripts/docker-smoke/postgres.Dockerfile scripts/docker-smoke
}

dockerfile=deploy/Dockerfile
if $local_base; then
  build_local_base
  dockerfile=$work/Dockerfile
  sed '/^# syntax=/d' deploy/Dockerfile >"$dockerfile"
fi

context=.
if [[ -n "$binary" ]]; then
  # The runtime stage as it is, with the host's binary in place of the build stages' output.
  context=$work/context
  mkdir -p "$context/deploy/docker"
  cp "$binary" "$context/ferrite"
  cp deploy/docker/healthcheck.sh "$context/deploy/docker/"
  sed -n '/^FROM .* AS runtime/,$p' "$dockerfile" \
    | sed 's|^COPY --from=builder /src/target/release/ferrite |COPY ferrite |' >"$work/Dockerfile.runtime"
  { grep '^ARG ' "$dockerfile"; cat "$work/Dockerfile.runtime"; } >"$work/Dockerfile.binary"
  dockerfile=$work/Dockerfile.binary
fi

step "build $FERRITE_IMAGE from deploy/Dockerfile${binary:+ (runtime stage, binary $binary)}"
started=$SECONDS
DOCKER_BUILDKIT=1 $docker build -f "$dockerfile" -t "$FERRITE_IMAGE" "$context"
echo "built in $((SECONDS - started)) s"

step "compose up"
"${compose[@]}" up -d --no-build

# Every long-running service (not the one-shot migrate) healthy, within 5 minutes.
services=(postgres broker ingester registry gateway fleet)
step "waiting for ${services[*]} to be healthy"
deadline=$((SECONDS + 300))
for service in "${services[@]}"; do
  while :; do
    id=$("${compose[@]}" ps -q "$service")
    health=$([[ -n "$id" ]] && $docker inspect -f '{{.State.Health.Status}}' "$id" 2>/dev/null || echo starting)
    [[ "$health" == healthy ]] && { echo "$service: healthy"; break; }
    ((SECONDS < deadline)) || { echo "docker-smoke: $service is $health after 300 s" >&2; exit 1; }
    sleep 2
  done
done

step "readings reach PostgreSQL"
psql() { "${compose[@]}" exec -T postgres psql -h /tmp -U ferrite -d ferrite -tAc "$1"; }
deadline=$((SECONDS + 120))
until [[ "$(psql 'select count(*) from readings' | tr -d '[:space:]')" -gt 0 ]]; do
  ((SECONDS < deadline)) || { echo "docker-smoke: no reading stored after 120 s" >&2; exit 1; }
  sleep 2
done
echo "readings stored: $(psql 'select count(*) from readings' | tr -d '[:space:]')"

readyz() { curl -s -o "$work/readyz" -w '%{http_code}' "http://$FERRITE_PUBLISH_IP:8081/readyz" || true; }
step "registry /readyz: $(readyz) $(cat "$work/readyz")"
[[ "$(readyz)" == 200 ]] || { echo "docker-smoke: the registry is not ready" >&2; exit 1; }

step "stop postgres: the registry's /readyz must answer 503 naming the database"
"${compose[@]}" stop postgres
deadline=$((SECONDS + 60))
until [[ "$(readyz)" == 503 ]] && grep -q '"database"' "$work/readyz"; do
  ((SECONDS < deadline)) || { echo "docker-smoke: /readyz stayed $(readyz) without the database" >&2; exit 1; }
  sleep 1
done
echo "503 $(cat "$work/readyz")"
[[ "$(curl -s -o /dev/null -w '%{http_code}' "http://$FERRITE_PUBLISH_IP:8081/healthz")" == 200 ]] \
  || { echo "docker-smoke: /healthz (liveness) failed while the database was down" >&2; exit 1; }

step "start postgres again: ready again"
"${compose[@]}" start postgres
deadline=$((SECONDS + 120))
until [[ "$(readyz)" == 200 ]]; do
  ((SECONDS < deadline)) || { echo "docker-smoke: /readyz stayed $(readyz) after the database came back" >&2; exit 1; }
  sleep 1
done
echo "200 $(cat "$work/readyz")"

step "docker-smoke: OK"
