"""Topic names and filters: validation and matching (no client needed)."""

from __future__ import annotations

from . import _native

__all__ = ["matches", "validate_filter", "validate_topic"]


def matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` under MQTT 3.1.1 rules.

    ``+`` matches one level and ``#`` the rest, including the parent (``a/#`` matches ``a``).
    A filter starting with a wildcard never matches a topic starting with ``$``.
    """
    return _native.matches(topic_filter, topic)


def validate_topic(topic: str, limits: str = "aws") -> None:
    """Raises ``TopicError`` unless ``topic`` is a valid topic name to publish to.

    With ``limits="aws"``: at most 256 bytes and 7 slashes (the ``$aws/rules/<rule>/`` prefix
    does not count); with ``"mqtt"``: only MQTT's rules (no wildcards, no NUL, not empty).
    """
    _native.validate_topic(topic, limits)


def validate_filter(topic_filter: str, limits: str = "aws") -> None:
    """Raises ``TopicError`` unless ``topic_filter`` is a valid subscription filter.

    Wildcards must be whole levels (``a/+/b``, ``a/#``); ``$share/<name>/<filter>`` is
    accepted; with ``limits="aws"`` the AWS size limits apply and ``$aws/rules/...`` is refused
    (rule topics cannot be subscribed to).
    """
    _native.validate_filter(topic_filter, limits)
