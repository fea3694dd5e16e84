//! The registry's domain types, shared by the REST and gRPC faces, and the rules their fields obey.

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::RegistryError;

/// Most tags one device may carry; enough for labelling, few enough to keep rows and GIN entries small.
pub const MAX_TAGS: usize = 32;
/// Longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 64;
/// Longest device name, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Largest metadata object, as JSON text: metadata describes a device, it is not a data store.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Devices per page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// The most devices one page may hold, so that one request cannot make the server build a huge response.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Presence changes listed per device when the caller names no limit.
pub const DEFAULT_PRESENCE_HISTORY: u32 = 50;
/// The most presence changes listed per device: all that `presence_history` keeps (migration 0007).
pub const MAX_PRESENCE_HISTORY: u32 = 200;
/// Longest API token name, in bytes.
pub const MAX_TOKEN_NAME_LEN: usize = 64;

/// A registered device.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// 1 to 64 of `[A-Za-z0-9_.-]`; also the device's MQTT username.
    #[schema(example = "sim-0001")]
    pub id: String,
    pub name: Option<String>,
    pub tags: Vec<String>,
    /// A JSON object.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// True when the ingester created the device because it published before being registered.
    pub auto_registered: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Absent until the device has announced itself on `devices/{id}/status`.
    pub presence: Option<PresenceState>,
    /// Whether MQTT credentials have been issued.
    pub has_credentials: bool,
}

/// A device's last known presence.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PresenceState {
    pub online: bool,
    /// When anything was last heard from the device.
    pub last_seen: DateTime<Utc>,
    /// When `online` last changed.
    pub changed_at: DateTime<Utc>,
}

/// One change of a device's `online` flag, as announced by the database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PresenceChange {
    #[serde(alias = "device_id")]
    pub device_id: String,
    pub online: bool,
    #[serde(alias = "changed_at")]
    pub changed_at: DateTime<Utc>,
    #[serde(alias = "last_seen")]
    pub last_seen: DateTime<Utc>,
}

/// One entry of a device's presence history: it went online or offline at `changed_at`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PresenceEvent {
    pub online: bool,
    pub changed_at: DateTime<Utc>,
}

/// What a new device starts with.
#[derive(Debug, Clone, Default)]
pub struct NewDevice {
    pub id: String,
    pub name: Option<String>,
    pub tags: Vec<String>,
    /// A JSON object, or `Null` for an empty one.
    pub metadata: serde_json::Value,
}

/// The fields to change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct DeviceChanges {
    /// `Some(None)` clears the name.
    pub name: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
    pub metadata: Option<serde_json::Value>,
}

/// Which devices to list.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    /// Devices that carry every one of these tags.
    pub tags: Vec<String>,
    /// `Some(true)`: online only; `Some(false)`: offline or never seen.
    pub online: Option<bool>,
    /// Devices whose id starts with this.
    pub id_prefix: Option<String>,
}

/// Where a page starts and how long it is.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    /// 0 means [`DEFAULT_PAGE_SIZE`]; more than [`MAX_PAGE_SIZE`] is capped.
    pub size: u32,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One page of results.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass it as [`PageRequest::cursor`] for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// MQTT credentials as issued: the secret is here once and is not stored anywhere in clear.
#[derive(Debug, Clone)]
pub struct IssuedCredentials {
    pub device_id: String,
    pub secret: SecretString,
}

/// An API token, without its secret.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiToken {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// Absent while the token is valid.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A token as created: the secret is here once.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: ApiToken,
    pub secret: SecretString,
}

pub(crate) fn check_device_id(id: &str) -> Result<(), RegistryError> {
    ferrite_core::DeviceId::new(id)?;
    Ok(())
}

pub(crate) fn check_name(name: Option<&str>) -> Result<(), RegistryError> {
    match name {
        Some(name) if name.len() > MAX_NAME_LEN => {
            Err(RegistryError::InvalidArgument(format!("name is longer than {MAX_NAME_LEN} bytes")))
        }
        Some(name) if name.chars().any(char::is_control) => {
            Err(RegistryError::InvalidArgument("name contains control characters".into()))
        }
        _ => Ok(()),
    }
}

pub(crate) fn check_tags(tags: &[String]) -> Result<(), RegistryError> {
    if tags.len() > MAX_TAGS {
        return Err(RegistryError::InvalidArgument(format!("more than {MAX_TAGS} tags")));
    }
    for tag in tags {
        if tag.is_empty() || tag.len() > MAX_TAG_LEN || tag.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(RegistryError::InvalidArgument(format!(
                "invalid tag {tag:?}: expected 1 to {MAX_TAG_LEN} bytes without spaces or control characters"
            )));
        }
    }
    Ok(())
}

/// Metadata must be a JSON object; `Null` stands for an empty one.
pub(crate) fn normalize_metadata(metadata: serde_json::Value) -> Result<serde_json::Value, RegistryError> {
    let metadata = match metadata {
        serde_json::Value::Null => serde_json::Value::Object(Default::default()),
        object @ serde_json::Value::Object(_) => object,
        _ => return Err(RegistryError::InvalidArgument("metadata must be a JSON object".into())),
    };
    if metadata.to_string().len() > MAX_METADATA_BYTES {
        return Err(RegistryError::InvalidArgument(format!("metadata is larger than {MAX_METADATA_BYTES} bytes")));
    }
    Ok(metadata)
}

/// Removes duplicate tags, keeping the first occurrence, so that `tags` reads like a set.
pub(crate) fn dedup_tags(tags: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    tags.into_iter().filter(|tag| seen.insert(tag.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_fields() {
        assert!(check_tags(&["room-1".into(), "floor:2".into()]).is_ok());
        assert!(check_tags(&["".into()]).is_err());
        assert!(check_tags(&["a b".into()]).is_err());
        assert!(check_tags(&vec!["t".to_string(); MAX_TAGS + 1]).is_err());
        assert!(check_name(Some("Kitchen sensor")).is_ok());
        assert!(check_name(Some("bad\nname")).is_err());
        assert!(check_name(Some(&"n".repeat(MAX_NAME_LEN + 1))).is_err());
        assert!(normalize_metadata(serde_json::json!([1])).is_err());
        assert_eq!(normalize_metadata(serde_json::Value::Null).ok(), Some(serde_json::json!({})));
        assert_eq!(dedup_tags(vec!["a".into(), "b".into(), "a".into()]), vec!["a".to_string(), "b".to_string()]);
    }
}
