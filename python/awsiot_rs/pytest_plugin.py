"""pytest fixtures for testing device code against the embedded AWS IoT Core.

Registered through the ``pytest11`` entry point of the wheel: installing ``awsiot_rs`` is
enough (``-p no:awsiot_rs`` turns it off; with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, enable it
with ``-p awsiot_rs.pytest_plugin``).

- ``local_iot_core``: a started :class:`awsiot_rs.local.LocalIoTCore`, stopped after the test.
  A plain (sync) fixture, so sync and async tests can both use it; its custom authorizer
  functions run on the background loop of :mod:`awsiot_rs.sync`.
- ``iot_device``: an async fixture (needs pytest-asyncio): a thing registered under a name made
  from the test's name, and an :class:`awsiot_rs.Client` connected for it over mutual TLS, as
  an :class:`IotDevice` ``(device, client, core)`` named tuple. The client is disconnected after
  the test.

This module imports neither ``awsiot_rs.local`` nor the client until a fixture is used.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

if TYPE_CHECKING:
    from .client import Client
    from .local import Device, LocalIoTCore

__all__ = ["IotDevice", "iot_device", "local_iot_core", "thing_name_for"]


class IotDevice(NamedTuple):
    """What the ``iot_device`` fixture gives: the registered thing (its certificate and key
    files), the connected client, and the core."""

    device: Device
    client: Client
    core: LocalIoTCore


def thing_name_for(node_name: str) -> str:
    """A valid AWS IoT thing name (``[a-zA-Z0-9:_-]``, at most 128 characters) made from a test
    name such as ``test_x[param-1]``."""
    name = re.sub(r"[^a-zA-Z0-9:_-]", "_", node_name).strip("_") or "thing"
    return name[:128]


@pytest.fixture
def local_iot_core() -> Iterator[LocalIoTCore]:
    """A started :class:`awsiot_rs.local.LocalIoTCore` on free loopback ports, stopped (every
    connection closed, every port freed) after the test."""
    from .local import LocalIoTCore

    with LocalIoTCore() as core:
        yield core


async def _iot_device(request: pytest.FixtureRequest, local_iot_core: LocalIoTCore) -> AsyncIterator[IotDevice]:
    """A thing registered under a name made from the test's name and an
    :class:`awsiot_rs.Client` connected for it over mutual TLS (client id = thing name), as
    ``IotDevice(device, client, core)``; disconnected after the test."""
    thing = thing_name_for(request.node.name)
    device = local_iot_core.register_thing(thing)
    client = local_iot_core.client(thing)
    await client.connect()
    try:
        yield IotDevice(device, client, local_iot_core)
    finally:
        await client.disconnect()


def _no_pytest_asyncio() -> None:
    """Without pytest-asyncio no async test or fixture can run: say so."""
    pytest.fail("the iot_device fixture needs pytest-asyncio (pip install pytest-asyncio)", pytrace=False)


def _iot_device_fixture() -> Any:
    """``iot_device`` through pytest-asyncio when it is installed, else a fixture that fails
    with the reason (the plugin itself must load without it)."""
    try:
        import pytest_asyncio
    except ImportError:  # pragma: no cover - exercised only without pytest-asyncio
        return pytest.fixture(name="iot_device")(_no_pytest_asyncio)
    return pytest_asyncio.fixture(name="iot_device")(_iot_device)


iot_device = _iot_device_fixture()
