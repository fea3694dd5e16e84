//! [`RegistryAuthorizer`]: the broker asks it who may connect (device credentials, service accounts,
//! anonymous only where allowed) and what each client may publish and subscribe to (the topic ACL).
//!
//! Device passwords are argon2-verified through a short-lived cache (see `cache`), so a storm of reconnecting
//! devices costs one verification per device rather than one per connection; rotating or deleting a device in
//! this process clears its entries at once, and other processes see the change within [`crate::cache::POSITIVE_TTL`].

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use ferrite_broker::{AuthDecision, Authorizer, BoxFuture, DenyReason, Identity, Principal};
use ferrite_core::filter_covers;
use secrecy::{ExposeSecret, SecretString};

use crate::{RegistryError, RegistryService, secret};

/// A device's MQTT client id is its device id, or its device id, this separator and anything (`sim-0001:debug`).
/// Binding client ids to devices stops one device from taking over another's session (and the commands
/// queued in it) by connecting under its client id; `:` cannot occur in a device id, so no prefix is ambiguous.
pub const CLIENT_ID_SEPARATOR: char = ':';

/// Usernames of service accounts start with this. `:` cannot occur in a device id,
/// so a service account can never shadow a device or be shadowed by one.
pub const SERVICE_USERNAME_PREFIX: &str = "service:";

/// What a platform service's MQTT connection is for, which decides its topic rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceRole {
    /// Reads everything devices publish (`sensors/#`, `devices/#`, `commands/+/response`), shared or not;
    /// publishes alerts.
    Ingester,
    /// Reads everything for dashboards; publishes commands, `control/...` and other platform topics,
    /// but nothing a device owns.
    Gateway,
    /// Speaks for every simulated device: publishes on device topics, subscribes to `commands/...`.
    Fleet,
    /// Everything; for operators' tools.
    Admin,
    /// The APIs beside the registry: the rules engine (reads readings, shared or not, and publishes alerts),
    /// commands (publishes `commands/{id}`, reads the answers) and live telemetry streams.
    Api,
}

impl ServiceRole {
    pub const ALL: [ServiceRole; 5] =
        [ServiceRole::Ingester, ServiceRole::Gateway, ServiceRole::Fleet, ServiceRole::Admin, ServiceRole::Api];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceRole::Ingester => "ingester",
            ServiceRole::Gateway => "gateway",
            ServiceRole::Fleet => "fleet",
            ServiceRole::Admin => "admin",
            ServiceRole::Api => "api",
        }
    }

    /// The MQTT username of this role's account, e.g. `service:ingester`.
    pub fn username(self) -> String {
        format!("{SERVICE_USERNAME_PREFIX}{}", self.as_str())
    }

    fn may_publish(self, topic: &str) -> bool {
        match self {
            ServiceRole::Ingester => filter_covers("alerts/#", topic),
            ServiceRole::Api => filter_covers("alerts/#", topic) || filter_covers("commands/+", topic),
            ServiceRole::Gateway => !device_owned(topic),
            ServiceRole::Fleet => device_owned(topic),
            ServiceRole::Admin => true,
        }
    }

    fn may_subscribe(self, filter: &str) -> bool {
        let filter = strip_shared(filter);
        let patterns: &[&str] = match self {
            ServiceRole::Ingester => &["sensors/#", "devices/#", "commands/+/response"],
            ServiceRole::Gateway | ServiceRole::Admin => &["#"],
            ServiceRole::Fleet => &["commands/#"],
            ServiceRole::Api => &["sensors/#", "commands/+/response"],
        };
        patterns.iter().any(|pattern| filter_covers(pattern, filter))
    }
}

impl fmt::Display for ServiceRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ServiceRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServiceRole::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| format!("unknown service role {s:?}: expected ingester, gateway, fleet, admin or api"))
    }
}

/// The MQTT credentials of one platform service: username [`ServiceRole::username`], password `secret`.
#[derive(Debug, Clone)]
pub struct ServiceAccount {
    pub role: ServiceRole,
    pub secret: SecretString,
}

impl ServiceAccount {
    pub fn new(role: ServiceRole, secret: impl Into<String>) -> Self {
        ServiceAccount { role, secret: SecretString::from(secret.into()) }
    }
}

/// How the authorizer decides.
#[derive(Debug, Clone, Default)]
pub struct AuthorizerConfig {
    /// Let clients without a username in, with every right. Set it only while every broker listener is on
    /// loopback (see [`crate::all_loopback`]) or when `--allow-anonymous` was given.
    /// Clients that do send a username are checked either way.
    pub allow_anonymous: bool,
    /// Platform services and their secrets.
    pub services: Vec<ServiceAccount>,
}

/// The broker's [`Authorizer`], backed by the registry's database.
pub struct RegistryAuthorizer {
    service: RegistryService,
    allow_anonymous: bool,
    /// Username and SHA-256 of the secret per service; comparing digests does not reveal the secret through timing.
    services: Vec<(String, [u8; 32], ServiceRole)>,
}

impl RegistryAuthorizer {
    /// An authorizer over `service`'s database that shares its credential cache, so that rotations and
    /// deletions through `service` reach it at once.
    pub fn new(service: RegistryService, config: AuthorizerConfig) -> Result<Self, RegistryError> {
        let mut services = Vec::new();
        for account in &config.services {
            if account.secret.expose_secret().is_empty() {
                return Err(RegistryError::InvalidConfig(format!(
                    "service account {} has an empty secret",
                    account.role
                )));
            }
            if services.iter().any(|(_, _, role)| *role == account.role) {
                return Err(RegistryError::InvalidConfig(format!("service account {} given twice", account.role)));
            }
            let digest = secret::password_digest(account.secret.expose_secret().as_bytes());
            services.push((account.role.username(), digest, account.role));
        }
        Ok(RegistryAuthorizer { service, allow_anonymous: config.allow_anonymous, services })
    }

    async fn decide(&self, client_id: String, username: Option<String>, password: Option<Vec<u8>>) -> AuthDecision {
        let allow = |principal| AuthDecision::Allow(Identity { client_id: client_id.clone(), principal });
        let Some(username) = username else {
            return if self.allow_anonymous {
                count("allowed_anonymous");
                allow(Principal::Anonymous)
            } else {
                count("denied_anonymous");
                AuthDecision::Deny(DenyReason::NotAuthorized)
            };
        };
        let Some(password) = password else {
            count("denied_bad_credentials");
            return AuthDecision::Deny(DenyReason::BadCredentials);
        };
        if username.starts_with(SERVICE_USERNAME_PREFIX) {
            let digest = secret::password_digest(&password);
            return match self.services.iter().find(|(name, _, _)| *name == username) {
                Some((_, expected, _)) if *expected == digest => {
                    count("allowed_service");
                    allow(Principal::Service(username))
                }
                _ => {
                    count("denied_bad_credentials");
                    AuthDecision::Deny(DenyReason::BadCredentials)
                }
            };
        }
        match self.service.verify_device_secret(&username, &password).await {
            Ok(true) if !device_may_use_client_id(&username, &client_id) => {
                count("denied_client_id");
                tracing::debug!(device_id = %username, %client_id, "device refused: client id belongs to someone else");
                AuthDecision::Deny(DenyReason::NotAuthorized)
            }
            Ok(true) => {
                count("allowed_device");
                allow(Principal::Device(username))
            }
            Ok(false) => {
                count("denied_bad_credentials");
                AuthDecision::Deny(DenyReason::BadCredentials)
            }
            Err(err) => {
                // Nothing proves the client right, so it is refused; it will retry.
                err.log_if_internal();
                count("error");
                AuthDecision::Deny(DenyReason::NotAuthorized)
            }
        }
    }

    fn role_of(&self, username: &str) -> Option<ServiceRole> {
        self.services.iter().find(|(name, _, _)| name == username).map(|(_, _, role)| *role)
    }
}

fn count(outcome: &'static str) {
    metrics::counter!("ferrite_registry_mqtt_auth_total", "outcome" => outcome).increment(1);
}

fn count_refusal(action: &'static str) {
    metrics::counter!("ferrite_registry_mqtt_acl_denied_total", "action" => action).increment(1);
}

impl Authorizer for RegistryAuthorizer {
    fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
        _remote: SocketAddr,
    ) -> BoxFuture<'_, AuthDecision> {
        let (client_id, username, password) =
            (client_id.to_owned(), username.map(str::to_owned), password.map(<[u8]>::to_vec));
        Box::pin(self.decide(client_id, username, password))
    }

    fn may_publish(&self, identity: &Identity, topic: &str) -> bool {
        let allowed = match &identity.principal {
            Principal::Anonymous => self.allow_anonymous,
            Principal::Device(id) => device_may_publish(id, topic),
            Principal::Service(name) => self.role_of(name).is_some_and(|role| role.may_publish(topic)),
        };
        if !allowed {
            count_refusal("publish");
        }
        allowed
    }

    fn may_subscribe(&self, identity: &Identity, filter: &str) -> bool {
        let allowed = match &identity.principal {
            Principal::Anonymous => self.allow_anonymous,
            Principal::Device(id) => device_may_subscribe(id, filter),
            Principal::Service(name) => self.role_of(name).is_some_and(|role| role.may_subscribe(filter)),
        };
        if !allowed {
            count_refusal("subscribe");
        }
        allowed
    }
}

/// A device publishes under `sensors/{id}` (and below), `devices/{id}/...` and on `commands/{id}/response`.
pub fn device_may_publish(id: &str, topic: &str) -> bool {
    if topic.contains(['+', '#']) {
        return false;
    }
    let Some(levels) = topic.split_once('/') else {
        return false;
    };
    match levels {
        ("sensors", rest) => rest == id || rest.strip_prefix(id).is_some_and(|below| below.starts_with('/')),
        ("devices", rest) => {
            rest.strip_prefix(id).and_then(|below| below.strip_prefix('/')).is_some_and(|s| !s.is_empty())
        }
        ("commands", rest) => rest.strip_prefix(id) == Some("/response"),
        _ => false,
    }
}

/// Whether a device may connect under `client_id` (see [`CLIENT_ID_SEPARATOR`]).
pub fn device_may_use_client_id(id: &str, client_id: &str) -> bool {
    client_id.strip_prefix(id).is_some_and(|rest| rest.is_empty() || rest.starts_with(CLIENT_ID_SEPARATOR))
}

/// A device subscribes to its own command topic only.
pub fn device_may_subscribe(id: &str, filter: &str) -> bool {
    filter.strip_prefix("commands/") == Some(id)
}

/// Topics that only devices (or the fleet speaking for them) publish.
fn device_owned(topic: &str) -> bool {
    let mut levels = topic.split('/');
    matches!(
        (levels.next(), levels.next(), levels.next(), levels.next()),
        (Some("sensors" | "devices"), ..) | (Some("commands"), Some(_), Some("response"), None)
    )
}

/// `filter` without a `$share/{group}/` prefix.
fn strip_shared(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map(|(_group, filter)| filter)
        .unwrap_or(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_publish(id: &str, topic: &str, expected: bool) {
        assert_eq!(device_may_publish(id, topic), expected, "device {id} publish {topic}");
    }

    fn check_subscribe(id: &str, filter: &str, expected: bool) {
        assert_eq!(device_may_subscribe(id, filter), expected, "device {id} subscribe {filter}");
    }

    #[test]
    fn device_publish_acl() {
        check_publish("d1", "sensors/d1", true);
        check_publish("d1", "sensors/d1/temperature", true);
        check_publish("d1", "sensors/d1/a/b", true);
        check_publish("d1", "devices/d1/status", true);
        check_publish("d1", "commands/d1/response", true);
        check_publish("d1", "sensors/d2/temperature", false);
        check_publish("d1", "sensors/d10", false);
        check_publish("d1", "sensors/d1x/temperature", false);
        check_publish("d1", "devices/d1", false);
        check_publish("d1", "devices/d1/", false);
        check_publish("d1", "devices/d2/status", false);
        check_publish("d1", "commands/d1", false);
        check_publish("d1", "commands/d2/response", false);
        check_publish("d1", "commands/d1/response/x", false);
        check_publish("d1", "alerts/d1", false);
        check_publish("d1", "control/lights", false);
        check_publish("d1", "sensors", false);
        check_publish("d1", "sensors/+", false);
        check_publish("d1", "sensors/d1/#", false);
        check_publish("d.1", "sensors/d.1/t", true);
    }

    #[test]
    fn device_subscribe_acl() {
        check_subscribe("d1", "commands/d1", true);
        check_subscribe("d1", "commands/d2", false);
        check_subscribe("d1", "commands/+", false);
        check_subscribe("d1", "commands/#", false);
        check_subscribe("d1", "commands/d1/#", false);
        check_subscribe("d1", "#", false);
        check_subscribe("d1", "sensors/d1", false);
        check_subscribe("d1", "$share/g/commands/d1", false);
    }

    #[test]
    fn device_client_ids() {
        assert!(device_may_use_client_id("sim-0001", "sim-0001"));
        assert!(device_may_use_client_id("sim-0001", "sim-0001:debug"));
        assert!(!device_may_use_client_id("sim-0001", "sim-00012"));
        assert!(!device_may_use_client_id("sim", "sim-0001"));
        assert!(!device_may_use_client_id("sim-0001", "ferrite-ingester"));
        assert!(!device_may_use_client_id("sim-0001", "mosq-1234"));
        assert!(!device_may_use_client_id("sim-0001", ""));
    }

    fn role_checks(role: ServiceRole, publish: &[(&str, bool)], subscribe: &[(&str, bool)]) {
        for (topic, expected) in publish {
            assert_eq!(role.may_publish(topic), *expected, "{role} publish {topic}");
        }
        for (filter, expected) in subscribe {
            assert_eq!(role.may_subscribe(filter), *expected, "{role} subscribe {filter}");
        }
    }

    #[test]
    fn service_roles() {
        role_checks(
            ServiceRole::Ingester,
            &[("alerts/d1", true), ("sensors/d1", false), ("commands/d1", false)],
            &[
                ("$share/ingest/sensors/#", true),
                ("$share/ingest/devices/+/status", true),
                ("sensors/+/temperature", true),
                ("commands/+/response", true),
                ("commands/#", false),
                ("#", false),
            ],
        );
        role_checks(
            ServiceRole::Gateway,
            &[
                ("control/lights/kitchen", true),
                ("commands/d1", true),
                ("sensors/d1/t", false),
                ("devices/d1/status", false),
                ("commands/d1/response", false),
            ],
            &[("#", true), ("sensors/+/temperature", true), ("$share/gw/alerts/#", true)],
        );
        role_checks(
            ServiceRole::Fleet,
            &[
                ("sensors/sim-0001/t", true),
                ("devices/sim-0001/status", true),
                ("commands/sim-0001/response", true),
                ("control/x", false),
            ],
            &[("commands/sim-0001", true), ("sensors/#", false)],
        );
        role_checks(ServiceRole::Admin, &[("anything", true)], &[("#", true)]);
        role_checks(
            ServiceRole::Api,
            &[("commands/d1", true), ("alerts/d1", true), ("commands/d1/response", false), ("sensors/d1/t", false)],
            &[
                ("$share/rules/sensors/#", true),
                ("sensors/d1/+", true),
                ("commands/+/response", true),
                ("devices/#", false),
            ],
        );
        assert_eq!("api".parse::<ServiceRole>(), Ok(ServiceRole::Api));
        assert_eq!("fleet".parse::<ServiceRole>(), Ok(ServiceRole::Fleet));
        assert!("root".parse::<ServiceRole>().is_err());
    }
}
