//! A reliable MQTT 5 client for Ferrite's services, built on rumqttc.
//!
//! rumqttc alone loses work across reconnects (NOTES.md): it does not resubscribe when the broker
//! lost the session, it drops QoS 1/2 publishes it had accepted when the new session is clean,
//! and a manual ack issued after a reconnect would acknowledge an unrelated packet id.
//! [`Session`] owns the event loop in one driver task and fixes all three:
//!
//! - subscriptions are remembered and sent again on every ConnAck without a session;
//! - every QoS 1/2 publish stays in our own ledger until the broker acknowledges it, and is sent
//!   again after any reconnect (QoS 1 is at-least-once, so a duplicate is allowed, a loss is not);
//! - each received message carries the connection generation it arrived on, and an ack for an older
//!   generation is dropped (the broker redelivers that message on the new connection).
//!
//! # Layout
//! - [`config`]: [`SessionConfig`] and broker URL parsing.
//! - [`session`]: [`Session`], the handle, and the driver task.
//! - [`fanout`]: [`Fanout`], one session fanned out to many consumers through bounded queues.

pub mod config;
pub mod fanout;
pub mod session;

pub use config::{BrokerUrl, SessionConfig, UrlError};
pub use fanout::{Fanout, Queue};
pub use rumqttc::v5::mqttbytes::QoS;
pub use rumqttc::v5::mqttbytes::v5::{Filter, LastWill, Publish, PublishProperties, RetainForwardRule};
pub use session::{Event, Message, Session, SessionError, SessionStatus, user_properties};
