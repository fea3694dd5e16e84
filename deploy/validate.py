#!/usr/bin/env python3
"""Consistency checks of the deploy files that no off-the-shelf validator makes (run by deploy/validate.sh).

Every YAML file parses; the compose file keeps the rules the stack relies on (scalable ingester, health checks,
migrations first); Prometheus scrapes the ports the services listen on; the collector's pipelines use components it
defines; the Grafana dashboard parses, uses a provisioned data source, and asks only for metrics the code records;
Mosquitto's accounts match the compose env file; every service account the broker knows (FERRITE_SERVICE_SECRET_* in
crates/ferrite/src/cli.rs) has its secret wherever the others have theirs and is used by the service that should use it;
the Dockerfile builds with the documented cargo command.
Rendered Kubernetes manifests given as arguments are checked for dangling references, probes and resources, and
for the same service accounts.
Prints one line per failed check and exits 1 if any failed.
"""

import json
import pathlib
import re
import sys

try:
    import yaml
except ImportError:
    sys.exit("deploy/validate.py needs PyYAML: pip install pyyaml (or apt install python3-yaml)")

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BUILD_COMMAND = "cargo build --release --locked -p ferrite"
FERRITE_SERVICES = ["broker", "ingester", "registry", "gateway", "fleet"]
# Which service logs in to MQTT with which service account (`service:<role>`, services/registry/src/authorizer.rs).
MQTT_ROLE_OF_SERVICE = {"ingester": "ingester", "gateway": "gateway", "fleet": "fleet", "registry": "api"}

failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL {message}")


def load_yaml(path):
    try:
        return list(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError as error:
        fail(f"{path.relative_to(ROOT)} is not valid YAML: {error}")
        return []


def check_all_yaml():
    paths = sorted([ROOT / "docker-compose.yml", *DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    for path in paths:
        docs = load_yaml(path)
        if not any(doc is not None for doc in docs):
            fail(f"{path.relative_to(ROOT)} holds no YAML document")
    print(f"ok   {len(paths)} YAML files parse")


def listen_port(environment, variable):
    value = environment.get(variable, "")
    match = re.fullmatch(r"0\.0\.0\.0:(\d+)", str(value))
    return int(match.group(1)) if match else None


def check_compose():
    (compose,) = load_yaml(ROOT / "docker-compose.yml") or [None]
    if not compose:
        return {}
    services = compose["services"]
    for name in FERRITE_SERVICES + ["migrate"]:
        if name not in services:
            fail(f"docker-compose.yml has no service {name}")
            return {}
    for name in FERRITE_SERVICES:
        service = services[name]
        if "healthcheck" not in service:
            fail(f"compose service {name} has no health check")
        depends = service.get("depends_on", {})
        waits_for_migrate = depends.get("migrate", {}).get("condition") == "service_completed_successfully"
        waits_for_broker = depends.get("broker", {}).get("condition") == "service_healthy"
        if not (waits_for_migrate or waits_for_broker):
            fail(f"compose service {name} starts before the migrations or the broker are ready")
        if "container_name" in service:
            fail(f"compose service {name} has a fixed container_name (breaks --scale)")
    ingester = services["ingester"]
    if "ports" in ingester:
        fail("compose service ingester publishes host ports: `--scale ingester=3` would collide")
    entry = " ".join(ingester.get("entrypoint", []))
    if "--ingester-id" not in entry or "hostname" not in entry:
        fail("compose ingester replicas need distinct MQTT client ids (--ingester-id from the hostname)")
    telemetry = (ROOT / "crates/ferrite-telemetry/src/lib.rs").read_text()
    default_filter = re.search(r'pub const DEFAULT_FILTER: &str = "([^"]+)"', telemetry)
    rust_log = str(compose.get("x-ferrite-env", {}).get("RUST_LOG", ""))
    if default_filter and rust_log != "${RUST_LOG:-%s}" % default_filter.group(1):
        fail("docker-compose.yml's default RUST_LOG differs from ferrite-telemetry's DEFAULT_FILTER: copy it over")
    print("ok   docker-compose.yml: health checks, start order, scalable ingester, default log filter")
    # Ports each service's /metrics is served on inside the network.
    ports = {}
    for name, variable in [("broker", "FERRITE_METRICS_ADDR"), ("ingester", "FERRITE_METRICS_ADDR"),
                           ("fleet", "FERRITE_METRICS_ADDR"), ("registry", "FERRITE_REST_ADDR"),
                           ("gateway", "FERRITE_HTTP_ADDR")]:
        port = listen_port(services[name].get("environment", {}), variable)
        if port is None:
            fail(f"compose service {name} does not set {variable}=0.0.0.0:<port>")
        ports[name] = port
    return ports


def check_prometheus(ports):
    (config,) = load_yaml(DEPLOY / "observability/prometheus.yml") or [None]
    if not config:
        return
    scraped = {}
    for job in config.get("scrape_configs", []):
        for static in job.get("static_configs", []):
            for target in static.get("targets", []):
                host, _, port = target.partition(":")
                scraped[host] = int(port)
        for dns in job.get("dns_sd_configs", []):
            for name in dns.get("names", []):
                scraped[name] = int(dns["port"])
    for service, port in ports.items():
        if scraped.get(service) != port:
            fail(f"prometheus.yml scrapes {service} on {scraped.get(service)}, but it serves /metrics on {port}")
    print(f"ok   prometheus.yml scrapes {', '.join(sorted(ports))} on their metrics ports")


def check_collector():
    (config,) = load_yaml(DEPLOY / "observability/otel-collector.yaml") or [None]
    if not config:
        return
    for pipeline, spec in config["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in spec.get(kind, []):
                if component not in (config.get(kind) or {}):
                    fail(f"otel-collector.yaml pipeline {pipeline} uses {kind[:-1]} {component}, which is not defined")
    if "4317" not in json.dumps(config["receivers"]):
        fail("otel-collector.yaml does not receive OTLP/gRPC on 4317 (where OTEL_EXPORTER_OTLP_ENDPOINT points)")
    print("ok   otel-collector.yaml pipelines use defined components")


def recorded_metrics():
    names = set()
    pattern = re.compile(r'(?:counter|gauge|histogram)!\(\s*"([a-z_:][a-z0-9_:]*)"')
    for folder in ("crates", "services"):
        for path in (ROOT / folder).rglob("*.rs"):
            names.update(pattern.findall(path.read_text(errors="replace")))
    return names


def check_grafana():
    provisioning = DEPLOY / "observability/grafana/provisioning"
    (datasources,) = load_yaml(provisioning / "datasources/datasources.yaml") or [None]
    uids = {source["uid"] for source in (datasources or {}).get("datasources", [])}
    metrics = recorded_metrics()
    if not metrics:
        fail("found no counter!/gauge!/histogram! metric names in crates/ and services/")
    dashboards = sorted((DEPLOY / "observability/grafana/dashboards").glob("*.json"))
    if not dashboards:
        fail("no Grafana dashboard JSON under deploy/observability/grafana/dashboards")
    for path in dashboards:
        try:
            dashboard = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            fail(f"{path.relative_to(ROOT)} is not valid JSON: {error}")
            continue
        used = set()
        for panel in dashboard.get("panels", []):
            for target in panel.get("targets", []):
                uid = (target.get("datasource") or panel.get("datasource") or {}).get("uid")
                if uid not in uids:
                    fail(f"{path.name} panel {panel.get('title')!r} uses data source {uid!r}, not provisioned")
                for name in re.findall(r"\bferrite_[a-z0-9_]+", target.get("expr", "")):
                    used.add(re.sub(r"_(sum|count|bucket)$", "", name))
        for name in sorted(used - metrics):
            fail(f"{path.name} queries {name}, which no code records (grep counter!/gauge!/histogram!)")
        print(f"ok   {path.name}: valid JSON, {len(dashboard.get('panels', []))} panels, {len(used)} Ferrite metrics, all recorded")


def service_roles():
    """The broker's service accounts, lower case (ingester, gateway, ...): one FERRITE_SERVICE_SECRET_<ROLE> each."""
    cli = (ROOT / "crates/ferrite/src/cli.rs").read_text()
    roles = sorted({role.lower() for role in re.findall(r'env = "FERRITE_SERVICE_SECRET_([A-Z_]+)"', cli)})
    if not roles:
        fail("crates/ferrite/src/cli.rs names no FERRITE_SERVICE_SECRET_* variable: update deploy/validate.py")
    for role in MQTT_ROLE_OF_SERVICE.values():
        if role not in roles:
            fail(f"deploy/validate.py expects a service:{role} account, but crates/ferrite/src/cli.rs has no "
                 f"FERRITE_SERVICE_SECRET_{role.upper()}")
    return roles


def secret_variable(role):
    return f"FERRITE_SERVICE_SECRET_{role.upper()}"


def check_mosquitto(roles):
    expected = {f"ferrite-{role}" for role in roles}
    acl_users = set(re.findall(r"^user (\S+)", (DEPLOY / "mosquitto/acl.conf").read_text(), re.M))
    start = (DEPLOY / "mosquitto/start.sh").read_text()
    start_lines = dict(re.findall(r'mosquitto_passwd .*?"\$passwd" (\S+) "\$\{(\w+):', start))
    env_users = set(re.findall(r"_MQTT_USERNAME=(\S+)", (DEPLOY / "compose/mosquitto.env").read_text()))
    if not (acl_users == set(start_lines) == env_users == expected):
        fail(f"Mosquitto accounts disagree: acl.conf {sorted(acl_users)}, start.sh {sorted(start_lines)}, "
             f"mosquitto.env {sorted(env_users)}, the broker's service accounts {sorted(expected)}")
        return
    for user, variable in start_lines.items():
        if variable != secret_variable(user.removeprefix("ferrite-")):
            fail(f"deploy/mosquitto/start.sh gives {user} the password {variable}")
    print(f"ok   Mosquitto accounts agree: {', '.join(sorted(acl_users))}")


def check_compose_accounts(roles):
    """Both brokers get every secret with the same default; each client logs in as its role with that role's secret."""
    (compose,) = load_yaml(ROOT / "docker-compose.yml") or [None]
    if not compose:
        return
    services = compose["services"]
    defaults = {}
    for broker in ("broker", "mosquitto"):
        environment = services.get(broker, {}).get("environment", {})
        for role in roles:
            variable = secret_variable(role)
            match = re.fullmatch(r"\$\{%s:-(.+)\}" % variable, str(environment.get(variable, "")))
            if not match:
                fail(f"compose service {broker} does not set {variable}: ${{{variable}:-<local default>}}")
            elif defaults.setdefault(role, match.group(1)) != match.group(1):
                fail(f"compose services broker and {broker} default {variable} differently")
    env_file = (DEPLOY / "compose/mosquitto.env").read_text()
    for name, role in MQTT_ROLE_OF_SERVICE.items():
        service = services.get(name, {})
        environment = service.get("environment", {})
        username = re.fullmatch(r"\$\{(FERRITE_\w+_MQTT_USERNAME):-service:(\w+)\}",
                                str(environment.get("FERRITE_MQTT_USERNAME", "")))
        if not username or username.group(2) != role:
            fail(f"compose service {name} does not log in as service:{role} "
                 f"(FERRITE_MQTT_USERNAME: ${{FERRITE_<X>_MQTT_USERNAME:-service:{role}}})")
        elif not re.search(r"^%s=ferrite-%s$" % (username.group(1), role), env_file, re.M):
            fail(f"deploy/compose/mosquitto.env does not set {username.group(1)}=ferrite-{role}")
        password = "${%s:-%s}" % (secret_variable(role), defaults.get(role, ""))
        if str(environment.get("FERRITE_MQTT_PASSWORD", "")) != password:
            fail(f"compose service {name}'s FERRITE_MQTT_PASSWORD is not {password}")
        if service.get("depends_on", {}).get("broker", {}).get("condition") != "service_healthy":
            fail(f"compose service {name} talks MQTT but does not wait for the broker's health check")
    example = (ROOT / ".env.example").read_text()
    for role in roles:
        if not re.search(r"^%s=" % secret_variable(role), example, re.M):
            fail(f".env.example does not list {secret_variable(role)}")
    print(f"ok   compose service accounts: {', '.join(roles)} (broker, mosquitto, clients, mosquitto.env, .env.example)")


def check_dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    if f"RUN {BUILD_COMMAND}\n" not in text:
        fail(f"deploy/Dockerfile does not build with `{BUILD_COMMAND}`")
    for source in re.findall(r"^COPY (?!.*--from)(?:--\S+ )*(\S+) ", text, re.M):
        if source != "." and not (ROOT / source).exists():
            fail(f"deploy/Dockerfile copies {source}, which does not exist")
    if not re.search(r"^USER (?!0|root)", text, re.M):
        fail("deploy/Dockerfile does not switch to a non-root user")
    if 'ENTRYPOINT ["ferrite"]' not in text:
        fail('deploy/Dockerfile entrypoint is not ["ferrite"]')
    print(f"ok   Dockerfile: `{BUILD_COMMAND}`, non-root, entrypoint ferrite")


def check_kubernetes(path, roles):
    """What a schema cannot see in a rendered kustomization: references resolve, every container is managed,
    the broker knows every service account and each client logs in with its own."""
    docs = [doc for doc in load_yaml(path) if doc]
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    secrets = {name: set((doc.get("stringData") or {}) | (doc.get("data") or {}))
               for name, doc in by_kind.get("Secret", {}).items()}
    config_maps = set(by_kind.get("ConfigMap", {}))
    for kind in ("Deployment", "StatefulSet", "Job"):
        for name, doc in by_kind.get(kind, {}).items():
            for container in doc["spec"]["template"]["spec"]["containers"]:
                where = f"{path.name}: {kind} {name}, container {container['name']}"
                resources = container.get("resources", {})
                if not (resources.get("requests") and resources.get("limits")):
                    fail(f"{where} has no resource requests and limits")
                if kind != "Job" and not (container.get("livenessProbe") and container.get("readinessProbe")):
                    fail(f"{where} lacks a liveness or readiness probe")
                for source in container.get("envFrom", []):
                    ref = source.get("configMapRef", {}).get("name")
                    if ref and ref not in config_maps:
                        fail(f"{where} reads ConfigMap {ref}, which is not in the rendered output")
                for variable in container.get("env", []):
                    ref = (variable.get("valueFrom") or {}).get("secretKeyRef")
                    if ref and ref["key"] not in secrets.get(ref["name"], set()):
                        fail(f"{where} reads key {ref['key']} of Secret {ref['name']}, which does not exist")
                env = {variable["name"]: variable for variable in container.get("env", [])}
                command = (container.get("args") or [None])[0]
                if command == "broker":
                    for role in roles:
                        ref = (env.get(secret_variable(role), {}).get("valueFrom") or {}).get("secretKeyRef") or {}
                        if ref.get("key") != secret_variable(role):
                            fail(f"{where} does not read {secret_variable(role)} from the Secret")
                role = MQTT_ROLE_OF_SERVICE.get(command)
                if role:
                    ref = (env.get("FERRITE_MQTT_PASSWORD", {}).get("valueFrom") or {}).get("secretKeyRef") or {}
                    if env.get("FERRITE_MQTT_USERNAME", {}).get("value") != f"service:{role}" \
                            or ref.get("key") != secret_variable(role):
                        fail(f"{where} does not log in as service:{role} with {secret_variable(role)} "
                             "(FERRITE_MQTT_USERNAME, FERRITE_MQTT_PASSWORD)")
    for name, doc in by_kind.get("HorizontalPodAutoscaler", {}).items():
        target = doc["spec"]["scaleTargetRef"]
        if target["name"] not in by_kind.get(target["kind"], {}):
            fail(f"{path.name}: HorizontalPodAutoscaler {name} scales {target['kind']} {target['name']}, which does not exist")
    print(f"ok   {path.name}: references resolve; every container has resources (and probes, but for Jobs); "
          f"service accounts: broker knows {', '.join(roles)}, clients log in as their own")


def main():
    roles = service_roles()
    for rendered in sys.argv[1:]:
        check_kubernetes(pathlib.Path(rendered), roles)
    check_all_yaml()
    ports = check_compose()
    if ports:
        check_prometheus(ports)
    check_compose_accounts(roles)
    check_collector()
    check_grafana()
    check_mosquitto(roles)
    check_dockerfile()
    if failures:
        print(f"{len(failures)} deploy check(s) failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
