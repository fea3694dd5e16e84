//! Integration tests of the embedded broker, driven by third-party clients (Paho, mosquitto) and rumqttc.
//!
//! One test binary on purpose: every binary links rmqtt again, and the restart test re-runs this
//! binary as the broker's child process.

mod messaging;
mod support;
mod experiment;
