//! AWS IoT's reserved topics: which `$` topics a client may publish to or subscribe to, and
//! which publishes go to the rules engine (basic ingest) instead of to subscribers.

/// Where a client's PUBLISH goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishKind {
    /// An ordinary topic (or a documented `$aws` request topic): routed to subscribers, and to
    /// the in-process services when they handle it.
    Routed,
    /// `$aws/rules/<rule>/...`: accepted for the rules engine; no subscriber ever receives it.
    BasicIngest,
    /// A reserved topic clients may not publish to; AWS closes the connection.
    Forbidden,
}

fn things_suffix(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("$aws/things/")?;
    let slash = rest.find('/')?;
    rest.get(slash + 1..)
}

/// Classifies a PUBLISH topic.
#[must_use]
pub fn publish_kind(topic: &str) -> PublishKind {
    if !topic.starts_with('$') {
        return PublishKind::Routed;
    }
    if topic.starts_with("$aws/rules/") {
        return PublishKind::BasicIngest;
    }
    if let Some(suffix) = things_suffix(topic) {
        let op = suffix.rsplit('/').next().unwrap_or_default();
        let allowed = if suffix.starts_with("shadow/") {
            matches!(op, "get" | "update" | "delete")
        } else if suffix.starts_with("jobs/") {
            matches!(op, "get" | "update" | "start-next")
        } else {
            suffix.starts_with("defender/metrics/")
        };
        return if allowed {
            PublishKind::Routed
        } else {
            PublishKind::Forbidden
        };
    }
    let provisioning = ["json", "cbor"].iter().any(|fmt| {
        topic == format!("$aws/certificates/create/{fmt}")
            || topic == format!("$aws/certificates/create-from-csr/{fmt}")
            || (topic.starts_with("$aws/provisioning-templates/")
                && topic.ends_with(&format!("/provision/{fmt}")))
    });
    if provisioning || topic.starts_with("$aws/sitewise/") {
        PublishKind::Routed
    } else {
        PublishKind::Forbidden
    }
}

/// Why a SUBSCRIBE filter is refused (SUBACK failure), or `None` when it may be granted.
#[must_use]
pub fn subscribe_refusal(filter: &str) -> Option<&'static str> {
    if filter.starts_with("$aws/rules/") {
        return Some("basic-ingest topics cannot be subscribed to");
    }
    if filter.starts_with("$share/") {
        return Some("shared subscriptions are not supported by the local core");
    }
    if !filter.starts_with('$') {
        return None;
    }
    let known = [
        "$aws/things/",
        "$aws/events/",
        "$aws/certificates/",
        "$aws/provisioning-templates/",
        "$aws/sitewise/",
    ];
    if known.iter().any(|p| filter.starts_with(p)) {
        None
    } else {
        Some("reserved topic")
    }
}

/// Whether a principal limited to fleet provisioning (a claim certificate for `template`) may
/// use `topic` (publish) or `filter` (subscribe).
#[must_use]
pub fn claim_may_use(template: &str, topic: &str) -> bool {
    topic.starts_with("$aws/certificates/create/")
        || topic.starts_with("$aws/certificates/create-from-csr/")
        || topic.starts_with(&format!(
            "$aws/provisioning-templates/{template}/provision/"
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_route_responses_and_unknown_reserved_topics_are_forbidden() {
        assert_eq!(publish_kind("Sensor/t"), PublishKind::Routed);
        assert_eq!(
            publish_kind("$aws/things/t/shadow/update"),
            PublishKind::Routed
        );
        assert_eq!(
            publish_kind("$aws/things/t/shadow/name/n/get"),
            PublishKind::Routed
        );
        assert_eq!(
            publish_kind("$aws/things/t/jobs/start-next"),
            PublishKind::Routed
        );
        assert_eq!(
            publish_kind("$aws/things/t/jobs/j1/update"),
            PublishKind::Routed
        );
        assert_eq!(
            publish_kind("$aws/certificates/create/json"),
            PublishKind::Routed
        );
        assert_eq!(
            publish_kind("$aws/provisioning-templates/T/provision/cbor"),
            PublishKind::Routed
        );
        assert_eq!(publish_kind("$aws/rules/r1/a/b"), PublishKind::BasicIngest);
        assert_eq!(
            publish_kind("$aws/things/t/shadow/update/accepted"),
            PublishKind::Forbidden
        );
        assert_eq!(
            publish_kind("$aws/events/presence/connected/x"),
            PublishKind::Forbidden
        );
        assert_eq!(publish_kind("$SYS/x"), PublishKind::Forbidden);
    }

    #[test]
    fn subscriptions_to_rules_shared_and_unknown_reserved_filters_are_refused() {
        assert!(subscribe_refusal("a/#").is_none());
        assert!(subscribe_refusal("$aws/things/t/shadow/update/delta").is_none());
        assert!(subscribe_refusal("$aws/events/presence/+/+").is_none());
        assert!(subscribe_refusal("$aws/rules/r/#").is_some());
        assert!(subscribe_refusal("$share/g/a").is_some());
        assert!(subscribe_refusal("$SYS/#").is_some());
    }

    #[test]
    fn a_claim_may_only_reach_its_templates_provisioning_topics() {
        assert!(claim_may_use("T", "$aws/certificates/create/json"));
        assert!(claim_may_use("T", "$aws/certificates/create/json/accepted"));
        assert!(claim_may_use(
            "T",
            "$aws/provisioning-templates/T/provision/json"
        ));
        assert!(!claim_may_use(
            "T",
            "$aws/provisioning-templates/U/provision/json"
        ));
        assert!(!claim_may_use("T", "Sensor/a"));
    }
}
