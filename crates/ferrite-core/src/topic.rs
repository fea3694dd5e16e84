//! The topic contract of DESIGN.md: what a topic means to the platform.

use crate::device::{DeviceId, is_valid_name};

/// A topic, classified by the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic<'a> {
    /// `sensors/{device_id}/{metric}`: one reading.
    Reading { device: DeviceId, metric: &'a str },
    /// `sensors/{device_id}`: a batch of metrics at one instant.
    Batch { device: DeviceId },
    /// `devices/{device_id}/status`: retained `online` / `offline`.
    Status { device: DeviceId },
    /// `commands/{device_id}`: a command to a device.
    Command { device: DeviceId },
    /// `commands/{device_id}/response`: a device's answer.
    CommandResponse { device: DeviceId },
    /// `alerts/{device_id}`: an alert raised by the platform.
    Alert { device: DeviceId },
    /// Under `sensors/`, `devices/`, `commands/` or `alerts/` but not of a shape the contract names
    /// (a bad device id, a bad metric name, too many levels): the reason says what is wrong.
    Malformed { reason: String },
    /// Anything else (`control/#`, ...): passed through untouched.
    Other,
}

impl<'a> Topic<'a> {
    /// Classifies `topic`.
    pub fn parse(topic: &'a str) -> Topic<'a> {
        let mut levels = topic.split('/');
        let root = levels.next().unwrap_or_default();
        let rest: Vec<&'a str> = levels.collect();
        let device = |raw: &str| DeviceId::new(raw).map_err(|err| Topic::Malformed { reason: err.to_string() });
        let parsed = match (root, rest.as_slice()) {
            ("sensors", [id]) => device(id).map(|device| Topic::Batch { device }),
            ("sensors", [id, metric]) => device(id).and_then(|device| {
                if is_valid_name(metric) {
                    Ok(Topic::Reading { device, metric })
                } else {
                    Err(Topic::Malformed {
                        reason: format!("invalid metric name {metric:?}: expected 1 to 64 of A-Z a-z 0-9 _ . -"),
                    })
                }
            }),
            ("devices", [id, "status"]) => device(id).map(|device| Topic::Status { device }),
            ("devices", _) => return Topic::Other,
            ("commands", [id]) => device(id).map(|device| Topic::Command { device }),
            ("commands", [id, "response"]) => device(id).map(|device| Topic::CommandResponse { device }),
            ("alerts", [id]) => device(id).map(|device| Topic::Alert { device }),
            ("sensors" | "commands" | "alerts", _) => {
                Err(Topic::Malformed { reason: format!("topic {topic:?} does not match the {root}/ layout") })
            }
            _ => return Topic::Other,
        };
        parsed.unwrap_or_else(|malformed| malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        DeviceId::new(s).expect("test ids are valid")
    }

    fn check(topic: &str, expected: Topic<'_>) {
        assert_eq!(Topic::parse(topic), expected, "{topic}");
    }

    #[test]
    fn classifies_topics() {
        check("sensors/sim-0001/temperature", Topic::Reading { device: id("sim-0001"), metric: "temperature" });
        check("sensors/sim-0001", Topic::Batch { device: id("sim-0001") });
        check("devices/temp-sensor-001/status", Topic::Status { device: id("temp-sensor-001") });
        check("devices/x/other", Topic::Other);
        check("commands/d1", Topic::Command { device: id("d1") });
        check("commands/d1/response", Topic::CommandResponse { device: id("d1") });
        check("alerts/d1", Topic::Alert { device: id("d1") });
        check("control/lights/living-room", Topic::Other);
        check("clients/web-client/status", Topic::Other);
        assert!(matches!(Topic::parse("sensors/a b/t"), Topic::Malformed { .. }));
        assert!(matches!(Topic::parse("sensors/d/t/extra"), Topic::Malformed { .. }));
        assert!(matches!(Topic::parse("sensors/d/"), Topic::Malformed { .. }));
        assert!(matches!(Topic::parse("sensors/"), Topic::Malformed { .. }));
    }
}
