"""The README's example (examples/quickstart.py) runs against a local mutual-TLS broker."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.broker

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_quickstart_connects_subscribes_publishes_and_receives(broker, pki):
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--endpoint", "localhost",
         "--port", str(broker.mtls_port), "--ca", str(pki.ca_cert), "--cert", str(pki.client_cert),
         "--key", str(pki.client_key), "--client-id", "quickstart-test"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "received on Sensor/moisture/room1: {'temp': 10}" in r.stdout
