//! Integration tests of the embedded broker, driven by third-party clients (Paho, mosquitto) and rumqttc.
//!
//! One test binary on purpose: each binary links the whole broker again, and the restart test runs this
//! binary again as the broker's child process.

mod authorizer;
mod conformance;
mod lifecycle;
mod messaging;
mod restart;
mod robustness;
mod sessions;
mod support;
mod takeover;
mod tls;
mod websocket;
