# Daily tasks for Ferrite. `just --list` shows them; the README's two commands need no `just`.
# Install just quickly with `pip install rust-just` (or `cargo install just`).
# Every recipe with `*flags` passes extra arguments through, e.g. `just test -p ferrite-core`.

fleet := "20"
data_dir := "./.ferrite"
# The Compose v2 command; set COMPOSE="docker-compose" to use a standalone Compose binary instead.
compose := env_var_or_default("COMPOSE", "docker compose")

# Run the whole platform with a simulated fleet (broker, ingester, registry, gateway, private PostgreSQL).
up *flags:
    cargo run --release -- up --fleet {{fleet}} {{flags}}

# Stop a `just up` / `ferrite up` running in another terminal, as Ctrl-C does (it drains, then stops its PostgreSQL).
down:
    @pkill -INT -f '(^|/)ferrite up( |$)' && echo "asked ferrite up to stop; it drains, then exits" || echo "no ferrite up is running"

# A livelier local demo: 50 devices that now and then burst, drop their connection or send a bad payload.
demo *flags:
    cargo run --release -- up --fleet 50 --burst-rate 0.01 --drop-rate 0.002 --bad-payload-rate 0.005 {{flags}}

# Apply the database migrations (to DATABASE_URL, or the private cluster under ./.ferrite).
migrate *flags:
    cargo run --release -- migrate {{flags}}

# Run every test, as CI does.
test *flags:
    cargo test --workspace {{flags}}

# Run the tests with cargo-nextest (one process per test, better isolation and timing output).
nextest *flags:
    cargo nextest run --workspace {{flags}}

# Benchmarks: the embedded broker and Mosquitto side by side (scripts/bench-ab.sh; `--help` lists its options).
bench *flags:
    bash scripts/bench-ab.sh {{flags}}

# Pipeline benchmark: `ferrite up` on spare ports, readings to PostgreSQL and browsers (e.g. `just bench-pipeline -- --rate 10000`).
bench-pipeline *flags:
    bash scripts/bench-pipeline.sh {{flags}}

# The broker conformance scenarios against a real Mosquitto 2, pass/fail per scenario (`--help` lists its options).
conformance-mosquitto *flags:
    bash scripts/conformance-mosquitto.sh {{flags}}

# Format the code.
fmt:
    cargo fmt --all

# Lint as CI does.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Everything CI runs, including installing missing system packages.
ci:
    bash .ci/run

# The release binary, built exactly as deploy/Dockerfile builds it.
build-release *flags:
    cargo build --release --locked -p ferrite {{flags}}

# Run only the broker.
broker *flags:
    cargo run --release -- broker {{flags}}

# Run a fleet against any broker (e.g. `just fleet-only --broker-url mqtt://host:1883 --devices 100`).
fleet-only *flags:
    cargo run --release -- fleet {{flags}}

# Forget all local state: the private PostgreSQL cluster, retained messages and sessions (stop `ferrite up` first).
db-reset:
    rm -rf {{data_dir}}

# Print the dependency duplicates, to keep the tree lean.
deps:
    cargo tree --workspace -d --depth 0

# ---- containers (need Docker with Compose v2) ----

# Build the image every compose service and Kubernetes manifest runs.
docker-build tag="ferrite:dev":
    docker build -f deploy/Dockerfile -t {{tag}} .

# Start the compose stack in the background (e.g. `just compose-up --scale ingester=3`); dashboard on :8080.
compose-up *flags:
    {{compose}} up --build -d {{flags}}
    @echo "dashboard http://127.0.0.1:8080/  registry http://127.0.0.1:8081/openapi.json  (just logs, just compose-down)"

# The stack plus the OpenTelemetry collector, Jaeger, Prometheus and Grafana, with trace export switched on.
compose-observe *flags:
    {{compose}} --profile observability --env-file deploy/compose/observability.env up --build -d {{flags}}
    @echo "Grafana http://127.0.0.1:3000/  Jaeger http://127.0.0.1:16686/  Prometheus http://127.0.0.1:9090/"

# The stack on another MQTT broker: `just compose-broker mosquitto` or `just compose-broker emqx`.
compose-broker broker *flags:
    {{compose}} --profile {{broker}} --env-file deploy/compose/{{broker}}.env up --build -d {{flags}}

# Stop the compose stack, whatever profiles it runs (`just compose-down -v` also deletes its volumes).
compose-down *flags:
    {{compose}} --profile observability --profile mosquitto --profile emqx down {{flags}}

# Follow the stack's logs (e.g. `just logs ingester`).
logs *flags:
    {{compose}} logs -f --tail 100 {{flags}}

# Show the stack's containers and their health.
compose-ps *flags:
    {{compose}} --profile observability --profile mosquitto --profile emqx ps {{flags}}

# Create an API token for the compose stack's registry (shown once): `just compose-token ci`.
compose-token name="admin":
    {{compose}} exec registry ferrite token create --name {{name}} --direct

# Forget the compose stack's data: database, broker sessions and retained messages.
compose-reset:
    {{compose}} --profile observability --profile mosquitto --profile emqx down -v

# Render a Kubernetes overlay (default: example) as kubectl would apply it.
k8s-render overlay="example":
    kubectl kustomize deploy/kubernetes/overlays/{{overlay}}

# Check the compose file, the Kubernetes manifests and the observability configs, as CI does.
deploy-check:
    bash deploy/validate.sh
