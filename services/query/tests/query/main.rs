//! Integration tests of the telemetry API against a real PostgreSQL (a fresh database per test), served by a real
//! registry on loopback port 0, called over real sockets; the live stream against the embedded broker.

mod grpc;
mod live;
mod queries;
mod rest;
mod retention;
mod rollup;
mod support;
