"""The exceptions awsiot_rs raises.

Every exception derives from :class:`AwsIotError`. Several also derive from a builtin, so code
that catches ``ValueError``, ``ConnectionError`` or ``TimeoutError`` keeps working. Messages say
what was wrong and what is allowed; they never contain secrets.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthError",
    "AwsIotError",
    "ClientClosedError",
    "ConfigError",
    "ConnectError",
    "DisconnectedError",
    "JobRejected",
    "OperationTimeout",
    "PayloadTooLarge",
    "PolicyViolationSuspected",
    "ProtocolError",
    "ProvisioningRejected",
    "QueueFullError",
    "ServiceError",
    "ShadowRejected",
    "SubscribeError",
    "TlsError",
    "TopicError",
]


class AwsIotError(Exception):
    """Base class of every awsiot_rs error."""


class ConfigError(AwsIotError, ValueError):
    """A configuration value, file or argument is invalid. Raised before any network I/O."""


class TopicError(ConfigError):
    """A topic name or filter is invalid for the configured limits."""


class PayloadTooLarge(ConfigError):
    """A payload exceeds the maximum size (128 KiB on AWS IoT)."""

    size: int | None
    max: int | None

    def __init__(self, message: str, *, size: int | None = None, max: int | None = None) -> None:  # noqa: A002
        super().__init__(message)
        self.size = size
        self.max = max


class ConnectError(AwsIotError, ConnectionError):
    """A connection could not be established (network, refusal, timeout before CONNACK).

    ``return_code`` is the MQTT CONNACK return code when the broker refused us, else ``None``.
    """

    return_code: int | None

    def __init__(self, message: str, *, return_code: int | None = None) -> None:
        super().__init__(message)
        self.return_code = return_code


class TlsError(ConnectError):
    """The TLS handshake failed: untrusted or expired server certificate, wrong host name,
    missing or rejected client certificate."""


class AuthError(ConnectError):
    """The broker refused our credentials (CONNACK 4 or 5, HTTP 401/403 on WebSocket)."""


class ProtocolError(AwsIotError, ConnectionError):
    """The broker sent something that is not valid MQTT 3.1.1 (the connection was dropped)."""


class DisconnectedError(AwsIotError, ConnectionError):
    """The connection is down and the operation cannot wait for it (see ``OfflineQueue``)."""


class OperationTimeout(AwsIotError, TimeoutError):
    """An operation was not acknowledged within ``operation_timeout``."""


class SubscribeError(AwsIotError):
    """The broker refused a subscription (SUBACK return code 0x80). ``filters`` lists them."""

    filters: list[str]

    def __init__(self, message: str, *, filters: list[str] | None = None) -> None:
        super().__init__(message)
        self.filters = list(filters or [])


class QueueFullError(AwsIotError):
    """A bounded queue is full (the offline queue, or the submission queue).
    ``retry_when_writable`` is True when only the submission queue was momentarily full."""

    retry_when_writable: bool = False


class ClientClosedError(AwsIotError):
    """The client is not connected: the call came before ``connect()`` or after
    ``disconnect()``, or the client was disconnected while the operation waited."""


class ServiceError(AwsIotError):
    """An AWS IoT service (shadow, fleet provisioning, jobs) rejected a request."""


class ShadowRejected(ServiceError):
    """A Device Shadow request was rejected: ``code`` (HTTP-like: 400, 404, 409 version
    conflict, ...), ``message`` and the request's ``client_token``."""

    def __init__(self, code: int | None, message: str, client_token: str | None = None) -> None:
        super().__init__(f"shadow request rejected: {code} {message}")
        self.code = code
        self.message = message
        self.client_token = client_token


class ProvisioningRejected(ServiceError):
    """A fleet provisioning request was rejected: ``status_code``, ``error_code``,
    ``error_message``."""

    def __init__(self, status_code: int | None, error_code: str | None, error_message: str) -> None:
        super().__init__(f"provisioning request rejected: {status_code} {error_code}: {error_message}")
        self.status_code = status_code
        self.error_code = error_code
        self.error_message = error_message


class JobRejected(ServiceError):
    """A jobs request was rejected: ``code`` (``VersionMismatch``, ``ResourceNotFound``, ...),
    ``message`` and the request's ``client_token``."""

    def __init__(self, code: str | None, message: str, client_token: str | None = None) -> None:
        super().__init__(f"jobs request rejected: {code}: {message}")
        self.code = code
        self.message = message
        self.client_token = client_token


class PolicyViolationSuspected(ServiceError):
    """The connection was closed right after the same operation was sent, several times in a
    row (``Client(policy_violation=PolicyViolationCheck(count, window))``). Over MQTT 3.1.1 that
    is how AWS IoT answers a publish or subscribe its policy forbids, so the operation is failed
    instead of being resent forever, and the rest of the queue flows. ``topic`` is the topic
    (publish) or filter (subscribe), ``operation`` is ``"publish"`` or ``"subscribe"``."""

    def __init__(self, message: str, topic: str = "", operation: str = "") -> None:
        super().__init__(message)
        self.topic = topic
        self.operation = operation


_KINDS: dict[str, type[AwsIotError]] = {
    cls.__name__: cls
    for cls in (
        AwsIotError,
        ConfigError,
        TopicError,
        PayloadTooLarge,
        ConnectError,
        TlsError,
        AuthError,
        ProtocolError,
        DisconnectedError,
        OperationTimeout,
        SubscribeError,
        QueueFullError,
        ClientClosedError,
        PolicyViolationSuspected,
    )
}


def _from_core(kind: str, message: str, extra: dict[str, Any]) -> AwsIotError:
    """Builds the exception for a core error (called by the native module)."""
    cls = _KINDS.get(kind, AwsIotError)
    if cls in (ConnectError, TlsError, AuthError):
        return cls(message, return_code=extra.get("return_code"))
    if cls is SubscribeError:
        return SubscribeError(message, filters=extra.get("filters"))
    if cls is PolicyViolationSuspected:
        return PolicyViolationSuspected(
            message, topic=str(extra.get("topic", "")), operation=str(extra.get("operation", ""))
        )
    if cls is QueueFullError:
        err = QueueFullError(message)
        err.retry_when_writable = bool(extra.get("retry_when_writable", False))
        return err
    if cls is PayloadTooLarge:
        return PayloadTooLarge(message, size=extra.get("size"), max=extra.get("max"))
    return cls(message)
