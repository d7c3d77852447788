"""The one factory for the :class:`awsiot_rs.Client` objects the tests build.

``make_client(port, **overrides)``
    A client of ``127.0.0.1:port`` without TLS and with plain MQTT limits
    (``tls=False, limits="mqtt"``): for mosquitto's plain listener, a
    :class:`~support.fake_broker.FakeBroker`, a :class:`~support.fault_proxy.FaultProxy`.
``make_client(port, pki, **overrides)``
    A TLS client of ``localhost:port`` trusting the test CA and authenticated by the
    test device's certificate (``MtlsAuth``) unless ``auth`` is given: for the mutual-TLS
    listener and the TLS / WebSocket fronts.

``overrides`` are any ``awsiot_rs.Client`` keywords and win over these defaults. A test
module whose clients share more settings names them once, e.g.
``client = functools.partial(make_client, keep_alive=30)``.
"""

from __future__ import annotations

from typing import Any

import awsiot_rs

from .certs import Pki

__all__ = ["make_client"]


def make_client(port: int, pki: Pki | None = None, **overrides: Any) -> awsiot_rs.Client:
    """A new (not yet connected) client of the local ``port``; see the module docstring."""
    opts: dict[str, Any]
    if pki is None:
        endpoint = "127.0.0.1"
        opts = {"port": port, "tls": False, "limits": "mqtt"}
    else:
        endpoint = "localhost"
        opts = {"port": port, "ca": pki.ca_cert}
        if "auth" not in overrides:
            opts["auth"] = awsiot_rs.MtlsAuth(pki.client_cert, pki.client_key)
    opts.update(overrides)
    return awsiot_rs.Client(endpoint, **opts)
