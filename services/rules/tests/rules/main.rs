//! Integration tests of rules and alerts with real parts: PostgreSQL, the embedded broker, the registry serving
//! the rules API on port 0, the engine over MQTT, and the gateway with a WebSocket client.
//!
//! One test binary on purpose: each binary links the broker again, which is slow on two cores.

mod api;
mod engine;
mod gateway;
mod support;
