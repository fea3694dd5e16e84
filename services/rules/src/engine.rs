//! [`RulesEngine`]: evaluates readings against the rules as they arrive over MQTT, and fires and resolves alerts.
//!
//! The engine holds its own MQTT session on `$share/rules/sensors/#`, so several engines share the readings.
//! Rules live in memory and are reloaded when PostgreSQL announces a change (a trigger on `rules` notifies
//! `ferrite_rules`), and on a slow timer in case a notification was missed while the listening connection was down.
//! At start, and at every reload, the firing alerts are read back, so a restarted engine does not fire them again.
//! The database decides races between engines: at most one alert per rule and device is firing (a unique index),
//! and an alert is resolved once (`where state = 'firing'`). What an engine publishes follows what it stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use ferrite_core::{TimeWindow, Topic, parse_readings};
use ferrite_mqtt::{BrokerUrl, Event, Message, QoS, Session, SessionConfig};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::eval::{Phase, Step, Track};
use crate::model::{Alert, AlertState, Rule};
use crate::{RulesError, RulesService};

/// The channel the `rules` trigger notifies.
pub const RULES_CHANNEL: &str = "ferrite_rules";
/// The shared-subscription group of rule engines.
pub const DEFAULT_SHARE_GROUP: &str = "rules";
/// Rules are reloaded this often even without a notification, in case one was missed while reconnecting.
pub const DEFAULT_RELOAD_EVERY: Duration = Duration::from_secs(60);
/// How long a device's tags are trusted: a tag change reaches tag selectors within this.
pub const DEFAULT_TAG_TTL: Duration = Duration::from_secs(10);
/// How long a stopping engine waits for its alert publishes to be acknowledged.
const DRAIN: Duration = Duration::from_secs(5);
/// How long to wait before listening again after the listening connection failed.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// How the engine reaches the broker.
#[derive(Clone)]
pub struct EngineConfig {
    pub broker: BrokerUrl,
    /// `(username, password)`, e.g. the `service:rules` account; never logged.
    pub credentials: Option<(String, String)>,
    /// Each engine needs its own; the default has a random suffix.
    pub client_id: String,
    pub share_group: String,
    pub reload_every: Duration,
    pub tag_ttl: Duration,
    /// Readings whose own time lies outside are skipped, as the ingester dead-letters them: one reading stamped
    /// far in the future would otherwise hold a device's tracks (whose time only moves forward) for good.
    pub window: TimeWindow,
}

impl EngineConfig {
    pub fn new(broker: BrokerUrl) -> Self {
        EngineConfig {
            broker,
            credentials: None,
            client_id: format!("ferrite-rules-{:08x}", fastrand::u32(..)),
            share_group: DEFAULT_SHARE_GROUP.to_owned(),
            reload_every: DEFAULT_RELOAD_EVERY,
            tag_ttl: DEFAULT_TAG_TTL,
            window: TimeWindow::default(),
        }
    }
}

impl std::fmt::Debug for EngineConfig {
    // By hand: the credentials hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("broker", &self.broker)
            .field("username", &self.credentials.as_ref().map(|(user, _)| user))
            .field("client_id", &self.client_id)
            .field("share_group", &self.share_group)
            .finish_non_exhaustive()
    }
}

/// What the engine has done, for `ferrite up`'s summary and for tests that wait for it.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Whether the broker has granted the readings subscription.
    pub subscribed: AtomicBool,
    /// Enabled rules in memory.
    pub rules: AtomicUsize,
    pub reloads: AtomicU64,
    pub readings: AtomicU64,
    pub fired: AtomicU64,
    pub resolved: AtomicU64,
}

/// A bound engine: rules loaded and the change feed listening; [`RulesEngine::run`] connects and evaluates.
pub struct RulesEngine {
    config: EngineConfig,
    service: RulesService,
    listener: PgListener,
    state: State,
}

/// Rules, tracks and the tag cache.
struct State {
    /// Enabled rules by metric.
    rules: HashMap<String, Vec<Arc<Rule>>>,
    tracks: HashMap<(Uuid, String), Track>,
    tags: HashMap<String, (Vec<String>, Instant)>,
    tag_ttl: Duration,
    window: TimeWindow,
    stats: Arc<EngineStats>,
}

impl RulesEngine {
    /// Starts listening for rule changes and loads the rules and firing alerts, so a bad database fails here.
    pub async fn bind(config: EngineConfig, pool: PgPool) -> Result<RulesEngine, RulesError> {
        let service = RulesService::new(pool);
        let mut listener = PgListener::connect_with(service.pool()).await?;
        listener.listen(RULES_CHANNEL).await?;
        let mut state = State {
            rules: HashMap::new(),
            tracks: HashMap::new(),
            tags: HashMap::new(),
            tag_ttl: config.tag_ttl,
            window: config.window,
            stats: Arc::default(),
        };
        state.reload(&service).await?;
        Ok(RulesEngine { config, service, listener, state })
    }

    pub fn stats(&self) -> Arc<EngineStats> {
        self.state.stats.clone()
    }

    /// Evaluates readings until `shutdown`, then lets its alert publishes be acknowledged and disconnects.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RulesError> {
        let RulesEngine { config, service, mut listener, mut state } = self;
        let mut session_config = SessionConfig::new(config.broker.clone(), config.client_id.clone());
        session_config.credentials = config.credentials.clone();
        let filter = format!("$share/{}/sensors/#", config.share_group);
        session_config.subscriptions = vec![(filter, QoS::AtLeastOnce)];
        let (session, mut events) = Session::start(session_config);
        let mut reload = tokio::time::interval_at(Instant::now() + config.reload_every, config.reload_every);
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(broker = %config.broker, client_id = %config.client_id, "rules engine running");
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                event = events.recv() => match event {
                    Some(Event::Message(message)) => state.on_message(&service, &session, &message).await,
                    Some(Event::Subscribed { refused }) => {
                        state.stats.subscribed.store(refused == 0, Ordering::Relaxed);
                        if refused > 0 {
                            tracing::error!("the broker refused the rules engine's subscription to sensors/# (check its account)");
                        }
                    }
                    Some(Event::Connected { session_present }) => {
                        tracing::debug!(session_present, "rules engine connected");
                    }
                    Some(Event::Disconnected { error }) => {
                        tracing::warn!(%error, "rules engine lost the broker; reconnecting");
                        state.stats.subscribed.store(false, Ordering::Relaxed);
                    }
                    None => return Err(RulesError::Internal("the rules engine's mqtt session ended".into())),
                },
                notified = listener.try_recv() => match notified {
                    Ok(Some(_)) => state.reload_logged(&service).await,
                    // The connection dropped; the next call reconnects, and a reload catches up on what was missed.
                    Ok(None) => state.reload_logged(&service).await,
                    Err(err) => {
                        tracing::warn!(cause = %err, "rules listener failed; retrying");
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(RETRY_DELAY) => {}
                        }
                    }
                },
                _ = reload.tick() => state.reload_logged(&service).await,
            }
        }
        let left = session.close(DRAIN).await;
        if left > 0 {
            tracing::warn!(left, "rules engine stopped with alert publishes unacknowledged");
        }
        tracing::info!("rules engine stopped");
        Ok(())
    }
}

impl State {
    async fn reload_logged(&mut self, service: &RulesService) {
        if let Err(err) = self.reload(service).await {
            tracing::warn!(cause = %err, "cannot reload rules; keeping the ones in memory");
        }
    }

    /// Loads the enabled rules and the firing alerts. A pending track survives only if its rule is unchanged;
    /// firing tracks are whatever the database says is firing.
    async fn reload(&mut self, service: &RulesService) -> Result<(), RulesError> {
        let rules = service.list_rules(true).await?;
        let firing = service.firing().await?;
        let unchanged: HashMap<Uuid, DateTime<Utc>> = self
            .rules
            .values()
            .flatten()
            .filter_map(|old| rules.iter().find(|new| new.id == old.id && new.updated_at == old.updated_at))
            .map(|rule| (rule.id, rule.updated_at))
            .collect();
        let mut tracks: HashMap<(Uuid, String), Track> = self
            .tracks
            .drain()
            .filter(|((rule, _), track)| unchanged.contains_key(rule) && matches!(track.phase, Phase::Pending { .. }))
            .collect();
        for (alert, rule, device) in firing {
            let last_ts = tracks.get(&(rule, device.clone())).and_then(|track| track.last_ts);
            tracks.insert((rule, device), Track { last_ts, ..Track::firing(alert) });
        }
        let count = rules.len();
        let mut by_metric: HashMap<String, Vec<Arc<Rule>>> = HashMap::new();
        for rule in rules {
            by_metric.entry(rule.definition.metric.clone()).or_default().push(Arc::new(rule));
        }
        self.rules = by_metric;
        self.tracks = tracks;
        self.stats.rules.store(count, Ordering::Relaxed);
        self.stats.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(rules = count, "rules loaded");
        Ok(())
    }

    async fn on_message(&mut self, service: &RulesService, session: &Session, message: &Message) {
        // A retained reading replayed on subscription was evaluated when it was published live.
        if message.publish.retain {
            return;
        }
        let topic = message.topic();
        let topic = Topic::parse(&topic);
        if !matches!(topic, Topic::Reading { .. } | Topic::Batch { .. }) {
            return;
        }
        // Payloads that do not parse are the ingester's to dead-letter; rules just skip them.
        let now = Utc::now();
        let Ok(readings) = parse_readings(&topic, message.payload(), message.content_type(), now) else {
            return;
        };
        // One payload carries one time: the ingester dead-letters the whole message when it is out of the window.
        if readings.iter().any(|reading| self.window.check(reading.ts, now).is_err()) {
            return;
        }
        for reading in readings {
            self.stats.readings.fetch_add(1, Ordering::Relaxed);
            let Some(rules) = self.rules.get(&reading.metric).cloned() else {
                continue;
            };
            let device = reading.device.as_str();
            for rule in rules {
                let definition = &rule.definition;
                if !definition.tags.is_empty() || definition.device_id.is_some() {
                    let tags =
                        if definition.tags.is_empty() { Vec::new() } else { self.tags_of(service, device).await };
                    if !definition.selects(device, &tags) {
                        continue;
                    }
                }
                let holds = definition.comparison.holds(reading.value, definition.threshold);
                let key = (rule.id, device.to_owned());
                let track = self.tracks.entry(key.clone()).or_default();
                match track.step(holds, reading.ts, definition.for_duration) {
                    Step::Nothing => {}
                    Step::Fire => {
                        // Not stored: the track stays pending, so the next reading that holds tries again.
                        if let Some((alert, new)) =
                            fire(service, session, &rule, device, reading.value, reading.ts).await
                        {
                            if new {
                                self.stats.fired.fetch_add(1, Ordering::Relaxed);
                            }
                            if let Some(track) = self.tracks.get_mut(&key) {
                                track.fired(alert);
                            }
                        }
                    }
                    Step::Resolve { alert } => {
                        if resolve(service, session, alert, reading.value, reading.ts).await {
                            self.stats.resolved.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }

    /// A device's tags, from the cache while fresh.
    async fn tags_of(&mut self, service: &RulesService, device: &str) -> Vec<String> {
        if let Some((tags, at)) = self.tags.get(device)
            && at.elapsed() < self.tag_ttl
        {
            return tags.clone();
        }
        match service.device_tags(device).await {
            Ok(tags) => {
                self.tags.insert(device.to_owned(), (tags.clone(), Instant::now()));
                tags
            }
            Err(err) => {
                tracing::warn!(cause = %err, device, "cannot read device tags; using the last known");
                self.tags.get(device).map(|(tags, _)| tags.clone()).unwrap_or_default()
            }
        }
    }
}

/// Stores a firing alert and publishes it; returns the id of the alert now firing and whether it is a new one
/// (not one that was firing already), or `None` when it could not be stored.
async fn fire(
    service: &RulesService,
    session: &Session,
    rule: &Rule,
    device: &str,
    value: f64,
    ts: DateTime<Utc>,
) -> Option<(Uuid, bool)> {
    let definition = &rule.definition;
    let alert = Alert {
        id: Uuid::new_v4(),
        rule_id: Some(rule.id),
        rule_name: definition.name.clone(),
        device_id: device.to_owned(),
        metric: definition.metric.clone(),
        severity: definition.severity.as_str().to_owned(),
        state: AlertState::Firing,
        value,
        threshold: definition.threshold,
        message: definition.render(device, value),
        fired_at: ts,
        resolved_at: None,
    };
    match service.insert_alert(&alert).await {
        Ok(Ok(())) => {
            tracing::info!(rule = %definition.name, device, value, alert = %alert.id, "alert firing");
            metrics::counter!("ferrite_alerts_fired_total").increment(1);
            publish(session, &alert, value, ts).await;
            Some((alert.id, true))
        }
        Ok(Err(existing)) if !existing.is_nil() => Some((existing, false)),
        Ok(Err(_)) => None,
        Err(err) => {
            tracing::warn!(cause = %err, rule = %definition.name, device, "cannot store an alert; retrying with the next reading");
            None
        }
    }
}

/// Resolves a firing alert and publishes the resolution; false when it was resolved elsewhere or not stored.
async fn resolve(service: &RulesService, session: &Session, alert: Uuid, value: f64, ts: DateTime<Utc>) -> bool {
    match service.resolve_alert(alert, ts).await {
        Ok(Some(alert)) => {
            tracing::info!(rule = %alert.rule_name, device = %alert.device_id, value, alert = %alert.id, "alert resolved");
            metrics::counter!("ferrite_alerts_resolved_total").increment(1);
            publish(session, &alert, value, ts).await;
            true
        }
        Ok(None) => false,
        Err(err) => {
            tracing::warn!(cause = %err, %alert, "cannot resolve an alert; the next reading that holds finds it firing");
            false
        }
    }
}

/// Publishes `alerts/{device_id}` (QoS 1, not retained) with DESIGN.md's fields plus `state`, ids and the threshold.
/// A resolution carries the reading that resolved it and says so in its message.
async fn publish(session: &Session, alert: &Alert, value: f64, ts: DateTime<Utc>) {
    let message = match alert.state {
        AlertState::Firing => alert.message.clone(),
        AlertState::Resolved => format!("resolved: {}", alert.message),
    };
    let payload = ferrite_core::AlertMessage {
        rule: Some(serde_json::json!(alert.rule_name)),
        rule_id: Some(serde_json::json!(alert.rule_id)),
        alert_id: Some(serde_json::json!(alert.id)),
        device_id: Some(alert.device_id.clone()),
        metric: Some(serde_json::json!(alert.metric)),
        value: Some(serde_json::json!(value)),
        threshold: Some(serde_json::json!(alert.threshold)),
        message: Some(message),
        severity: Some(alert.severity.clone()),
        state: Some(alert.state.as_str().into()),
        ts: Some(ts.to_rfc3339_opts(SecondsFormat::Millis, true).into()),
    };
    let topic = ferrite_core::topic::build::alert(&alert.device_id);
    // QoS 1 publishes are kept and resent by the session until acknowledged; this fails only once it has stopped.
    if let Err(err) = session.publish(topic, QoS::AtLeastOnce, false, payload.to_json(), None).await {
        tracing::warn!(cause = %err, alert = %alert.id, "cannot publish an alert");
    }
}
