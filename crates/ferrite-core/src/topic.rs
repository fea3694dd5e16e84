//! The topic contract of DESIGN.md: what a topic means to the platform.

use crate::device::{DeviceId, is_valid_name};

/// The topics of the contract, built in one place (the inverse of [`Topic::parse`]); `device` and `metric` are
/// written as given, so callers pass ids that have been checked already.
pub mod build {
    /// `sensors/{device}/{metric}`: one reading.
    pub fn reading(device: &str, metric: &str) -> String {
        format!("sensors/{device}/{metric}")
    }

    /// `sensors/+/{metric}`: every device's readings of one metric.
    pub fn reading_filter_for_metric(metric: &str) -> String {
        format!("sensors/+/{metric}")
    }

    /// `devices/{device}/status`: retained `online` / `offline`.
    pub fn status(device: &str) -> String {
        format!("devices/{device}/status")
    }

    /// `commands/{device}`: a command to a device.
    pub fn command(device: &str) -> String {
        format!("commands/{device}")
    }

    /// `commands/{device}/response`: a device's answer.
    pub fn command_response(device: &str) -> String {
        format!("commands/{device}/response")
    }

    /// `alerts/{device}`: an alert raised by the platform.
    pub fn alert(device: &str) -> String {
        format!("alerts/{device}")
    }
}

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

/// Whether the topic filter `filter` matches the topic name `topic`, by the rules of MQTT 5 (section 4.7):
///
/// - levels are separated by `/`, and a level may be empty (`a//b` has three levels, `/x` and `x/` two);
/// - `+` matches exactly one level, an empty one too (`sport/+` matches `sport/` but not `sport`);
/// - `#` matches the parent level and any number of levels below it (`sport/#` matches `sport`);
/// - a filter whose first level is a wildcard does not match a topic starting with `$` (MQTT-4.7.2-1):
///   `#` does not match `$SYS/broker`, while `$SYS/#` does.
///
/// `filter` is expected to be valid (`#` only last and alone, `+` alone in its level); with an invalid
/// one the answer is unspecified but never a panic. `$share/{group}/` is not understood here: strip it first.
/// Walks both strings level by level without allocating (it runs for every message on fan-out paths).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(wanted), Some(level)) if wanted == level => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic the filter `filter` can match is also matched by `pattern` (both MQTT topic filters,
/// wildcards allowed in either; a topic name is a filter without wildcards, so for one this is
/// [`filter_matches`]`(pattern, topic)`). Used to check a subscription against an ACL pattern.
///
/// - `#` in `pattern` covers the parent level and everything below it, wildcards in `filter` included
///   (`sensors/#` covers `sensors`, `sensors/#` and `sensors/+/t`);
/// - `+` in `pattern` covers one level of `filter`, a literal, an empty level or `+`, but not `#`
///   (`commands/+/response` does not cover `commands/#`);
/// - a literal level covers only the same literal (so `sensors/#` does not cover `#` or `+/x`);
/// - as in matching (MQTT-4.7.2-1), a wildcard in `pattern` never covers a first level starting with `$`.
///
/// `$share/{group}/` is not understood here: strip it from `filter` first.
pub fn filter_covers(pattern: &str, filter: &str) -> bool {
    let mut patterns = pattern.split('/');
    let mut levels = filter.split('/');
    let mut first = true;
    loop {
        match (patterns.next(), levels.next()) {
            (Some("#"), None) => return true,
            (Some("#"), Some(level)) => return !(first && level.starts_with('$')),
            (Some("+"), Some(level)) => {
                if level == "#" || (first && level.starts_with('$')) {
                    return false;
                }
            }
            (Some(literal), Some(level)) => {
                if literal != level {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    fn check_match(filter: &str, topic: &str, expected: bool) {
        assert_eq!(filter_matches(filter, topic), expected, "filter {filter:?} topic {topic:?}");
    }

    #[test]
    fn filters_match_like_the_mqtt_specification() {
        // The examples of MQTT 5, section 4.7.
        check_match("sport/tennis/player1/#", "sport/tennis/player1", true);
        check_match("sport/tennis/player1/#", "sport/tennis/player1/ranking", true);
        check_match("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true);
        check_match("sport/#", "sport", true);
        check_match("#", "sport/tennis", true);
        check_match("sport/tennis/+", "sport/tennis/player1", true);
        check_match("sport/tennis/+", "sport/tennis/player1/ranking", false);
        check_match("sport/+", "sport", false);
        check_match("sport/+", "sport/", true);
        check_match("+/+", "/finance", true);
        check_match("/+", "/finance", true);
        check_match("+", "/finance", false);
        check_match("#", "$SYS/broker/clients", false);
        check_match("+/monitor/Clients", "$SYS/monitor/Clients", false);
        check_match("$SYS/#", "$SYS/monitor/Clients", true);
        check_match("$SYS/monitor/+", "$SYS/monitor/Clients", true);
        // Ours (from the gateway's and the broker's former copies).
        check_match("sensors/+/temperature", "sensors/sim-0001/temperature", true);
        check_match("sensors/+/temperature", "sensors/sim-0001/humidity", false);
        check_match("sensors/+/temperature", "sensors/sim-0001", false);
        check_match("sensors/#", "sensors/sim-0001", true);
        check_match("sensors/#", "sensors/dev-1/temperature", true);
        check_match("sensors/#", "sensors", true);
        check_match("sensors/+", "sensors/dev-1/temperature", false);
        check_match("devices/+/status", "devices/d/status", true);
        check_match("alerts/d", "alerts/d", true);
        check_match("alerts/d", "alerts/dd", false);
        check_match("alerts/d", "alerts/d/", false);
        check_match("a/b", "a/b", true);
        check_match("a/b", "a/b/c", false);
        check_match("a/b/c", "a/b", false);
        check_match("a/b", "a", false);
        check_match("a", "a/b", false);
        check_match("+/+/#", "a/b", true);
        check_match("+/+/#", "a", false);
        check_match("#", "anything/at/all", true);
        check_match("#", "$SYS/brokers", false);
        check_match("+/brokers", "$SYS/brokers", false);
        check_match("$SYS/#", "$SYS/brokers", true);
        check_match("a//b", "a//b", true);
        check_match("a/+/b", "a//b", true);
    }

    fn check_covers(pattern: &str, filter: &str, expected: bool) {
        assert_eq!(filter_covers(pattern, filter), expected, "{pattern:?} covers {filter:?}");
    }

    #[test]
    fn patterns_cover_filters() {
        check_covers("sensors/#", "sensors/#", true);
        check_covers("sensors/#", "sensors", true);
        check_covers("sensors/#", "sensors/+/t", true);
        check_covers("sensors/#", "#", false);
        check_covers("sensors/#", "+/x", false);
        check_covers("commands/+/response", "commands/+/response", true);
        check_covers("commands/+/response", "commands/#", false);
        check_covers("commands/+/response", "commands/d1/response", true);
        check_covers("commands/+/response", "commands/d1", false);
        check_covers("#", "$SYS/brokers", false);
        check_covers("#", "anything/at/all", true);
        check_covers("+/x", "$SYS/x", false);
        check_covers("#", "#", true);
        check_covers("+", "+", true);
        check_covers("+", "#", false);
        check_covers("$SYS/#", "$SYS/brokers/+", true);
        check_covers("a/+", "a/", true);
        check_covers("a/+", "a", false);
    }

    /// A second, recursive statement of the matching rules, to compare the iterative matcher with.
    fn reference(filter: &[&str], topic: &[&str]) -> bool {
        match (filter.split_first(), topic.split_first()) {
            (Some((&"#", _)), _) => true,
            (Some((&"+", rest_f)), Some((_, rest_t))) => reference(rest_f, rest_t),
            (Some((wanted, rest_f)), Some((level, rest_t))) => wanted == level && reference(rest_f, rest_t),
            (None, None) => true,
            _ => false,
        }
    }

    /// Topic levels from a tiny alphabet, so random filters and topics meet often.
    fn level() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["", "a", "b", "sensors", "$SYS", "x1"]).prop_map(str::to_owned)
    }

    /// A topic's levels; a topic is never empty (a single empty level), though its levels may be.
    fn topic() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(level(), 1..6)
            .prop_filter("empty topic", |levels| levels.len() > 1 || !levels[0].is_empty())
    }

    /// A valid filter: levels or `+`, optionally ending in `#`.
    fn filter() -> impl Strategy<Value = String> {
        (prop::collection::vec(prop_oneof![level(), Just("+".to_owned())], 1..6), any::<bool>())
            .prop_map(|(mut levels, multi)| {
                if multi {
                    levels.push("#".to_owned());
                }
                levels.join("/")
            })
            .prop_filter("empty filter", |filter| !filter.is_empty())
    }

    proptest! {
        #[test]
        fn matching_agrees_with_the_reference(filter in filter(), topic in topic()) {
            let topic = topic.join("/");
            let filter_levels: Vec<&str> = filter.split('/').collect();
            let topic_levels: Vec<&str> = topic.split('/').collect();
            let dollar_guard = topic.starts_with('$') && filter.starts_with(['+', '#']);
            let expected = !dollar_guard && reference(&filter_levels, &topic_levels);
            prop_assert_eq!(filter_matches(&filter, &topic), expected, "filter {:?} topic {:?}", filter, topic);
        }

        /// Any filter made from a topic by replacing levels with `+` and cutting it with `#` matches it.
        #[test]
        fn derived_filters_match(topic in topic(), mask in prop::collection::vec(any::<bool>(), 6), cut in prop::option::of(0usize..7)) {
            let levels: Vec<&str> = topic.iter().map(String::as_str).collect();
            let cut = cut.map(|cut| cut.min(levels.len()));
            let mut filter: Vec<&str> = levels
                .iter()
                .zip(&mask)
                .take(cut.unwrap_or(levels.len()))
                .map(|(level, wild)| if *wild { "+" } else { *level })
                .collect();
            if cut.is_some() {
                filter.push("#");
            }
            let (filter, topic) = (filter.join("/"), levels.join("/"));
            let dollar_guard = topic.starts_with('$') && filter.starts_with(['+', '#']);
            prop_assert_eq!(filter_matches(&filter, &topic), !dollar_guard, "filter {:?} topic {:?}", filter, topic);
        }

        /// Changing one literal level of a filter without `#` makes it miss the topic it was made from.
        #[test]
        fn a_changed_level_misses(topic in topic(), which in 0usize..6) {
            let which = which % topic.len();
            let mut filter = topic.clone();
            filter[which].push('~');
            prop_assert!(!filter_matches(&filter.join("/"), &topic.join("/")));
        }

        /// On a topic name (a filter without wildcards), covering is matching.
        #[test]
        fn covering_a_topic_is_matching_it(pattern in filter(), topic in topic()) {
            let topic = topic.join("/");
            prop_assert_eq!(filter_covers(&pattern, &topic), filter_matches(&pattern, &topic), "pattern {:?} topic {:?}", pattern, topic);
        }

        /// Every valid filter covers itself.
        #[test]
        fn filters_cover_themselves(filter in filter()) {
            prop_assert!(filter_covers(&filter, &filter), "{:?}", filter);
        }

        /// If `pattern` covers `filter`, it matches every topic `filter` matches.
        #[test]
        fn covering_implies_matching(pattern in filter(), filter in filter(), topic in topic()) {
            let topic = topic.join("/");
            if filter_covers(&pattern, &filter) && filter_matches(&filter, &topic) {
                prop_assert!(filter_matches(&pattern, &topic), "pattern {:?} filter {:?} topic {:?}", pattern, filter, topic);
            }
        }
    }
}
