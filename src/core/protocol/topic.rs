//! Topic names and filters: validation against MQTT 3.1.1 and AWS IoT Core limits, and matching.

use crate::core::error::{Error, Result};

/// Which rules apply to topics, payloads, client ids and keep-alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Limits {
    /// AWS IoT Core quotas (topic ≤ 256 bytes and ≤ 7 slashes, payload ≤ 128 KiB, QoS ≤ 1, ...).
    #[default]
    Aws,
    /// Plain MQTT 3.1.1 rules only.
    Mqtt,
}

impl Limits {
    /// Parses `"aws"` or `"mqtt"`.
    ///
    /// # Errors
    /// [`Error::Config`] for any other value.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "aws" => Ok(Self::Aws),
            "mqtt" => Ok(Self::Mqtt),
            other => Err(Error::Config(format!(
                "limits must be \"aws\" or \"mqtt\", not {other:?}"
            ))),
        }
    }

    /// The lowercase name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aws => "aws",
            Self::Mqtt => "mqtt",
        }
    }
}

/// AWS IoT: maximum topic size in bytes (excluding the basic-ingest prefix).
pub const AWS_MAX_TOPIC_BYTES: usize = 256;
/// AWS IoT: maximum number of `/` in a topic or filter (excluding the basic-ingest prefix).
pub const AWS_MAX_SLASHES: usize = 7;
/// MQTT 3.1.1: a UTF-8 string is at most 65535 bytes.
pub const MQTT_MAX_STRING_BYTES: usize = 65_535;

const RULES_PREFIX: &str = "$aws/rules/";

/// Splits `$aws/rules/<rule>/rest` into (`$aws/rules/<rule>/`, `rest`): the part AWS does not
/// count toward the topic limits. Returns `None` for other topics.
fn split_basic_ingest(topic: &str) -> Option<(&str, &str)> {
    let after = topic.strip_prefix(RULES_PREFIX)?;
    match after.find('/') {
        Some(i) => Some(topic.split_at(RULES_PREFIX.len() + i + 1)),
        None => Some((topic, "")),
    }
}

fn check_common(kind: &str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::Topic(format!("{kind} must not be empty")));
    }
    if s.len() > MQTT_MAX_STRING_BYTES {
        return Err(Error::Topic(format!(
            "{kind} is {} bytes; MQTT allows at most {MQTT_MAX_STRING_BYTES}",
            s.len()
        )));
    }
    if s.contains('\0') {
        return Err(Error::Topic(format!(
            "{kind} {s:?} contains a NUL character, which MQTT does not allow"
        )));
    }
    Ok(())
}

fn check_aws_size(kind: &str, full: &str, counted: &str) -> Result<()> {
    if counted.len() > AWS_MAX_TOPIC_BYTES {
        return Err(Error::Topic(format!(
            "{kind} {full:?} is {} bytes; AWS IoT allows at most {AWS_MAX_TOPIC_BYTES} bytes",
            counted.len()
        )));
    }
    let slashes = counted.matches('/').count();
    if slashes > AWS_MAX_SLASHES {
        return Err(Error::Topic(format!(
            "{kind} {full:?} has {slashes} slashes; AWS IoT allows at most {AWS_MAX_SLASHES} (8 levels)"
        )));
    }
    Ok(())
}

/// Validates a topic name for PUBLISH.
///
/// # Errors
/// [`Error::Topic`] naming what is wrong and what is allowed.
pub fn validate_topic(topic: &str, limits: Limits) -> Result<()> {
    check_common("topic", topic)?;
    if topic.contains(['+', '#']) {
        return Err(Error::Topic(format!(
            "topic {topic:?} contains a wildcard ('+' or '#'); wildcards are only allowed in subscription filters"
        )));
    }
    if limits == Limits::Aws {
        let counted = match split_basic_ingest(topic) {
            Some((prefix, rest)) => {
                if prefix.len() <= RULES_PREFIX.len() + 1 {
                    return Err(Error::Topic(format!(
                        "topic {topic:?} has no rule name after '$aws/rules/'"
                    )));
                }
                rest
            }
            None => topic,
        };
        check_aws_size("topic", topic, counted)?;
    }
    Ok(())
}

/// Splits `$share/<group>/<filter>` into `(group, filter)`.
#[must_use]
pub fn split_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix("$share/")?;
    let (group, inner) = rest.split_once('/')?;
    Some((group, inner))
}

/// Validates a topic filter for SUBSCRIBE / UNSUBSCRIBE.
///
/// # Errors
/// [`Error::Topic`] naming what is wrong and what is allowed.
pub fn validate_filter(filter: &str, limits: Limits) -> Result<()> {
    check_common("topic filter", filter)?;
    let (inner, counted) = match split_shared(filter) {
        Some((group, inner)) => {
            if group.is_empty() || group.contains(['+', '#']) {
                return Err(Error::Topic(format!(
                    "shared subscription {filter:?} needs a share name without wildcards: '$share/<name>/<filter>'"
                )));
            }
            if inner.is_empty() {
                return Err(Error::Topic(format!(
                    "shared subscription {filter:?} has an empty filter after '$share/{group}/'"
                )));
            }
            (inner, inner)
        }
        None => (filter, filter),
    };
    let levels: Vec<&str> = inner.split('/').collect();
    let last = levels.len().saturating_sub(1);
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != last) {
            return Err(Error::Topic(format!(
                "topic filter {filter:?}: '#' must be a whole level and the last one (like 'a/#')"
            )));
        }
        if level.contains('+') && *level != "+" {
            return Err(Error::Topic(format!(
                "topic filter {filter:?}: '+' must be a whole level (like 'a/+/c')"
            )));
        }
    }
    if limits == Limits::Aws {
        if inner.starts_with(RULES_PREFIX) || inner == "$aws/rules" {
            return Err(Error::Topic(format!(
                "topic filter {filter:?}: '$aws/rules/...' topics go to the rules engine and cannot be subscribed to"
            )));
        }
        check_aws_size("topic filter", filter, counted)?;
    }
    Ok(())
}

/// Whether `topic` matches `filter` under MQTT 3.1.1 rules: `+` matches one level, `#` matches
/// the rest including the parent (`a/#` matches `a`), and a filter starting with a wildcard
/// never matches a topic starting with `$`.
#[must_use]
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Like [`matches`], but a shared-subscription filter (`$share/<group>/<filter>`) matches by its
/// inner filter: that is how the broker routes to it.
#[must_use]
pub fn subscription_matches(filter: &str, topic: &str) -> bool {
    match split_shared(filter) {
        Some((_, inner)) => matches(inner, topic),
        None => matches(filter, topic),
    }
}

/// Whether a message on `topic` reaches a subscription to `filter` under `limits`. With
/// [`Limits::Mqtt`] this is [`subscription_matches`]. With [`Limits::Aws`] it follows what AWS
/// IoT Core delivers: a trailing `/#` needs at least one more level, so `Sensor/#` matches
/// `Sensor/` and `Sensor/a` but not `Sensor` itself (AWS's topic-filter table).
#[must_use]
pub fn delivered(filter: &str, topic: &str, limits: Limits) -> bool {
    if !subscription_matches(filter, topic) {
        return false;
    }
    if limits == Limits::Mqtt {
        return true;
    }
    let inner = split_shared(filter).map_or(filter, |(_, inner)| inner);
    match inner.strip_suffix("/#") {
        // The parent level itself: MQTT matches it, AWS does not.
        Some(parent) => topic != parent,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_matches_exactly_one_level() {
        assert!(matches("Sensor/+/room1", "Sensor/temp/room1"));
        assert!(matches("Sensor/+/room1", "Sensor//room1"));
        assert!(!matches("Sensor/+/room1", "Sensor/a/b/room1"));
        assert!(!matches("Sensor/+", "Sensor"));
        assert!(matches("+", "a"));
        assert!(!matches("+", "a/b"));
        assert!(matches("+/+", "/a"));
    }

    #[test]
    fn hash_matches_the_rest_and_the_parent() {
        assert!(matches("Sensor/#", "Sensor/temp/room1"));
        assert!(matches("Sensor/#", "Sensor/"));
        assert!(matches("Sensor/#", "Sensor"));
        assert!(matches("#", "a/b/c"));
        assert!(!matches("Sensor/#", "Other/temp"));
    }

    #[test]
    fn on_aws_a_trailing_hash_does_not_match_the_parent_level() {
        assert!(!delivered("Sensor/#", "Sensor", Limits::Aws));
        assert!(delivered("Sensor/#", "Sensor/", Limits::Aws));
        assert!(delivered("Sensor/#", "Sensor/a/b", Limits::Aws));
        assert!(delivered("Sensor/#", "Sensor", Limits::Mqtt));
        assert!(delivered("#", "Sensor", Limits::Aws));
        assert!(!delivered("$share/g/Sensor/#", "Sensor", Limits::Aws));
        assert!(!delivered("Other/#", "Sensor/a", Limits::Aws));
    }

    #[test]
    fn exact_filters_match_only_themselves() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(!matches("a/b", "a/B"));
    }

    #[test]
    fn leading_wildcards_never_match_dollar_topics() {
        assert!(!matches("#", "$aws/things/t/shadow/update"));
        assert!(!matches("+/things/#", "$aws/things/x"));
        assert!(matches(
            "$aws/things/+/shadow/#",
            "$aws/things/t/shadow/update/delta"
        ));
        assert!(matches(
            "$aws/events/presence/connected/+",
            "$aws/events/presence/connected/c1"
        ));
    }

    #[test]
    fn shared_subscriptions_route_by_their_inner_filter() {
        assert!(subscription_matches("$share/g/a/+", "a/b"));
        assert!(!subscription_matches("$share/g/a/+", "$share/g/a/b/c"));
        assert_eq!(split_shared("$share/grp/x/#"), Some(("grp", "x/#")));
    }

    #[test]
    fn publish_topics_reject_wildcards_and_empties() {
        assert!(validate_topic("a/+/b", Limits::Mqtt).is_err());
        assert!(validate_topic("a/#", Limits::Mqtt).is_err());
        assert!(validate_topic("", Limits::Mqtt).is_err());
        assert!(validate_topic("a\0b", Limits::Mqtt).is_err());
        assert!(validate_topic("a/b", Limits::Aws).is_ok());
        assert!(validate_topic("/", Limits::Aws).is_ok());
    }

    #[test]
    fn aws_limits_count_bytes_and_slashes() {
        let eight_levels = "1/2/3/4/5/6/7/8";
        let nine_levels = "1/2/3/4/5/6/7/8/9";
        assert!(validate_topic(eight_levels, Limits::Aws).is_ok());
        let err = validate_topic(nine_levels, Limits::Aws).unwrap_err();
        assert!(err.to_string().contains("8 slashes"), "{err}");
        assert!(validate_topic(nine_levels, Limits::Mqtt).is_ok());
        let long = "a".repeat(257);
        assert!(validate_topic(&"a".repeat(256), Limits::Aws).is_ok());
        let err = validate_topic(&long, Limits::Aws).unwrap_err();
        assert!(err.to_string().contains("at most 256 bytes"), "{err}");
        assert!(validate_topic(&long, Limits::Mqtt).is_ok());
        assert!(validate_filter(nine_levels, Limits::Aws).is_err());
        assert!(validate_filter(&long, Limits::Aws).is_err());
    }

    #[test]
    fn basic_ingest_prefix_does_not_count_toward_aws_limits() {
        let topic = format!("$aws/rules/myRule/{}", "x/".repeat(7) + "y");
        assert!(validate_topic(&topic, Limits::Aws).is_ok());
        let topic = format!("$aws/rules/myRule/{}", "z".repeat(256));
        assert!(validate_topic(&topic, Limits::Aws).is_ok());
        assert!(validate_topic("$aws/rules/myRule", Limits::Aws).is_ok());
        assert!(validate_topic("$aws/rules//x", Limits::Aws).is_err());
    }

    #[test]
    fn rule_topics_cannot_be_subscribed_on_aws() {
        assert!(validate_filter("$aws/rules/r/a", Limits::Aws).is_err());
        assert!(validate_filter("$aws/rules/r/a", Limits::Mqtt).is_ok());
    }

    #[test]
    fn filters_need_whole_level_wildcards() {
        for bad in ["a/#/b", "a#", "a/b#", "a+/b", "a/+b", "##", ""] {
            assert!(validate_filter(bad, Limits::Mqtt).is_err(), "{bad}");
        }
        for good in ["#", "+", "a/+/b", "a/#", "+/+/#", "/"] {
            assert!(validate_filter(good, Limits::Aws).is_ok(), "{good}");
        }
    }

    #[test]
    fn shared_filters_exclude_their_prefix_from_the_slash_count() {
        assert!(validate_filter("$share/g/1/2/3/4/5/6/7/8", Limits::Aws).is_ok());
        assert!(validate_filter("$share/g/1/2/3/4/5/6/7/8/9", Limits::Aws).is_err());
        assert!(validate_filter("$share//a", Limits::Aws).is_err());
        assert!(validate_filter("$share/g/", Limits::Aws).is_err());
    }

    #[test]
    fn limits_parse_names() {
        assert_eq!(Limits::parse("aws"), Ok(Limits::Aws));
        assert_eq!(Limits::parse("mqtt"), Ok(Limits::Mqtt));
        assert!(Limits::parse("AWS").is_err());
    }
}
