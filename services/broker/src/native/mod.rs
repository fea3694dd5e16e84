//! Ferrite's own MQTT engine (issue 13), selected with [`crate::EngineKind::Ferrite`] (`--engine ferrite`).
//!
//! Built over `ferrite-mqtt-codec`; rmqtt stays the default until this engine passes every broker, pipeline and
//! acceptance test.

use std::time::Duration;

/// The Topic Alias Maximum announced to clients unless configured otherwise: enough for a device's metrics.
pub const DEFAULT_TOPIC_ALIAS_MAXIMUM: u16 = 64;

/// When a QoS 1/2 message counts as received, that is when the broker sends PUBACK (or PUBREC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Once what it changed (queued for persistent sessions, retained) is on disk: writes of every client that
    /// arrive while one flush runs share the next one (group commit). Survives a SIGKILL or a power cut.
    #[default]
    Sync,
    /// At once; the store flushes to disk every interval, so a crash loses at most that much.
    Periodic(Duration),
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "sync" {
            return Ok(Durability::Sync);
        }
        let interval = s.strip_prefix("periodic").map(|rest| rest.trim_start_matches(':'));
        match interval {
            Some("") => Ok(Durability::Periodic(Duration::from_millis(500))),
            Some(every) => match humantime::parse_duration(every) {
                Ok(interval) if !interval.is_zero() => Ok(Durability::Periodic(interval)),
                Ok(_) => Err("the flush interval must be more than zero".into()),
                Err(e) => Err(format!("invalid flush interval {every:?}: {e}")),
            },
            None => {
                Err(format!("unknown durability {s:?}: expected \"sync\" or \"periodic[:<interval, e.g. 500ms>]\""))
            }
        }
    }
}
