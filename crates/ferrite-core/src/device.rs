//! Device identifiers: 1 to 64 of `[A-Za-z0-9_.-]`, the same rule as the database check.

use std::fmt;

/// The longest device id we accept; it keeps topics and keys short and matches the database check.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// A validated device id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct DeviceId(String);

/// Why a string is not a device id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid device id {0:?}: expected 1 to 64 of A-Z a-z 0-9 _ . -")]
pub struct InvalidDeviceId(pub String);

/// True when `s` is a valid name segment: 1 to 64 of `[A-Za-z0-9_.-]` (device ids and metric names).
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_DEVICE_ID_LEN
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl DeviceId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidDeviceId> {
        let id = id.into();
        if is_valid_name(&id) { Ok(Self(id)) } else { Err(InvalidDeviceId(id)) }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for DeviceId {
    type Err = InvalidDeviceId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> serde::Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::new(raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, valid: bool) {
        assert_eq!(DeviceId::new(input).is_ok(), valid, "{input:?}");
    }

    #[test]
    fn validates_ids() {
        check("sim-0001", true);
        check("temp-sensor-001", true);
        check("a.b_c-D9", true);
        check(&"x".repeat(64), true);
        check(&"x".repeat(65), false);
        check("", false);
        check("a/b", false);
        check("a+b", false);
        check("a#", false);
        check("dévice", false);
        check("a b", false);
    }
}
