#!/usr/bin/env bash
# Validates the deploy files without a Docker engine or a Kubernetes cluster (CI runs it from .ci/run):
#   1. docker-compose.yml, alone and with each profile and env file, with `docker-compose config -q`;
#   2. the Kubernetes base and overlays rendered by kustomize, then schema-checked with kubernetes-validate
#      (schemas bundled in the package, so it works offline) against the newest and an older Kubernetes;
#   3. deploy/validate.py: the rendered manifests' references resolve and every container has probes and resources;
#      every YAML parses, the Grafana dashboard JSON parses and asks only for recorded metrics,
#      Prometheus scrapes the right ports, the collector's pipelines are complete, the Dockerfile's build command,
#      every service account (FERRITE_SERVICE_SECRET_* in crates/ferrite/src/cli.rs) reaches the brokers and its client;
#   4. the shell scripts parse.
# Needs: docker-compose (apt install docker-compose) or the Compose v2 plugin, kubectl with kustomize or kustomize itself,
# kubernetes-validate (pip install kubernetes-validate), PyYAML.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
else
  echo "deploy/validate.sh: docker-compose is missing: apt install docker-compose" \
    "(Debian's package; 'config' needs no Docker engine), or the Docker Compose v2 plugin" >&2
  exit 1
fi
python3 -c 'import kubernetes_validate' 2>/dev/null \
  || { echo "deploy/validate.sh: kubernetes-validate is missing: pip install kubernetes-validate" >&2; exit 1; }
python3 -c 'import yaml' 2>/dev/null || { echo "deploy/validate.sh: PyYAML is missing: pip install pyyaml" >&2; exit 1; }
if command -v kustomize >/dev/null 2>&1; then
  render() { kustomize build "$1"; }
elif command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
  render() { kubectl kustomize "$1"; }
else
  echo "deploy/validate.sh: kustomize is missing: install kubectl >= 1.21 (it contains kustomize) or kustomize 5" >&2
  exit 1
fi

echo "--- docker compose (${compose_cmd[*]})"
compose() {  # compose DESCRIPTION ARGS...
  local what=$1; shift
  if ! "${compose_cmd[@]}" -f docker-compose.yml "$@" config -q; then
    echo "FAIL docker-compose.yml ($what)" >&2; exit 1
  fi
  echo "ok   docker-compose.yml ($what)"
}
compose "default"
compose "profile observability" --profile observability --env-file deploy/compose/observability.env
compose "profile mosquitto" --profile mosquitto --env-file deploy/compose/mosquitto.env
compose "profile emqx" --profile emqx --env-file deploy/compose/emqx.env
compose "every profile" --profile observability --profile mosquitto --profile emqx

echo "--- kubernetes"
rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
for dir in deploy/kubernetes/base deploy/kubernetes/overlays/*/; do
  dir=${dir%/}
  out="$rendered/$(echo "$dir" | tr / _).yaml"
  render "$dir" > "$out" || { echo "FAIL kustomize could not render $dir" >&2; exit 1; }
  kinds=$(grep -c '^kind:' "$out")
  # --strict rejects unknown fields; 1.27 is the oldest Kubernetes still commonly run that these manifests target.
  python3 -m kubernetes_validate --strict --quiet -k 1.37.0 -k 1.27.0 "$out" \
    || { echo "FAIL $dir does not validate against the Kubernetes 1.27/1.37 schemas (see above)" >&2; exit 1; }
  echo "ok   $dir: $kinds resources render and validate (Kubernetes 1.27 and 1.37 schemas, strict)"
done

echo "--- references in the rendered manifests, observability, dashboard, Dockerfile"
python3 deploy/validate.py "$rendered"/*.yaml

echo "--- scripts"
bash -n deploy/docker/healthcheck.sh && sh -n deploy/mosquitto/start.sh && echo "ok   shell scripts parse"
if command -v just >/dev/null 2>&1; then
  just --summary >/dev/null && echo "ok   justfile parses ($(just --summary | wc -w) recipes)"
else
  echo "skip justfile check: just is not installed (pip install rust-just)"
fi
echo "deploy files valid"
