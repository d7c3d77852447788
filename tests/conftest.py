"""Shared pytest fixtures: test PKI, a private mosquitto broker, unique topics."""

from __future__ import annotations

import pathlib
import sys
import uuid
from collections.abc import Iterator

import pytest

# Make ``tests.support`` importable however pytest is invoked (``pytest`` vs
# ``python -m pytest``, any import mode): put the repository root on sys.path.
_REPO_ROOT = str(pathlib.Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.append(_REPO_ROOT)  # append: never shadow the installed package

from tests.support.certs import Pki, make_pki  # noqa: E402
from tests.support.mosquitto import Mosquitto, MosquittoError, find_mosquitto  # noqa: E402

_MARKERS = {
    "broker": "needs the session mosquitto broker",
    "slow": "takes several seconds or more",
    "reliability": "reconnect / persistence / broker-restart behaviour",
    "security": "TLS / certificate validation and secret-handling checks",
}


def pytest_configure(config: pytest.Config) -> None:
    """Register the project's custom markers."""
    for name, description in _MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


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
