# Daily tasks for Ferrite. `just --list` shows them; the README's two commands need no `just`.
# Install just quickly with `pip install rust-just` (or `cargo install just`).

fleet := "20"
data_dir := "./.ferrite"

# Run the whole platform with a simulated fleet (broker, ingester, private PostgreSQL).
up *flags:
    cargo run --release -- up --fleet {{fleet}} {{flags}}

# Run every test, as CI does.
test *flags:
    cargo test --workspace {{flags}}

# Run the tests with cargo-nextest (one process per test, better isolation and timing output).
nextest *flags:
    cargo nextest run --workspace {{flags}}

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

# Run only the broker.
broker *flags:
    cargo run --release -- broker {{flags}}

# Run a fleet against any broker (e.g. `just fleet-only --broker-url mqtt://host:1883 --devices 100`).
fleet-only *flags:
    cargo run --release -- fleet {{flags}}

# Forget all local state: the private PostgreSQL cluster, retained messages and sessions.
db-reset:
    rm -rf {{data_dir}}

# Print the dependency duplicates, to keep the tree lean.
deps:
    cargo tree --workspace -d --depth 0
