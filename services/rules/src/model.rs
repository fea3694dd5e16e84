//! The domain: rules (what they check, whom they select, how they speak) and alerts, with the rules for their fields.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferrite_core::DeviceId;
use uuid::Uuid;

use crate::RulesError;

/// The longest `for` a rule may have: a week is far beyond any sensible hold time and keeps the arithmetic small.
pub const MAX_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest rule name and message template.
const MAX_TEXT: usize = 200;
/// The most tags a selector may name.
const MAX_TAGS: usize = 32;
/// The template used when a rule names none.
pub const DEFAULT_MESSAGE: &str = "{device} {metric} is {value} ({comparison} {threshold})";
/// The placeholders a message template may use.
pub const PLACEHOLDERS: [&str; 7] = ["device", "metric", "value", "threshold", "comparison", "rule", "severity"];

/// How a reading is compared with the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Comparison {
    pub const ALL: [Comparison; 6] =
        [Comparison::Gt, Comparison::Ge, Comparison::Lt, Comparison::Le, Comparison::Eq, Comparison::Ne];

    pub fn as_str(self) -> &'static str {
        match self {
            Comparison::Gt => ">",
            Comparison::Ge => ">=",
            Comparison::Lt => "<",
            Comparison::Le => "<=",
            Comparison::Eq => "==",
            Comparison::Ne => "!=",
        }
    }

    /// Whether `value` meets the condition against `threshold` (exact equality for `==` and `!=`).
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Gt => value > threshold,
            Comparison::Ge => value >= threshold,
            Comparison::Lt => value < threshold,
            Comparison::Le => value <= threshold,
            Comparison::Eq => value == threshold,
            Comparison::Ne => value != threshold,
        }
    }
}

impl FromStr for Comparison {
    type Err = RulesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Comparison::ALL.into_iter().find(|c| c.as_str() == s.trim()).ok_or_else(|| {
            RulesError::InvalidArgument(format!("unknown comparison {s:?}: expected one of >, >=, <, <=, ==, !="))
        })
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl FromStr for Severity {
    type Err = RulesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "info" => Ok(Severity::Info),
            "warning" => Ok(Severity::Warning),
            "critical" => Ok(Severity::Critical),
            other => Err(RulesError::InvalidArgument(format!(
                "unknown severity {other:?}: expected info, warning or critical"
            ))),
        }
    }
}

/// A rule as a client describes it, before validation. Both faces build this.
#[derive(Debug, Clone, Default)]
pub struct RuleInput {
    pub name: Option<String>,
    pub metric: String,
    pub comparison: String,
    pub threshold: f64,
    pub for_duration: Duration,
    pub device_id: Option<String>,
    pub tags: Vec<String>,
    /// `warning` when absent.
    pub severity: Option<String>,
    /// [`DEFAULT_MESSAGE`] when absent.
    pub message: Option<String>,
    pub enabled: bool,
}

/// A validated rule definition.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleDefinition {
    pub name: String,
    pub metric: String,
    pub comparison: Comparison,
    pub threshold: f64,
    pub for_duration: Duration,
    pub device_id: Option<String>,
    pub tags: Vec<String>,
    pub severity: Severity,
    pub message: String,
    pub enabled: bool,
}

impl RuleDefinition {
    /// Whether the parts that decide when the rule fires are the same (name, severity and message may differ).
    pub fn same_condition(&self, other: &RuleDefinition) -> bool {
        self.metric == other.metric
            && self.comparison == other.comparison
            && self.threshold.to_bits() == other.threshold.to_bits()
            && self.for_duration == other.for_duration
            && self.device_id == other.device_id
            && self.tags == other.tags
            && self.enabled == other.enabled
    }

    /// Whether the rule applies to a device with these tags.
    pub fn selects(&self, device: &str, tags: &[String]) -> bool {
        self.device_id.as_deref().is_none_or(|id| id == device) && self.tags.iter().all(|tag| tags.contains(tag))
    }

    /// The rule's message for one reading.
    pub fn render(&self, device: &str, value: f64) -> String {
        render(&self.message, |name| match name {
            "device" => Some(device.to_owned()),
            "metric" => Some(self.metric.clone()),
            "value" => Some(value.to_string()),
            "threshold" => Some(self.threshold.to_string()),
            "comparison" => Some(self.comparison.as_str().to_owned()),
            "rule" => Some(self.name.clone()),
            "severity" => Some(self.severity.as_str().to_owned()),
            _ => None,
        })
    }
}

impl TryFrom<RuleInput> for RuleDefinition {
    type Error = RulesError;

    fn try_from(input: RuleInput) -> Result<Self, Self::Error> {
        let invalid = |message: String| Err(RulesError::InvalidArgument(message));
        let metric = input.metric.trim().to_owned();
        if metric.is_empty() {
            return invalid("metric must not be empty".into());
        }
        if DeviceId::new(metric.as_str()).is_err() {
            return invalid(format!("invalid metric name {metric:?}: expected 1 to 64 of A-Z a-z 0-9 _ . -"));
        }
        let comparison: Comparison = input.comparison.parse()?;
        if !input.threshold.is_finite() {
            return invalid("value must be a finite number".into());
        }
        if input.for_duration > MAX_FOR {
            return invalid(format!("for must be at most {}", humantime::format_duration(MAX_FOR)));
        }
        let device_id = match input.device_id.map(|id| id.trim().to_owned()).filter(|id| !id.is_empty()) {
            Some(id) => {
                Some(DeviceId::new(id).map_err(|err| RulesError::InvalidArgument(err.to_string()))?.into_string())
            }
            None => None,
        };
        if input.tags.len() > MAX_TAGS {
            return invalid(format!("a selector names at most {MAX_TAGS} tags"));
        }
        let mut tags = Vec::with_capacity(input.tags.len());
        for tag in input.tags {
            let tag = tag.trim().to_owned();
            if tag.is_empty() || tag.len() > 64 {
                return invalid(format!("invalid tag {tag:?}: expected 1 to 64 characters"));
            }
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        tags.sort();
        let severity = match input.severity.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(severity) => severity.parse()?,
            None => Severity::Warning,
        };
        let message = input.message.filter(|m| !m.trim().is_empty()).unwrap_or_else(|| DEFAULT_MESSAGE.to_owned());
        if message.chars().count() > MAX_TEXT {
            return invalid(format!("message must be at most {MAX_TEXT} characters"));
        }
        check_template(&message)?;
        let name = input
            .name
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| format!("{metric} {comparison} {}", input.threshold));
        if name.chars().count() > MAX_TEXT {
            return invalid(format!("name must be at most {MAX_TEXT} characters"));
        }
        Ok(RuleDefinition {
            name,
            metric,
            comparison,
            threshold: input.threshold,
            for_duration: input.for_duration,
            device_id,
            tags,
            severity,
            message,
            enabled: input.enabled,
        })
    }
}

/// A stored rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub id: Uuid,
    pub definition: RuleDefinition,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Whether an alert's condition still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

impl FromStr for AlertState {
    type Err = RulesError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "firing" => Ok(AlertState::Firing),
            "resolved" => Ok(AlertState::Resolved),
            other => {
                Err(RulesError::InvalidArgument(format!("unknown alert state {other:?}: expected firing or resolved")))
            }
        }
    }
}

/// One firing of a rule for one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub id: Uuid,
    /// `None` once the rule has been deleted.
    pub rule_id: Option<Uuid>,
    pub rule_name: String,
    pub device_id: String,
    pub metric: String,
    pub severity: String,
    pub state: AlertState,
    pub value: f64,
    pub threshold: f64,
    pub message: String,
    pub fired_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// Which alerts to list.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    pub state: Option<AlertState>,
    pub device_id: Option<String>,
    /// 1 to [`MAX_LIMIT`]; 0 means [`DEFAULT_LIMIT`].
    pub limit: u32,
}

/// Alerts per list when the caller names no limit.
pub const DEFAULT_LIMIT: u32 = 100;
/// The most alerts one list returns.
pub const MAX_LIMIT: u32 = 1000;

/// Checks that every `{placeholder}` of a template is one we fill in, so a typo is refused rather than shown.
fn check_template(template: &str) -> Result<(), RulesError> {
    let mut unknown = None;
    render(template, |name| {
        if PLACEHOLDERS.contains(&name) {
            Some(String::new())
        } else {
            unknown.get_or_insert_with(|| name.to_owned());
            None
        }
    });
    match unknown {
        Some(name) => Err(RulesError::InvalidArgument(format!(
            "unknown placeholder {{{name}}} in message: expected one of {}",
            PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
        ))),
        None => Ok(()),
    }
}

/// Replaces `{name}` by `fill(name)`; anything `fill` does not know, and lone braces, stay as they are.
fn render(template: &str, mut fill: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find(['}', '{']) {
            Some(close) if after.as_bytes()[close] == b'}' => {
                let name = &after[..close];
                match fill(name) {
                    Some(value) => out.push_str(&value),
                    None => out.push_str(&rest[open..open + close + 2]),
                }
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(metric: &str, comparison: &str) -> RuleInput {
        RuleInput {
            metric: metric.into(),
            comparison: comparison.into(),
            threshold: 30.0,
            enabled: true,
            ..RuleInput::default()
        }
    }

    fn check(input: RuleInput, expected: Result<(), &str>) {
        match (RuleDefinition::try_from(input.clone()), expected) {
            (Ok(_), Ok(())) => {}
            (Err(err), Err(want)) => assert!(err.to_string().contains(want), "{input:?}: {err} lacks {want:?}"),
            (got, want) => panic!("{input:?}: got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn validates_rules() {
        check(input("temperature", ">"), Ok(()));
        check(input("temperature", " >= "), Ok(()));
        check(input("temperature", "~="), Err("unknown comparison"));
        check(input("", ">"), Err("metric must not be empty"));
        check(input("a/b", ">"), Err("invalid metric name"));
        check(RuleInput { threshold: f64::NAN, ..input("t", ">") }, Err("finite"));
        check(RuleInput { device_id: Some("bad id".into()), ..input("t", ">") }, Err("invalid device id"));
        check(RuleInput { severity: Some("loud".into()), ..input("t", ">") }, Err("unknown severity"));
        check(RuleInput { message: Some("{device} is {hot}".into()), ..input("t", ">") }, Err("{hot}"));
        check(RuleInput { for_duration: MAX_FOR * 2, ..input("t", ">") }, Err("for must be at most"));
        check(RuleInput { tags: vec![String::new()], ..input("t", ">") }, Err("invalid tag"));
    }

    #[test]
    fn renders_messages() {
        let rule = RuleDefinition::try_from(RuleInput {
            name: Some("hot".into()),
            message: Some("{rule}: {device} {metric} is {value} ({comparison} {threshold}) {x {} {".into()),
            ..input("temperature", ">")
        });
        // An unknown placeholder is refused, so build the definition without it and render by hand.
        assert!(rule.is_err());
        let rule = RuleDefinition::try_from(RuleInput {
            name: Some("hot".into()),
            message: Some("{rule}: {device} {metric} is {value} ({comparison} {threshold}) { {".into()),
            ..input("temperature", ">")
        })
        .expect("valid");
        assert_eq!(rule.render("d1", 31.5), "hot: d1 temperature is 31.5 (> 30) { {");
        let plain = RuleDefinition::try_from(input("temperature", ">")).expect("valid");
        assert_eq!(plain.name, "temperature > 30");
        assert_eq!(plain.render("d1", 31.0), "d1 temperature is 31 (> 30)");
    }

    #[test]
    fn compares() {
        assert!(Comparison::Gt.holds(31.0, 30.0) && !Comparison::Gt.holds(30.0, 30.0));
        assert!(Comparison::Ge.holds(30.0, 30.0));
        assert!(Comparison::Lt.holds(29.0, 30.0) && Comparison::Le.holds(30.0, 30.0));
        assert!(Comparison::Eq.holds(30.0, 30.0) && Comparison::Ne.holds(30.5, 30.0));
    }

    #[test]
    fn selects_devices() {
        let mut rule = RuleDefinition::try_from(input("t", ">")).expect("valid");
        assert!(rule.selects("d1", &[]));
        rule.tags = vec!["hall".into()];
        assert!(!rule.selects("d1", &[]));
        assert!(rule.selects("d1", &["hall".into(), "x".into()]));
        rule.device_id = Some("d2".into());
        assert!(!rule.selects("d1", &["hall".into()]));
    }
}
