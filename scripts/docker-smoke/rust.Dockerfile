# A stand-in for the official rust:<version>-bookworm image where no image registry is reachable
# (scripts/docker-smoke.sh --local-base): Debian from debootstrap, its C toolchain, the host's Rust toolchain
# and the host's CA certificates.
ARG BASE=ferrite-smoke/debian:bookworm
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# The host's trust store, so that cargo reaches crates.io through whatever TLS proxy the host itself trusts.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY toolchain/bin/ /usr/local/rust/bin/
COPY toolchain/lib/ /usr/local/rust/lib/
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/cargo/bin && rustc --version && cargo --version
