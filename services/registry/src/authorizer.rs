//! [`RegistryAuthorizer`]: the broker asks it who may connect (device credentials, service accounts,
//! anonymous only where allowed) and what each client may publish and subscribe to (the topic ACL).
//!
//! Device passwords are argon2-verified through a short-lived cache (see `cache`), so a storm of reconnecting
//! devices costs one verification per device rather than one per connection; rotating or deleting a device in
//! this process clears its entries at once, and other processes see the change within [`crate::cache::POSITIVE_TTL`].

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use ferrite_auth::{AuthDecision, Authorizer, BoxFuture, DenyReason, Identity, Principal};
use ferrite_core::filter_covers;
use secrecy::{ExposeSecret, SecretString};

use crate::{RegistryError, RegistryService, secret};

/// A device's MQTT client id is its device id, or its device id, this separator and anything (`sim-0001:debug`).
/// Binding client ids to devices stops one device from taking over another's session (and the commands
/// queued in it) by connecting under its client id; `:` cannot occur in a device id, so no prefix is ambiguous.
pub const CLIENT_ID_SEPARATOR: char = ':';

/// Client ids that start with this belong to the platform's own sessions (`ferrite-ingester`, `ferrite-gateway-…`,
/// `ferrite-commands-…`, …): each service account may use only its own part of it (see [`ServiceRole::may_use_client_id`]),
/// and no device or anonymous client may use it at all, so nobody can take over the ingester's persistent session
/// (and the readings queued in it) by connecting under its client id.
pub const RESERVED_CLIENT_ID_PREFIX: &str = "ferrite-";

/// Whether `client_id` lies in the platform's reserved namespace ([`RESERVED_CLIENT_ID_PREFIX`]).
pub fn reserved_client_id(client_id: &str) -> bool {
    client_id.starts_with(RESERVED_CLIENT_ID_PREFIX)
}

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

    /// The client-id prefixes of this role's sessions, as each service names them: the ingester `ferrite-ingester`,
    /// `ferrite-ingester-1`, … (and `ferrite-ingester-<host>` per replica); the gateway `ferrite-gateway-<random>`;
    /// the APIs `ferrite-commands-…`, `ferrite-rules-…` and `ferrite-query-…`.
    pub fn client_id_prefixes(self) -> &'static [&'static str] {
        match self {
            ServiceRole::Ingester => &["ferrite-ingester"],
            ServiceRole::Gateway => &["ferrite-gateway"],
            ServiceRole::Api => &["ferrite-commands-", "ferrite-rules-", "ferrite-query-", "ferrite-api"],
            ServiceRole::Fleet | ServiceRole::Admin => &[],
        }
    }

    /// Whether a session of this role may use `client_id`: its own namespace ([`Self::client_id_prefixes`]);
    /// the fleet speaks for devices, so it uses their ids (any id outside the reserved namespace); admin anything.
    pub fn may_use_client_id(self, client_id: &str) -> bool {
        match self {
            ServiceRole::Admin => true,
            ServiceRole::Fleet => !client_id.is_empty() && !reserved_client_id(client_id),
            role => role.client_id_prefixes().iter().any(|prefix| client_id.starts_with(prefix)),
        }
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

/// Password checks (argon2, tens of milliseconds of a core each) one source address may have running at once. The registry already runs at most one argon2 per core (`secret.rs`); this keeps one source from
/// filling that queue, so that a device elsewhere waits behind at most this many of an attacker's attempts.
pub const MAX_CHECKS_PER_SOURCE: usize = 4;

/// Checks one source may have waiting (beyond it, its logins are refused at once, without a check): a burst of
/// a thousand devices behind one address fits.
pub const MAX_QUEUED_PER_SOURCE: usize = 4096;

/// Failed logins a source may make in a burst before it is slowed down (a device with a typo, a fleet restarted
/// with stale secrets, fit; a password-guessing flood does not).
pub const FAILURE_BURST: u32 = 20;

/// Once its burst is spent, a source earns one more failed login per this interval. Meanwhile its logins that are
/// not already known good (cached) are refused at once, without an argon2 check.
pub const FAILURE_REFILL: Duration = Duration::from_secs(1);

/// Sources remembered at most; past it, those with nothing running and a full burst are forgotten first,
/// then all: a flood from many addresses cannot grow the table without bound.
const MAX_SOURCES: usize = 100_000;

/// The broker's [`Authorizer`], backed by the registry's database.
pub struct RegistryAuthorizer {
    service: RegistryService,
    sources: SourceLimiter,
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
        Ok(RegistryAuthorizer {
            service,
            sources: SourceLimiter::default(),
            allow_anonymous: config.allow_anonymous,
            services,
        })
    }

    /// Checks a device's password within the source's budget: a verdict cached for this exact password costs
    /// nothing and is always answered; otherwise a source out of failures, or with [`MAX_CHECKS_PER_SOURCE`]
    /// checks under way, is refused without a check.
    async fn verify_device(&self, device: &str, password: &[u8], source: IpAddr) -> Result<bool, Refused> {
        if let Some(known) = self.service.cached_device_verdict(device, password) {
            return Ok(known);
        }
        let _slot = self.sources.begin(source).await?;
        let valid = self.service.verify_device_secret(device, password).await.map_err(Refused::Error)?;
        if !valid {
            self.sources.failed(source);
        }
        Ok(valid)
    }

    async fn decide(
        &self,
        client_id: String,
        username: Option<String>,
        password: Option<Vec<u8>>,
        remote: SocketAddr,
    ) -> AuthDecision {
        let allow = |principal| AuthDecision::Allow(Identity { client_id: client_id.clone(), principal });
        let Some(username) = username else {
            return if self.allow_anonymous && !anonymous_may_use_client_id(&client_id) {
                count("denied_client_id");
                tracing::debug!(%client_id, "anonymous client refused: reserved client id");
                AuthDecision::Deny(DenyReason::NotAuthorized)
            } else if self.allow_anonymous {
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
                Some((_, expected, role)) if *expected == digest && !role.may_use_client_id(&client_id) => {
                    count("denied_client_id");
                    tracing::debug!(%username, %client_id, "service refused: client id outside its namespace");
                    AuthDecision::Deny(DenyReason::NotAuthorized)
                }
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
        match self.verify_device(&username, &password, remote.ip()).await {
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
            Err(Refused::Budget(why)) => {
                count(why);
                tracing::debug!(device_id = %username, %remote, why, "login refused without a check");
                AuthDecision::Deny(DenyReason::NotAuthorized)
            }
            Err(Refused::Error(err)) => {
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

/// Why a device's password was not checked, or could not be.
#[derive(Debug)]
enum Refused {
    /// The source's budget is spent: `denied_rate_limited` or `denied_busy` (the metrics outcome).
    Budget(&'static str),
    Error(RegistryError),
}

/// Per source address: password checks under way or waiting, and failed logins left in its burst (a token bucket).
#[derive(Default)]
struct SourceLimiter {
    sources: Arc<Mutex<HashMap<IpAddr, Source>>>,
}

struct Source {
    /// [`MAX_CHECKS_PER_SOURCE`] permits: a burst of connections from one address (a gateway, a NAT, a fleet on
    /// this machine) waits its turn here instead of filling the registry's one-per-core argon2 queue.
    checks: Arc<Semaphore>,
    /// Checks waiting for a permit or running.
    queued: usize,
    failures_left: f64,
    refilled: Instant,
}

impl Source {
    fn new(now: Instant) -> Self {
        Source {
            checks: Arc::new(Semaphore::new(MAX_CHECKS_PER_SOURCE)),
            queued: 0,
            failures_left: f64::from(FAILURE_BURST),
            refilled: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let earned = now.duration_since(self.refilled).as_secs_f64() / FAILURE_REFILL.as_secs_f64();
        self.failures_left = (self.failures_left + earned).min(f64::from(FAILURE_BURST));
        self.refilled = now;
    }

    fn idle(&self) -> bool {
        self.queued == 0 && self.failures_left >= f64::from(FAILURE_BURST)
    }
}

/// A check under way (or waiting) for a source; ends when dropped.
struct CheckSlot {
    sources: Arc<Mutex<HashMap<IpAddr, Source>>>,
    source: IpAddr,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for CheckSlot {
    fn drop(&mut self) {
        let mut sources = self.sources.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(source) = sources.get_mut(&self.source) {
            source.queued = source.queued.saturating_sub(1);
        }
    }
}

impl SourceLimiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Source>> {
        self.sources.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the source may make another failed login now.
    fn rate_limited(&self, source: IpAddr) -> bool {
        let now = Instant::now();
        let mut sources = self.lock();
        sources.get_mut(&source).is_some_and(|known| {
            known.refill(now);
            known.failures_left < 1.0
        })
    }

    /// Waits for one of the source's check permits; refuses at once a source out of failed logins,
    /// or one with [`MAX_QUEUED_PER_SOURCE`] checks already waiting.
    async fn begin(&self, source: IpAddr) -> Result<CheckSlot, Refused> {
        let checks = {
            let now = Instant::now();
            let mut sources = self.lock();
            if sources.len() >= MAX_SOURCES && !sources.contains_key(&source) {
                sources.retain(|_, known| {
                    known.refill(now);
                    !known.idle()
                });
                if sources.len() >= MAX_SOURCES {
                    sources.clear();
                }
            }
            let entry = sources.entry(source).or_insert_with(|| Source::new(now));
            entry.refill(now);
            if entry.failures_left < 1.0 {
                return Err(Refused::Budget("denied_rate_limited"));
            }
            if entry.queued >= MAX_QUEUED_PER_SOURCE {
                return Err(Refused::Budget("denied_busy"));
            }
            entry.queued += 1;
            entry.checks.clone()
        };
        let mut slot = CheckSlot { sources: self.sources.clone(), source, _permit: None };
        slot._permit = checks.acquire_owned().await.ok();
        // Failures may have run out while this one waited: then it is refused without its check.
        if self.rate_limited(source) {
            return Err(Refused::Budget("denied_rate_limited"));
        }
        Ok(slot)
    }

    fn failed(&self, source: IpAddr) {
        let now = Instant::now();
        let mut sources = self.lock();
        let entry = sources.entry(source).or_insert_with(|| Source::new(now));
        entry.refill(now);
        entry.failures_left = (entry.failures_left - 1.0).max(0.0);
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
        remote: SocketAddr,
    ) -> BoxFuture<'_, AuthDecision> {
        let (client_id, username, password) =
            (client_id.to_owned(), username.map(str::to_owned), password.map(<[u8]>::to_vec));
        Box::pin(self.decide(client_id, username, password, remote))
    }

    fn may_publish(&self, identity: &Identity, topic: &str) -> bool {
        let allowed = match &identity.principal {
            Principal::Anonymous => self.allow_anonymous && anonymous_may_publish(topic),
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
            Principal::Anonymous => self.allow_anonymous && anonymous_may_subscribe(filter),
            Principal::Device(id) => device_may_subscribe(id, filter),
            Principal::Service(name) => self.role_of(name).is_some_and(|role| role.may_subscribe(filter)),
        };
        if !allowed {
            count_refusal("subscribe");
        }
        allowed
    }
}

/// An anonymous client (allowed on a loopback broker, or with `--allow-anonymous`) may use any client id
/// outside the platform's reserved namespace ([`RESERVED_CLIENT_ID_PREFIX`]).
pub fn anonymous_may_use_client_id(client_id: &str) -> bool {
    !reserved_client_id(client_id)
}

/// An anonymous client publishes anything but `commands/...`: a command (or a forged answer to one) must come from
/// the platform's APIs or the device itself, never from whoever reaches the port, e.g. a web page through a browser.
pub fn anonymous_may_publish(topic: &str) -> bool {
    topic != "commands" && !topic.starts_with("commands/")
}

/// An anonymous client subscribes to anything but shared subscriptions: joining the ingester's `$share/ingest`
/// (or the rules engine's `$share/rules`) group would take readings away from the database and the rules.
/// Any group is refused, because the platform's groups are configurable (`--shared-group`).
pub fn anonymous_may_subscribe(filter: &str) -> bool {
    !filter.starts_with("$share/")
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

    #[test]
    fn service_client_id_namespaces() {
        let cases = [
            (ServiceRole::Ingester, "ferrite-ingester", true),
            (ServiceRole::Ingester, "ferrite-ingester-3", true),
            (ServiceRole::Ingester, "ferrite-ingester-host-a", true),
            (ServiceRole::Ingester, "ferrite-gateway-1", false),
            (ServiceRole::Ingester, "sim-0001", false),
            (ServiceRole::Gateway, "ferrite-gateway-0a1b2c3d", true),
            (ServiceRole::Gateway, "ferrite-ingester", false),
            (ServiceRole::Api, "ferrite-commands-0a1b2c3d", true),
            (ServiceRole::Api, "ferrite-rules-0a1b2c3d", true),
            (ServiceRole::Api, "ferrite-query-0a1b2c3d", true),
            (ServiceRole::Api, "ferrite-ingester", false),
            (ServiceRole::Fleet, "sim-0001", true),
            (ServiceRole::Fleet, "kitchen-1", true),
            (ServiceRole::Fleet, "ferrite-ingester", false),
            (ServiceRole::Fleet, "ferrite-gateway-1", false),
            (ServiceRole::Fleet, "", false),
            (ServiceRole::Admin, "ferrite-ingester", true),
        ];
        for (role, client_id, expected) in cases {
            assert_eq!(role.may_use_client_id(client_id), expected, "{role} as {client_id:?}");
        }
    }

    #[tokio::test]
    async fn a_source_out_of_failures_is_refused_and_others_are_not() {
        let limiter = SourceLimiter::default();
        let attacker: IpAddr = "192.0.2.7".parse().expect("an address");
        let device: IpAddr = "192.0.2.8".parse().expect("an address");
        for _ in 0..FAILURE_BURST {
            let _slot = limiter.begin(attacker).await.expect("within the burst");
            limiter.failed(attacker);
        }
        assert!(matches!(limiter.begin(attacker).await, Err(Refused::Budget("denied_rate_limited"))));
        assert!(limiter.begin(device).await.is_ok(), "another source keeps its budget");
    }

    #[tokio::test]
    async fn a_source_runs_a_bounded_number_of_checks_at_once_and_the_rest_wait() {
        let limiter = Arc::new(SourceLimiter::default());
        let source: IpAddr = "::1".parse().expect("an address");
        let mut slots = Vec::new();
        for _ in 0..MAX_CHECKS_PER_SOURCE {
            slots.push(limiter.begin(source).await.expect("a slot"));
        }
        let waiting = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.begin(source).await.is_ok() }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one more check waits for a permit");
        drop(slots);
        assert!(waiting.await.expect("the waiting check"), "and runs once a check ended");
    }

    #[test]
    fn anonymous_rules() {
        assert!(anonymous_may_use_client_id("web-client-1a2b"));
        assert!(anonymous_may_use_client_id("mosq-abc"));
        assert!(!anonymous_may_use_client_id("ferrite-ingester"));
        assert!(!anonymous_may_use_client_id("ferrite-ingester-1"));
        assert!(anonymous_may_publish("sensors/my-sensor/temperature"));
        assert!(anonymous_may_publish("control/lights/living-room"));
        assert!(anonymous_may_publish("commandsx/y"));
        assert!(!anonymous_may_publish("commands/sim-0001"));
        assert!(!anonymous_may_publish("commands/sim-0001/response"));
        assert!(!anonymous_may_publish("commands"));
        assert!(anonymous_may_subscribe("sensors/+/temperature"));
        assert!(anonymous_may_subscribe("#"));
        assert!(!anonymous_may_subscribe("$share/ingest/sensors/#"));
        assert!(!anonymous_may_subscribe("$share/rules/sensors/#"));
        assert!(!anonymous_may_subscribe("$share/other/x"));
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5000))]

        /// Whatever client id a client sends, nobody but the owning role (or admin) gets a reserved one, and a device
        /// only its own id or `{id}:suffix`.
        #[test]
        fn client_ids_stay_in_their_namespaces(client_id in "(ferrite-)?[a-z0-9:_.-]{0,24}", device in "[a-z0-9_.-]{1,12}") {
            if reserved_client_id(&client_id) {
                proptest::prop_assert!(!anonymous_may_use_client_id(&client_id));
                proptest::prop_assert!(!ServiceRole::Fleet.may_use_client_id(&client_id));
                proptest::prop_assert!(!device_may_use_client_id(&device, &client_id));
                let owners = ServiceRole::ALL.into_iter().filter(|role| role.may_use_client_id(&client_id)).count();
                proptest::prop_assert!(owners <= 2);
            }
            if device_may_use_client_id(&device, &client_id) {
                let suffixed = client_id.strip_prefix(device.as_str()).is_some_and(|rest| rest.starts_with(':'));
                proptest::prop_assert!(client_id == device || suffixed);
            }
        }
    }
}
