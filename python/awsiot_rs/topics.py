"""Topic names and filters: validation, matching and the AWS IoT reserved topics (no client
needed)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from . import _native
from .errors import TopicError

if TYPE_CHECKING:
    from ._native import Message

__all__ = [
    "LifecycleEvent",
    "client_connected",
    "client_disconnected",
    "client_subscribed",
    "client_unsubscribed",
    "fleet_provisioning",
    "jobs",
    "matches",
    "rule",
    "shadow",
    "validate_filter",
    "validate_topic",
]


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


_THING = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")
_SHADOW_NAME = re.compile(r"^[a-zA-Z0-9:_-]{1,64}$")
_RULE = re.compile(r"^[a-zA-Z0-9_]{1,128}$")
_TEMPLATE = re.compile(r"^[0-9A-Za-z_-]{1,36}$")
_JOB_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$|^\$next$")


def _check(kind: str, value: str, pattern: re.Pattern[str], allowed: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise TopicError(f"{kind} {value!r} is invalid: {allowed}")
    return value


def _client_id(client_id: str) -> str:
    if not isinstance(client_id, str) or not client_id or any(c in client_id for c in "+#/"):
        raise TopicError(
            f"client id {client_id!r} cannot be used in a lifecycle topic (it must be non-empty "
            "without '+', '#' or '/'; AWS sends no events for ids with wildcards)"
        )
    return client_id


def client_connected(client_id: str = "+") -> str:
    """``$aws/events/presence/connected/<client_id>`` (``"+"``: every client)."""
    return f"$aws/events/presence/connected/{client_id if client_id == '+' else _client_id(client_id)}"


def client_disconnected(client_id: str = "+") -> str:
    """``$aws/events/presence/disconnected/<client_id>``."""
    return f"$aws/events/presence/disconnected/{client_id if client_id == '+' else _client_id(client_id)}"


def client_subscribed(client_id: str = "+") -> str:
    """``$aws/events/subscriptions/subscribed/<client_id>``."""
    return f"$aws/events/subscriptions/subscribed/{client_id if client_id == '+' else _client_id(client_id)}"


def client_unsubscribed(client_id: str = "+") -> str:
    """``$aws/events/subscriptions/unsubscribed/<client_id>``."""
    return f"$aws/events/subscriptions/unsubscribed/{client_id if client_id == '+' else _client_id(client_id)}"


def rule(rule_name: str, topic: str = "") -> str:
    """Basic ingest: ``$aws/rules/<rule_name>[/<topic>]``. Publishing there sends straight to
    the rules engine (no messaging charge); nobody can subscribe to it. The prefix does not
    count toward the 256-byte / 7-slash limits."""
    _check("rule name", rule_name, _RULE, "1-128 letters, digits or underscores")
    full = f"$aws/rules/{rule_name}/{topic}" if topic else f"$aws/rules/{rule_name}"
    validate_topic(full)
    return full


_SHADOW_OPS = (
    "get", "get/accepted", "get/rejected",
    "update", "update/accepted", "update/rejected", "update/delta", "update/documents",
    "delete", "delete/accepted", "delete/rejected",
)

ShadowOp = Literal[
    "get", "get/accepted", "get/rejected",
    "update", "update/accepted", "update/rejected", "update/delta", "update/documents",
    "delete", "delete/accepted", "delete/rejected",
]


def shadow(thing: str, op: ShadowOp, name: str | None = None) -> str:
    """A Device Shadow topic: ``$aws/things/<thing>/shadow[/name/<name>]/<op>``."""
    _check("thing name", thing, _THING, "1-128 characters of a-z A-Z 0-9 : _ -")
    if op not in _SHADOW_OPS:
        raise TopicError(f"shadow operation {op!r} is not one of {', '.join(_SHADOW_OPS)}")
    if name is None:
        return f"$aws/things/{thing}/shadow/{op}"
    _check("shadow name", name, _SHADOW_NAME, "1-64 characters of a-z A-Z 0-9 : _ -")
    return f"$aws/things/{thing}/shadow/name/{name}/{op}"


def fleet_provisioning(op: str, *, template: str | None = None, fmt: str = "json") -> str:
    """A fleet provisioning topic. ``op`` is ``create``, ``create-from-csr`` or ``provision``
    (needs ``template``), optionally followed by ``/accepted`` or ``/rejected``; ``fmt`` is
    ``json`` or ``cbor``."""
    if fmt not in ("json", "cbor"):
        raise TopicError(f"fmt must be 'json' or 'cbor', not {fmt!r}")
    base, _, suffix = op.partition("/")
    if suffix not in ("", "accepted", "rejected"):
        raise TopicError(f"{op!r}: the suffix must be '/accepted' or '/rejected'")
    tail = f"/{suffix}" if suffix else ""
    if base in ("create", "create-from-csr"):
        if template is not None:
            raise TopicError(f"{base!r} takes no template")
        return f"$aws/certificates/{base}/{fmt}{tail}"
    if base == "provision":
        if template is None:
            raise TopicError("'provision' needs template=")
        _check("template name", template, _TEMPLATE, "1-36 characters of a-z A-Z 0-9 _ -")
        return f"$aws/provisioning-templates/{template}/provision/{fmt}{tail}"
    raise TopicError(f"fleet provisioning operation {op!r} is not create, create-from-csr or provision")


_JOB_OPS = ("get", "start-next", "notify", "notify-next", "update")


def jobs(thing: str, op: str, job_id: str | None = None) -> str:
    """A jobs topic: ``$aws/things/<thing>/jobs/<op>`` (``get``, ``start-next``, ``notify``,
    ``notify-next``) or ``.../jobs/<job_id>/<get|update>`` with ``job_id``; ``get``,
    ``start-next`` and ``update`` may end with ``/accepted`` or ``/rejected``."""
    _check("thing name", thing, _THING, "1-128 characters of a-z A-Z 0-9 : _ -")
    base, _, suffix = op.partition("/")
    if suffix not in ("", "accepted", "rejected"):
        raise TopicError(f"{op!r}: the suffix must be '/accepted' or '/rejected'")
    if base not in _JOB_OPS:
        raise TopicError(f"jobs operation {op!r} is not one of {', '.join(_JOB_OPS)}")
    if base in ("notify", "notify-next") and suffix:
        raise TopicError(f"{base!r} has no accepted/rejected topics")
    tail = f"/{suffix}" if suffix else ""
    if job_id is None:
        if base == "update":
            raise TopicError("'update' needs job_id=")
        return f"$aws/things/{thing}/jobs/{base}{tail}"
    _check("job id", job_id, _JOB_ID, "1-64 characters of a-z A-Z 0-9 _ - (or '$next')")
    if base not in ("get", "update"):
        raise TopicError(f"with a job_id the operation is 'get' or 'update', not {base!r}")
    return f"$aws/things/{thing}/jobs/{job_id}/{base}{tail}"


@dataclass(frozen=True)
class LifecycleEvent:
    """A lifecycle event from ``$aws/events/presence/...`` or ``$aws/events/subscriptions/...``.

    ``timestamp`` is milliseconds since the epoch (±2 min, events may arrive out of order or
    twice: debounce before acting); ``disconnect_reason`` is one of AWS's reasons
    (``CLIENT_INITIATED_DISCONNECT``, ``CONNECTION_LOST``, ``DUPLICATE_CLIENTID``, ...).
    """

    client_id: str
    event_type: str
    timestamp: int
    session_identifier: str | None = None
    principal_identifier: str | None = None
    ip_address: str | None = None
    version_number: int | None = None
    client_initiated_disconnect: bool | None = None
    disconnect_reason: str | None = None
    topics: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def parse(cls, message: Message | bytes | str | dict[str, Any]) -> LifecycleEvent:
        """Parses an event payload (a ``Message``, bytes, text or an already-parsed dict)."""
        import json

        if isinstance(message, dict):
            doc = message
        elif isinstance(message, (bytes, str)):
            doc = json.loads(message)
        else:
            doc = message.json()
        if not isinstance(doc, dict) or "clientId" not in doc or "eventType" not in doc:
            raise ValueError("not an AWS IoT lifecycle event (clientId and eventType are required)")
        return cls(
            client_id=str(doc["clientId"]),
            event_type=str(doc["eventType"]),
            timestamp=int(doc.get("timestamp", 0)),
            session_identifier=doc.get("sessionIdentifier"),
            principal_identifier=doc.get("principalIdentifier"),
            ip_address=doc.get("ipAddress"),
            version_number=doc.get("versionNumber"),
            client_initiated_disconnect=doc.get("clientInitiatedDisconnect"),
            disconnect_reason=doc.get("disconnectReason"),
            topics=list(doc.get("topics", [])),
            raw=doc,
        )
