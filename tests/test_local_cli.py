"""``python -m awsiot_rs demo`` and ``python -m awsiot_rs local``, run as subprocesses; the
``local`` core is reached by a real client over loopback."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from awsiot_rs import MtlsAuth
from awsiot_rs.sync import Client

STEP = 15.0


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWSIOT_", "AWS_"))}


def _default_sigint() -> None:
    # A terminal's Ctrl-C: SIGINT's default disposition even where this test runs with SIGINT
    # ignored (a background job of a non-interactive shell, as CI may be).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_demo_prints_a_transcript_and_exits_0(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = subprocess.run([sys.executable, "-m", "awsiot_rs", "demo"], env=clean_env(), cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for expected in (
        "registered thing 'demo-sensor'",
        "connected over mutual TLS",
        "$aws/events/presence/connected/demo-sensor: eventType=connected clientId=demo-sensor",
        'received on demo/demo-sensor/telemetry: {"temp":21.5,"unit":"C"}',
        'delta: {"light": "on"}',
        'shadow now: desired {"light": "on"}, reported {"light": "on", "temp": 21.5}, delta null',
        "eventType=disconnected clientInitiatedDisconnect=True disconnectReason=CLIENT_INITIATED_DISCONNECT",
        "[demo]",
    ):
        assert expected in out, f"{expected!r} missing from the transcript:\n{out}"
    assert "PRIVATE KEY" not in out + r.stderr
    # The temporary state directory is gone.
    ca = re.search(r"CA certificate: (\S+)", out)
    assert ca is not None and not os.path.exists(ca.group(1))


def test_demo_with_another_thing_name() -> None:
    r = subprocess.run([sys.executable, "-m", "awsiot_rs", "demo", "--thing", "lamp-7"], env=clean_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "$aws/events/presence/connected/lamp-7" in r.stdout


def _read_until(proc: subprocess.Popen[bytes], marker: str, timeout: float) -> list[str]:
    """The child's stdout lines up to the one containing ``marker`` (read from the pipe's file
    descriptor: a buffered reader would hide lines from the selector)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            lines = data.decode().splitlines()
            if data.endswith(b"\n") and any(marker in line for line in lines):
                return lines
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                raise AssertionError(f"no {marker!r} line within {timeout} s; got {lines}")
            chunk = os.read(fd, 65536)
            if not chunk:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"the process ended before {marker!r}: {lines}; stderr {err}")
            data += chunk


@contextmanager
def running_local(*args: str) -> Iterator[tuple[subprocess.Popen[bytes], list[str]]]:
    with subprocess.Popen([sys.executable, "-m", "awsiot_rs", "local", *args], env=clean_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          preexec_fn=_default_sigint) as proc:
        try:
            marker = '"ports"' if "--json" in args else "ready"
            yield proc, _read_until(proc, marker, STEP)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _fields(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        key, sep, value = line.partition(": ")
        if sep:
            out[key] = value
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_local_serves_a_client_and_stops_cleanly_on_a_signal(tmp_path, sig: signal.Signals) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    with running_local("--register", "cli-thing", "--state-dir", str(state)) as (proc, lines):
        f = _fields(lines)
        assert f["endpoint"] == "localhost"
        mqtt_port = int(f["port mqtt"].split()[0])
        assert f["ca"] == str(state / "ca.pem")
        thing = re.search(r"^thing cli-thing: cert (\S+) key (\S+) certificate_id ([0-9a-f]{64})$", "\n".join(lines), re.M)
        assert thing is not None, lines
        cert_file, key_file = thing.group(1), thing.group(2)
        assert os.stat(key_file).st_mode & 0o077 == 0
        with Client("localhost", port=mqtt_port, client_id="cli-thing", ca=f["ca"],
                    auth=MtlsAuth(cert_file, key_file)) as client:
            sub = client.subscribe("cli/t", qos=1)
            client.publish("cli/t", "through the local core", qos=1)
            assert sub.get(timeout=STEP).text() == "through the local core"
        proc.send_signal(sig)
        assert proc.wait(timeout=STEP) == 0
        assert proc.stderr is not None and "local core stopped" in proc.stderr.read().decode()
    # A state directory given by the user is kept.
    assert os.path.exists(state / "ca.pem")


def test_local_json_output_and_fixed_ports(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from support.mosquitto import free_ports

    port = free_ports(1)[0]
    with running_local("--json", "--mqtt-port", str(port), "--register", "j1") as (proc, lines):
        info = json.loads(lines[-1])
        assert info["ports"]["mqtt"] == port and info["endpoint"] == "localhost"
        (thing,) = info["things"]
        assert thing["thing_name"] == "j1" and os.path.exists(thing["key_file"])
        ca_file = info["ca_file"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=STEP) == 0
    assert not os.path.exists(ca_file), "the temporary state directory is removed on exit"


def test_local_with_a_port_in_use_fails_with_a_message() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = subprocess.run([sys.executable, "-m", "awsiot_rs", "local", "--mqtt-port", str(s.getsockname()[1])],
                           env=clean_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 4 and "cannot start the local core" in r.stderr
