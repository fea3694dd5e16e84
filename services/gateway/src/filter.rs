//! MQTT topic filters and topics: validation of what browsers ask for.
//!
//! Matching topics against filters is [`ferrite_core::filter_matches`] (the one implementation in the workspace).

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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    /// Topic levels from a tiny alphabet (the empty level included).
    fn level() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["", "a", "b", "sensors", "$SYS", "x1"]).prop_map(str::to_owned)
    }

    proptest! {
        /// Levels and `+`, optionally ending in `#`, always make a valid filter; the same levels without
        /// wildcards (and not starting with `$`) make a valid topic.
        #[test]
        fn well_formed_filters_validate(levels in prop::collection::vec(prop_oneof![level(), Just("+".to_owned())], 1..6), multi in any::<bool>()) {
            let mut filter = levels.clone();
            if multi {
                filter.push("#".to_owned());
            }
            let filter = filter.join("/");
            prop_assume!(!filter.is_empty());
            prop_assert!(validate_filter(&filter).is_ok(), "{:?}", filter);
            let topic: Vec<&str> = levels.iter().map(|level| if level == "+" { "a" } else { level.as_str() }).collect();
            let topic = topic.join("/");
            prop_assume!(!topic.is_empty() && !topic.starts_with('$'));
            prop_assert!(validate_topic(&topic).is_ok(), "{:?}", topic);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Any string: validation never panics, and a valid filter keeps MQTT's rules for wildcards.
        #[test]
        fn any_string_validates_or_is_refused(text in "[a-z/+#$\u{0}]{0,12}|.{0,24}") {
            if validate_filter(&text).is_ok() {
                let levels: Vec<&str> = text.split('/').collect();
                for (idx, level) in levels.iter().enumerate() {
                    prop_assert!(!level.contains('#') || (*level == "#" && idx == levels.len() - 1), "{:?}", text);
                    prop_assert!(!level.contains('+') || *level == "+", "{:?}", text);
                }
                prop_assert!(!text.is_empty() && !text.contains('\0') && !text.starts_with("$share/"));
            }
            if validate_topic(&text).is_ok() {
                prop_assert!(!text.contains(['+', '#', '\0']) && !text.starts_with('$') && !text.is_empty());
                prop_assert!(validate_filter(&text).is_ok() || text.starts_with("$share/"), "{:?}", text);
            }
        }
    }
}
