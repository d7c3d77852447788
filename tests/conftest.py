"""Shared pytest fixtures: test PKI, a private mosquitto broker, unique topics, clients.

Layout of ``tests/`` (this conftest applies to every folder below it):

- ``test_*.py``: the product's tests, one module per capability;
- ``support/``: the test doubles and tools they use (PKI, mosquitto, fake brokers, proxies,
  AWS service fakes, the MQTT codec, the client factory ``support.clients.make_client``),
  importable as ``support`` (pyproject puts ``tests`` on pytest's ``pythonpath``);
- ``selfcheck/``: tests of ``support/`` itself, which never import ``awsiot_rs``;
- ``*.rs``, ``fuzz/``: the Rust core's integration and fuzz tests (``cargo test``).
"""

from __future__ import annotations

import functools
import sys
import uuid
from collections.abc import Iterator

import pytest

# ``support`` is importable because pyproject sets pytest's pythonpath to ``tests``.
from support.certs import Pki, make_pki
from support.mosquitto import Mosquitto, MosquittoError, find_mosquitto

_MARKERS = {
    "broker": "needs the session mosquitto broker",
    "slow": "takes several seconds or more",
    "reliability": "reconnect / persistence / broker-restart behaviour",
    "security": "TLS / certificate validation and secret-handling checks",
    "wheel": "installs the built release wheel into fresh virtual environments (test_wheel.py)",
}

#: Before 3.11, asyncio's transports (and websockets' refused-handshake path on them) can be
#: garbage-collected unclosed in the test doubles; 3.12+ closes them quietly. There, and only
#: for these objects, a ResourceWarning from ``__del__`` is shown instead of failing the test.
_OLD_ASYNCIO_LEAKS = (
    r"default:Exception ignored in. <(socket\.socket|function (_SelectorTransport|_SSLProtocolTransport"
    r"|BaseEventLoop)\.__del__):pytest.PytestUnraisableExceptionWarning"
)


def pytest_configure(config: pytest.Config) -> None:
    """Register the project's custom markers."""
    for name, description in _MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    if sys.version_info < (3, 11):
        config.addinivalue_line("filterwarnings", _OLD_ASYNCIO_LEAKS)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A freshly generated throw-away PKI (see :mod:`tests.support.certs`)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A running mosquitto broker shared by the whole session.

    Never skipped: a missing or broken mosquitto is a test failure.
    """
    try:
        find_mosquitto()
    except MosquittoError as exc:
        pytest.fail(str(exc), pytrace=False)
    server = Mosquitto(pki=pki, directory=tmp_path_factory.mktemp("mosquitto"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def unique_topic() -> str:
    """A topic name no other test uses, e.g. ``test/3f2a...``."""
    return f"test/{uuid.uuid4().hex}"


@pytest.fixture
def plain_client(broker: Mosquitto):  # type: ignore[no-untyped-def]
    """Builds clients for the plain (TCP) listener: ``plain_client(**overrides)``."""
    from support.clients import make_client  # imports awsiot_rs: only when used

    return functools.partial(make_client, broker.port)


@pytest.fixture
def mtls_client(broker: Mosquitto, pki: Pki):  # type: ignore[no-untyped-def]
    """Builds clients for the mutual-TLS listener (endpoint ``localhost``, the test CA)."""
    from support.clients import make_client

    return functools.partial(make_client, broker.mtls_port, pki)
