"""Configuration and event value types (immutable dataclasses)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Union

__all__ = [
    "ConnectEvent",
    "ConnectResult",
    "DisconnectEvent",
    "OfflineQueue",
    "Payload",
    "PolicyViolationCheck",
    "Reconnect",
    "Will",
    "encode_payload",
]

#: What ``publish`` accepts as a payload: bytes-like, ``str`` (UTF-8) or a JSON-serialisable
#: ``dict``/``list``.
Payload = Union[bytes, bytearray, memoryview, str, dict[str, Any], list[Any]]


def encode_payload(payload: Payload) -> bytes:
    """Converts a payload to bytes: bytes-like as is, ``str`` as UTF-8, ``dict``/``list`` as
    compact JSON. Anything else raises ``TypeError`` naming what is accepted."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8")
    if isinstance(payload, (dict, list)):
        return json.dumps(payload, separators=(",", ":")).encode("utf-8")
    raise TypeError(
        f"payload must be bytes, bytearray, memoryview, str, dict or list, not {type(payload).__name__}"
    )


@dataclass(frozen=True)
class Will:
    """The MQTT last will: published by the broker if the client vanishes without DISCONNECT."""

    topic: str
    payload: Payload = b""
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True)
class Reconnect:
    """Automatic reconnect (the seed's WatchDog): exponential backoff with full jitter.

    ``max_attempts=0`` retries forever; the backoff resets only after a connection stayed up
    ``reset_after`` seconds. On AWS (``limits="aws"``) attempts are at least 1 s apart.
    """

    min_delay: float = 1.0
    max_delay: float = 60.0
    jitter: bool = True
    max_attempts: int = 0
    reset_after: float = 30.0


@dataclass(frozen=True)
class OfflineQueue:
    """What happens to operations submitted while the connection is down: they wait, in
    order, up to ``limit`` (then ``QueueFullError``); QoS 0 publishes wait only if ``qos0``,
    otherwise they raise ``DisconnectedError`` at once."""

    limit: int = 1000
    qos0: bool = False


@dataclass(frozen=True)
class PolicyViolationCheck:
    """How the client recognises AWS IoT refusing an operation by policy.

    Over MQTT 3.1.1, AWS IoT answers a publish or subscribe that the device's policy forbids by
    closing the connection. A client that resends it after each reconnect loops forever, and
    everything queued behind it waits. When the connection drops within ``window`` seconds
    after the same un-acknowledged operation was sent, ``count`` times in a row, that operation
    fails with ``PolicyViolationSuspected`` (awaited publishes and subscribes raise it;
    ``publish_nowait`` messages are logged at ERROR and counted in ``stats()["dropped"]``) and
    is not resent. ``Client(policy_violation=None)`` turns the check off.
    """

    count: int = 3
    window: float = 2.0


@dataclass(frozen=True)
class ConnectResult:
    """What ``connect()`` returns."""

    session_present: bool


@dataclass(frozen=True)
class ConnectEvent:
    """Passed to ``on_connect`` on every successful connection."""

    session_present: bool
    reconnect: bool


@dataclass(frozen=True)
class DisconnectEvent:
    """Passed to ``on_disconnect`` when a connection ends or a reconnect attempt fails.

    ``reason`` is one of ``"client"``, ``"network"``, ``"keepalive"``, ``"auth"``, ``"tls"``,
    ``"protocol"``, ``"server"``; ``error`` is the exception (``None`` for ``"client"``).
    """

    reason: str
    error: BaseException | None
