"""awsiot_rs: a fast, asyncio-native AWS IoT Core client with a Rust core.

Layers, top down; a module imports only from its own layer or the layers below:
- client: ``client.Client``, the public entry point;
- services: ``shadow``, ``jobs``, ``provisioning`` (via ``_requests.Requester``), ``subscription``;
- dispatch: ``_dispatch.Dispatcher``, one per event loop: native results -> futures and events;
- native: ``_native``, the PyO3 binding over the Rust core (stubs in ``_native.pyi``).
``config``, ``auth``, ``errors`` and ``topics`` hold values and helpers any layer may use.

Quick look::

    async with awsiot_rs.Client(endpoint, client_id="sensor-1",
                                auth=awsiot_rs.MtlsAuth("device.pem.crt", "private.pem.key")) as client:
        sub = await client.subscribe("Sensor/+/room1", qos=1)
        await client.publish("Sensor/moisture/room1", {"temp": 10}, qos=1)
        async for msg in sub:
            print(msg.topic, msg.json())
            break
"""

from __future__ import annotations

import atexit
import os

from . import errors, topics
from ._native import Message, __version__
from ._native import after_fork_in_child as _after_fork_in_child
from ._native import shutdown as _shutdown
from .auth import Credentials, CustomAuth, MtlsAuth, SigV4Auth
from .client import Client
from .config import (
    ConnectEvent,
    ConnectResult,
    DisconnectEvent,
    OfflineQueue,
    PolicyViolationCheck,
    Reconnect,
    Will,
)
from .errors import (
    AuthError,
    AwsIotError,
    ClientClosedError,
    ConfigError,
    ConnectError,
    DisconnectedError,
    JobRejected,
    OperationTimeout,
    PayloadTooLarge,
    PolicyViolationSuspected,
    ProtocolError,
    ProvisioningRejected,
    QueueFullError,
    ServiceError,
    ShadowRejected,
    SubscribeError,
    TlsError,
    TopicError,
)
from .jobs import Jobs
from .provisioning import FleetProvisioning
from .shadow import Shadow
from .subscription import Subscription

__all__ = [
    "AuthError",
    "AwsIotError",
    "Client",
    "ClientClosedError",
    "ConfigError",
    "ConnectError",
    "ConnectEvent",
    "ConnectResult",
    "Credentials",
    "CustomAuth",
    "DisconnectEvent",
    "DisconnectedError",
    "JobRejected",
    "Jobs",
    "Shadow",
    "FleetProvisioning",
    "Message",
    "MtlsAuth",
    "OfflineQueue",
    "OperationTimeout",
    "PayloadTooLarge",
    "PolicyViolationCheck",
    "PolicyViolationSuspected",
    "ProtocolError",
    "ProvisioningRejected",
    "QueueFullError",
    "Reconnect",
    "ServiceError",
    "ShadowRejected",
    "SigV4Auth",
    "SubscribeError",
    "Subscription",
    "TlsError",
    "TopicError",
    "Will",
    "__version__",
    "errors",
    "topics",
]


def _at_exit() -> None:
    """Disconnects live clients, stops the runtime, and emits the last core log records."""
    from ._dispatch import flush_logs

    _shutdown()
    flush_logs()


# Disconnect live clients and stop the runtime before the interpreter finalizes.
atexit.register(_at_exit)
# Objects created before a fork() refuse to work in the child (instead of hanging). Windows
# has no fork (and no os.register_at_fork).
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
