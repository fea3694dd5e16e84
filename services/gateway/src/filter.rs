//! MQTT topic filters: validation of what browsers ask for, and matching topics against filters in memory.
//!
//! Matching runs for every message on the fan-out path (and for every retained topic when a browser
//! subscribes), so it walks both strings level by level without allocating.

/// The longest filter or topic MQTT can carry (its length is a 16-bit prefix on the wire).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a string is not a filter a browser may subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("empty topic filter")]
    Empty,
    #[error("topic filter is longer than 65535 bytes")]
    TooLong,
    #[error("invalid topic filter {0:?}: '#' must be the last level and stand alone")]
    MultiLevel(String),
    #[error("invalid topic filter {0:?}: '+' must stand alone in its level")]
    SingleLevel(String),
    #[error("invalid topic filter {0:?}: contains a NUL character")]
    Nul(String),
    /// Shared subscriptions spread messages over a group; a gateway fanning out to browsers must see all of them.
    #[error("shared subscriptions ({0:?}) are not available through the gateway")]
    Shared(String),
}

/// Why a string is not a topic a browser may publish to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("empty topic")]
    Empty,
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    #[error("invalid topic {0:?}: wildcards '+' and '#' are only for subscribing")]
    Wildcard(String),
    #[error("invalid topic {0:?}: contains a NUL character")]
    Nul(String),
    /// `$` topics (`$SYS/...`) belong to the broker.
    #[error("invalid topic {0:?}: topics starting with '$' are reserved for the broker")]
    Reserved(String),
}

/// Checks `filter` against the MQTT rules for topic filters.
pub fn validate_filter(filter: &str) -> Result<(), FilterError> {
    if filter.is_empty() {
        return Err(FilterError::Empty);
    }
    if filter.len() > MAX_TOPIC_LEN {
        return Err(FilterError::TooLong);
    }
    if filter.contains('\0') {
        return Err(FilterError::Nul(filter.to_owned()));
    }
    if filter.starts_with("$share/") {
        return Err(FilterError::Shared(filter.to_owned()));
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(FilterError::MultiLevel(filter.to_owned()));
        }
        if level.contains('+') && level != "+" {
            return Err(FilterError::SingleLevel(filter.to_owned()));
        }
    }
    Ok(())
}

/// Checks `topic` as a topic name a browser may publish to.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::Wildcard(topic.to_owned()));
    }
    if topic.contains('\0') {
        return Err(TopicError::Nul(topic.to_owned()));
    }
    if topic.starts_with('$') {
        return Err(TopicError::Reserved(topic.to_owned()));
    }
    Ok(())
}

/// True when `topic` matches the valid filter `filter`, by the rules of MQTT:
/// `+` matches exactly one level (an empty one too), `#` matches the parent level and any number of
/// levels below it, and a filter starting with a wildcard does not match topics starting with `$`.
pub fn matches(filter: &str, topic: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(filter: &str, topic: &str, expected: bool) {
        assert_eq!(matches(filter, topic), expected, "filter {filter:?} topic {topic:?}");
    }

    #[test]
    fn matches_like_the_mqtt_specification() {
        // The examples of MQTT 5, section 4.7.
        check("sport/tennis/player1/#", "sport/tennis/player1", true);
        check("sport/tennis/player1/#", "sport/tennis/player1/ranking", true);
        check("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true);
        check("sport/#", "sport", true);
        check("#", "sport/tennis", true);
        check("sport/tennis/+", "sport/tennis/player1", true);
        check("sport/tennis/+", "sport/tennis/player1/ranking", false);
        check("sport/+", "sport", false);
        check("sport/+", "sport/", true);
        check("+/+", "/finance", true);
        check("/+", "/finance", true);
        check("+", "/finance", false);
        check("#", "$SYS/broker/clients", false);
        check("+/monitor/Clients", "$SYS/monitor/Clients", false);
        check("$SYS/#", "$SYS/monitor/Clients", true);
        check("$SYS/monitor/+", "$SYS/monitor/Clients", true);
        // Ours.
        check("sensors/+/temperature", "sensors/sim-0001/temperature", true);
        check("sensors/+/temperature", "sensors/sim-0001/humidity", false);
        check("sensors/+/temperature", "sensors/sim-0001", false);
        check("sensors/#", "sensors/sim-0001", true);
        check("devices/+/status", "devices/d/status", true);
        check("alerts/d", "alerts/d", true);
        check("alerts/d", "alerts/dd", false);
        check("alerts/d", "alerts/d/", false);
        check("a/b", "a", false);
        check("a", "a/b", false);
        check("+/+/#", "a/b", true);
        check("+/+/#", "a", false);
    }

    fn check_filter(filter: &str, valid: bool) {
        assert_eq!(validate_filter(filter).is_ok(), valid, "{filter:?}: {:?}", validate_filter(filter));
    }

    #[test]
    fn validates_filters() {
        check_filter("#", true);
        check_filter("+", true);
        check_filter("a/+/b/#", true);
        check_filter("/", true);
        check_filter("$SYS/#", true);
        check_filter("", false);
        check_filter("a/#/b", false);
        check_filter("a#", false);
        check_filter("a/b#", false);
        check_filter("a+/b", false);
        check_filter("a/++", false);
        check_filter("a\0b", false);
        check_filter("$share/group/sensors/#", false);
        check_filter(&"a".repeat(MAX_TOPIC_LEN + 1), false);
    }

    #[test]
    fn validates_topics() {
        assert!(validate_topic("control/lights/living-room").is_ok());
        assert!(validate_topic("commands/sim-0001").is_ok());
        assert_eq!(validate_topic(""), Err(TopicError::Empty));
        assert!(matches!(validate_topic("a/+"), Err(TopicError::Wildcard(_))));
        assert!(matches!(validate_topic("a/#"), Err(TopicError::Wildcard(_))));
        assert!(matches!(validate_topic("$SYS/x"), Err(TopicError::Reserved(_))));
        assert!(matches!(validate_topic("a\0"), Err(TopicError::Nul(_))));
    }

    /// A second, recursive statement of the rules, to compare the iterative matcher with.
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
        fn agrees_with_the_reference(filter in filter(), topic in topic()) {
            let topic = topic.join("/");
            prop_assert!(validate_filter(&filter).is_ok());
            let filter_levels: Vec<&str> = filter.split('/').collect();
            let topic_levels: Vec<&str> = topic.split('/').collect();
            let dollar_guard = topic.starts_with('$') && filter.starts_with(['+', '#']);
            let expected = !dollar_guard && reference(&filter_levels, &topic_levels);
            prop_assert_eq!(matches(&filter, &topic), expected, "filter {:?} topic {:?}", filter, topic);
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
            prop_assert!(validate_filter(&filter).is_ok(), "{:?}", filter);
            let dollar_guard = topic.starts_with('$') && filter.starts_with(['+', '#']);
            prop_assert_eq!(matches(&filter, &topic), !dollar_guard, "filter {:?} topic {:?}", filter, topic);
        }

        /// Changing one literal level of a filter without `#` makes it miss the topic it was made from.
        #[test]
        fn a_changed_level_misses(topic in topic(), which in 0usize..6) {
            let which = which % topic.len();
            let mut filter = topic.clone();
            filter[which].push('~');
            prop_assert!(!matches(&filter.join("/"), &topic.join("/")));
        }
    }
}
