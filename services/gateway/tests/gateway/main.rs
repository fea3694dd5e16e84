//! Integration tests of the gateway with real parts: the embedded broker, WebSockets, mqtt.js, and Chromium.
//!
//! One test binary on purpose: each binary links the broker again, which is slow on two cores.
//! The node scripts live in `tests/js`; install their packages with `npm ci --prefix services/gateway/tests/js`.

mod browser;
mod mqttjs;
mod protocol;
mod support;
