//! Integration tests of commands with real parts: PostgreSQL, the embedded broker, the ingester (presence),
//! the registry serving the commands API on port 0, simulated fleet devices and raw MQTT clients.
//!
//! One test binary on purpose: each binary links the broker again, which is slow on two cores.

mod api;
mod devices;
mod support;
