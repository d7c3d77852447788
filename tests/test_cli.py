"""The ``awsiot-rs`` command line (``python -m awsiot_rs``), run as a subprocess against the
session mosquitto's plain listener (``--no-tls``), and its service commands (shadow, provision)
against the embedded AWS IoT Core (``local_iot_core``)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pathlib
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from awsiot_rs.cli import message_to_json
from awsiot_rs.local import CoreEvent, Device, LocalIoTCore
from support.http_proxy import Tinyproxy
from support.mosquitto import free_ports

pytestmark = pytest.mark.broker

ROOT = pathlib.Path(__file__).resolve().parent.parent
SENTINEL = "S3NTINEL-CLI-KEY"
PROXY_SECRET = "S3NTINEL-CLI-PROXY-PW"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWSIOT_", "AWS_"))}
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str] | None = None, input: bytes | None = None,  # noqa: A002
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "awsiot_rs", *args], env=env or clean_env(),
                       input=input, capture_output=True, timeout=timeout)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())


def local(broker, client_id: str | None = None) -> list[str]:  # type: ignore[no-untyped-def]
    args = ["--endpoint", "127.0.0.1", "--port", str(broker.port), "--no-tls"]
    if client_id is not None:
        args += ["--client-id", client_id]
    return args


def new_id(prefix: str = "cli") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def running_sub(broker, *args: str, client_id: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:  # type: ignore[no-untyped-def]
    """A running ``sub`` whose subscription is in place, and what it said on stderr so far."""
    # A terminal's Ctrl-C: the child gets SIGINT's default disposition even when this test runs
    # where SIGINT is ignored (a background job of a non-interactive shell, as CI may be).
    with subprocess.Popen([sys.executable, "-m", "awsiot_rs", "sub", *args, *local(broker, client_id)],
                          env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          preexec_fn=_default_sigint) as proc:
        try:
            assert proc.stderr is not None
            seen = []
            while True:
                line = proc.stderr.readline().decode()
                seen.append(line)
                assert line, f"sub ended before subscribing: {''.join(seen)}"
                if "subscribed to" in line:
                    break
            yield proc, "".join(seen)
        finally:
            if proc.poll() is None:
                proc.kill()


# -- help and the entry points ------------------------------------------------------------------


def test_help_lists_every_command_with_examples():
    r = run("--help")
    assert r.returncode == 0, r.stderr
    for word in ("pub", "sub", "shadow", "provision", "examples:", "AWSIOT_ENDPOINT", "exit codes"):
        assert word in r.stdout, word
    for command in ("pub", "sub", "shadow", "provision"):
        h = run(command, "--help")
        assert h.returncode == 0 and "--endpoint" in h.stdout and "--no-tls" in h.stdout, command
        assert "example" in h.stdout, command
    for command in ("demo", "local"):  # the embedded local AWS IoT Core's commands
        h = run(command, "--help")
        assert h.returncode == 0 and command in h.stdout, command


def test_the_console_script_points_at_main():
    tomllib = pytest.importorskip("tomllib")  # 3.11+
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"awsiot-rs": "awsiot_rs.cli:main"}
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("awsiot-rs ")


# -- happy paths ---------------------------------------------------------------------------------


def test_sub_prints_json_lines_while_pub_sends(broker, unique_topic):
    sid = new_id("sub")
    with running_sub(broker, unique_topic + "/#", "--count", "4", client_id=sid) as (proc, early):
        assert run("pub", unique_topic + "/json", '{"temp": 21.5, "ok": true}', *local(broker)).returncode == 0
        assert run("pub", unique_topic + "/text", "hello world", "--qos", "0", *local(broker)).returncode == 0
        binary = bytes(range(256))
        r = run("pub", unique_topic + "/bin", "-", *local(broker), input=binary)
        assert r.returncode == 0, r.stderr
        assert "published 256 bytes" in r.stderr
        assert run("pub", unique_topic + "/empty", *local(broker)).returncode == 0
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert lines == [
        {"topic": unique_topic + "/json", "qos": 1, "retain": False, "payload": {"temp": 21.5, "ok": True}},
        {"topic": unique_topic + "/text", "qos": 0, "retain": False, "payload": "hello world"},
        {"topic": unique_topic + "/bin", "qos": 1, "retain": False,
         "payload": base64.b64encode(binary).decode(), "encoding": "base64"},
        {"topic": unique_topic + "/empty", "qos": 1, "retain": False, "payload": ""},
    ]
    assert f"connected to 127.0.0.1:{broker.port} as {sid}" in early
    assert f"subscribed to {unique_topic}/# (QoS 1)" in early
    assert err.decode() == "awsiot-rs: 4 messages\n"


def test_retained_message_and_options_before_the_command(broker, unique_topic):
    assert run(*local(broker), "pub", unique_topic, "kept", "--retain").returncode == 0
    r = run(*local(broker), "sub", unique_topic, "--count", "1", "--wait", "10", "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"topic": unique_topic, "qos": 1, "retain": True, "payload": "kept"}
    assert r.stderr == "", "--quiet: no progress"
    run(*local(broker), "pub", unique_topic, "", "--retain")  # clear it


def test_connection_options_come_from_the_environment(broker, unique_topic):
    cid = new_id("env")
    start = len(broker.log_text())
    env = clean_env(AWSIOT_ENDPOINT="127.0.0.1", AWSIOT_PORT=str(broker.port), AWSIOT_CLIENT_ID=cid)
    r = run("pub", unique_topic, "x", "--no-tls", env=env)
    assert r.returncode == 0, r.stderr
    assert broker.wait_for_log(f"Received DISCONNECT from {cid}", start=start)


def test_log_file_and_verbose(broker, unique_topic, tmp_path):
    log = tmp_path / "traffic.log"
    r = run("pub", unique_topic, "x", *local(broker), "--log-file", str(log), "--verbose")
    assert r.returncode == 0, r.stderr
    assert "PUBLISH" in log.read_text()
    assert "DEBUG" in r.stderr


#: A fleet provisioning template as AWS's: the thing is ``thing-<SerialNumber>``.
TEMPLATE: dict[str, Any] = {
    "Parameters": {"SerialNumber": {"Type": "String", "Default": "0"}},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {"ThingName": {"Fn::Join": ["", ["thing-", {"Ref": "SerialNumber"}]]}},
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"},
        },
    },
}


def on_core(core: LocalIoTCore, device: Device | None = None, client_id: str | None = None) -> list[str]:
    """Connection options for the embedded AWS IoT Core (mutual TLS), as ``device``."""
    args = ["--endpoint", core.endpoint, "--port", str(core.ports["mqtt"]), "--ca", core.ca_file]
    if device is not None:
        args += ["--cert", device.cert_file, "--key", device.key_file]
    if client_id is not None:
        args += ["--client-id", client_id]
    return args


def test_shadow_get_update_delete(local_iot_core):
    core = local_iot_core
    thing = new_id("thing")
    conn = on_core(core, core.register_thing(thing), client_id=thing)
    r = run("shadow", "update", thing, "--desired", '{"light": "on"}', "--reported", '{"light": "off"}', *conn)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["state"] == {"desired": {"light": "on"}, "reported": {"light": "off"}} and doc["version"] == 1
    r = run("shadow", "get", thing, *conn)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["state"]["delta"] == {"light": "on"}
    assert got["state"]["reported"] == core.shadow_document(thing)["state"]["reported"]  # type: ignore[index]
    r = run("shadow", "update", thing, "--name", "cfg", "--reported", '{"mode": 2}', *conn)
    assert r.returncode == 0, r.stderr
    assert json.loads(run("shadow", "get", thing, "--name", "cfg", *conn).stdout)["state"] == {
        "reported": {"mode": 2}}
    r = run("shadow", "update", thing, "--reported", '{"light": "on"}', "--version", "999", *conn)
    assert r.returncode == 4 and "409" in r.stderr, "a stale version is rejected: exit 4"
    assert core.shadow_document(thing)["version"] == 1  # type: ignore[index]
    r = run("shadow", "delete", thing, *conn)
    assert r.returncode == 0, r.stderr
    assert core.shadow_document(thing) is None
    r = run("shadow", "get", thing, *conn)
    assert r.returncode == 4 and "404" in r.stderr, r.stderr


def test_provision_writes_the_certificate_and_key_and_prints_no_secret(local_iot_core, tmp_path):
    core = local_iot_core
    claim = core.add_provisioning_template("default", TEMPLATE)
    admin = core.register_thing(new_id("admin"))  # a device certificate: not limited to one template
    events = core.events()
    out = tmp_path / "device"
    r = run("provision", "--template", "default", "--param", "SerialNumber=99", "--out", str(out),
            *on_core(core, claim), "--verbose")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["thing_name"] == "thing-99"
    assert result["certificate"] == str(out / "certificate.pem.crt")
    assert result["private_key"] == str(out / "private.pem.key")
    key_pem = (out / "private.pem.key").read_text()
    assert "PRIVATE KEY" in key_pem
    key_line = key_pem.splitlines()[1]  # a line of the key's base64 body
    assert key_line not in r.stdout + r.stderr and "PRIVATE KEY" not in r.stdout + r.stderr
    for name in ("certificate.pem.crt", "private.pem.key"):
        assert stat.S_IMODE(os.stat(out / name).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((out / "certificate.pem.crt").read_bytes())
    assert result["certificate_id"] == cert.fingerprint(hashes.SHA256()).hex(), "AWS's certificate id"

    again_id, bad_id = new_id("again"), new_id("bad")
    again = run("provision", "--template", "default", "--out", str(out), *on_core(core, claim, again_id))
    assert again.returncode == 2 and "--force" in again.stderr, "never overwrites a key silently"
    bad = run("provision", "--template", "nope", "--out", str(tmp_path / "other"), *on_core(core, admin, bad_id))
    assert bad.returncode == 4 and "rejected" in bad.stderr and "ResourceNotFound" in bad.stderr, bad.stderr
    # the new certificate connects as the new thing
    r = run("pub", "provisioned/hello", "hi", *on_core(core, client_id="thing-99"),
            "--cert", str(out / "certificate.pem.crt"), "--key", str(out / "private.pem.key"))
    assert r.returncode == 0, r.stderr

    async def connections() -> list[CoreEvent]:
        seen = []
        async with events:
            async for e in events:
                if e.kind == "connect":
                    seen.append(e)
                    if e.client_id == "thing-99":
                        return seen
        return seen

    connects = asyncio.run(asyncio.wait_for(connections(), 10))
    assert again_id not in [e.client_id for e in connects], "nothing was sent: it did not even connect"
    assert bad_id in [e.client_id for e in connects]
    assert connects[-1].principal == result["certificate_id"], "the core knows the certificate by that id"


def test_through_an_http_proxy_given_in_the_environment_without_showing_its_password(broker, pki, tmp_path):
    mtls = ["--endpoint", "localhost", "--port", str(broker.mtls_port), "--ca", str(pki.ca_cert),
            "--cert", str(pki.client_cert), "--key", str(pki.client_key), "--verbose"]
    with Tinyproxy(tmp_path, user="dev", password=PROXY_SECRET) as proxy:
        r = run("pub", "proxied/hello", "hi", *mtls, env=clean_env(AWSIOT_PROXY=proxy.url("dev", PROXY_SECRET)))
        assert r.returncode == 0, r.stderr
        assert f"CONNECT localhost:{broker.mtls_port}" in proxy.log_text()
        assert PROXY_SECRET not in r.stdout + r.stderr
        wrong = run("pub", "proxied/hello", "hi", *mtls, "--proxy", proxy.url("dev", "wrong-" + PROXY_SECRET))
        assert wrong.returncode == 3, wrong.stderr
        assert "proxy" in wrong.stderr and PROXY_SECRET not in wrong.stdout + wrong.stderr


# -- errors and exit codes -----------------------------------------------------------------------


#: (name, arguments, connection options): "local" is the plain listener with --no-tls,
#: "tcp" the same without --no-tls, "port-less" has no --port, "none" nothing at all.
BAD_ARGUMENTS: list[tuple[str, Sequence[str], str]] = [
    ("no endpoint", ["pub", "t", "x", "--no-tls"], "none"),
    ("unknown command", ["publish", "t", "x"], "local"),
    ("unknown option", ["pub", "t", "x", "--retian"], "local"),
    ("QoS 2", ["pub", "t", "x", "--qos", "2"], "local"),
    ("wildcard in a topic", ["pub", "a/+/b", "x"], "local"),
    ("bad filter", ["sub", "a/#/b"], "local"),
    ("nine filters on AWS", ["sub", *[f"f/{i}" for i in range(9)], "--endpoint", "127.0.0.1"], "none"),
    ("count 0", ["sub", "t", "--count", "0"], "local"),
    ("bad port", ["pub", "t", "x", "--port", "http"], "port-less"),
    ("bad timeout", ["pub", "t", "x", "--timeout", "0"], "local"),
    ("cert without key", ["pub", "t", "x", "--cert", "c.pem"], "tcp"),
    ("cert and sigv4", ["pub", "t", "x", "--cert", "c.pem", "--key", "k.pem", "--sigv4", "us-east-1"], "tcp"),
    ("--no-tls with a CA", ["pub", "t", "x", "--ca", "ca.pem"], "local"),
    ("missing certificate file", ["pub", "t", "x", "--cert", "/nonexistent/c.pem", "--key", "/nonexistent/k.pem"], "tcp"),
    ("sigv4 without credentials", ["pub", "t", "x", "--sigv4", "us-east-1"], "tcp"),
    ("shadow JSON", ["shadow", "update", "thing", "--desired", "{not json"], "local"),
    ("shadow not an object", ["shadow", "update", "thing", "--desired", "[1]"], "local"),
    ("shadow update without state", ["shadow", "update", "thing"], "local"),
    ("desired on get", ["shadow", "get", "thing", "--desired", "{}"], "local"),
    ("bad thing name", ["shadow", "get", "no/slash"], "local"),
    ("bad param", ["provision", "--template", "T", "--param", "novalue", "--out", "/tmp"], "local"),
    ("no template", ["provision", "--out", "/tmp"], "local"),
]


@pytest.mark.parametrize(("args", "connection"), [(a, c) for _, a, c in BAD_ARGUMENTS],
                         ids=[n for n, _, _ in BAD_ARGUMENTS])
def test_bad_arguments_exit_2_and_send_nothing(broker, args, connection, tmp_path):
    cid = new_id("bad")
    start = len(broker.log_text())
    options = {
        "local": local(broker),
        "tcp": ["--endpoint", "127.0.0.1", "--port", str(broker.port)],
        "port-less": ["--endpoint", "127.0.0.1", "--no-tls"],
        "none": [],
    }[connection]
    # no AWS credentials anywhere (botocore would look in ~/.aws too)
    env = clean_env(HOME=str(tmp_path), AWS_CONFIG_FILE=str(tmp_path / "none"),
                    AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true")
    r = run(*args, *options, "--client-id", cid, env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.strip(), "the reason is on stderr"
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    time.sleep(0.2)
    log = broker.log_text()[start:]
    assert cid not in log and "New connection" not in log, "nothing was sent"


def test_a_payload_over_128_kib_is_refused_before_connecting_on_aws(broker):
    cid = new_id("big")
    start = len(broker.log_text())
    r = run("pub", "t", "-", "--endpoint", "127.0.0.1", "--port", str(broker.port), "--client-id", cid,
            input=b"x" * (128 * 1024 + 1))
    assert r.returncode == 2 and "131072" in r.stderr, r.stderr
    assert cid not in broker.log_text()[start:]


def test_a_refused_connection_exits_3(broker):
    (port,) = free_ports(1)
    r = run("pub", "t", "x", "--endpoint", "127.0.0.1", "--port", str(port), "--no-tls", "--timeout", "3")
    assert r.returncode == 3, r.stderr
    assert f"cannot connect to 127.0.0.1:{port}" in r.stderr


def test_a_tls_failure_exits_3(broker, pki):
    r = run("pub", "t", "x", "--endpoint", "localhost", "--port", str(broker.mtls_port),
            "--cert", str(pki.client_cert), "--key", str(pki.client_key), "--timeout", "3")  # Amazon roots only
    assert r.returncode == 3, r.stderr


def test_no_answer_in_time_exits_4(broker, unique_topic):
    thing = new_id("nobody")
    t0 = time.monotonic()
    r = run("shadow", "get", thing, *local(broker), "--timeout", "1")
    assert r.returncode == 4, r.stderr
    assert "OperationTimeout" in r.stderr and time.monotonic() - t0 < 15
    r = run("sub", unique_topic, "--count", "1", "--wait", "0.5", *local(broker))
    assert r.returncode == 4 and "timed out" in r.stderr and "0 messages" in r.stderr, r.stderr
    r = run("sub", unique_topic, "--wait", "0.3", *local(broker))
    assert r.returncode == 0, "without --count, --wait is simply how long to listen"


def test_sigint_ends_sub_with_130_and_a_disconnect(broker, unique_topic):
    sid = new_id("sigint")
    start = len(broker.log_text())
    with running_sub(broker, unique_topic, client_id=sid) as (proc, _):
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err.decode()
    assert "Traceback" not in err.decode()
    assert broker.wait_for_log(f"Received DISCONNECT from {sid}", start=start), "DISCONNECT was sent"


def test_sigterm_also_disconnects(broker, unique_topic):
    sid = new_id("sigterm")
    start = len(broker.log_text())
    with running_sub(broker, unique_topic, client_id=sid) as (proc, _):
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 143
    assert broker.wait_for_log(f"Received DISCONNECT from {sid}", start=start)


def test_sub_stops_quietly_when_the_reader_goes_away(broker, unique_topic):
    sid = new_id("pipe")
    start = len(broker.log_text())
    with running_sub(broker, unique_topic, client_id=sid) as (proc, _):
        assert proc.stdout is not None
        proc.stdout.close()  # like `| head -1` exiting
        for _ in range(3):
            run("pub", unique_topic, "x", *local(broker))
        err = proc.stderr.read().decode() if proc.stderr else ""
        assert proc.wait(10) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert broker.wait_for_log(f"Received DISCONNECT from {sid}", start=start)


# -- the payload encoding of `sub` ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"a": [1, 2]}', {"payload": {"a": [1, 2]}}),
        (b"42", {"payload": 42}),
        (b"plain text", {"payload": "plain text"}),
        ("héllo".encode(), {"payload": "héllo"}),
        (b"NaN", {"payload": "NaN"}),  # not standard JSON: jq would choke
        (b"\xff\x00", {"payload": "/wA=", "encoding": "base64"}),
        (b"", {"payload": ""}),
    ],
)
def test_payload_is_json_else_text_else_base64(payload: bytes, expected: dict[str, Any]):
    line = message_to_json("t", 1, False, payload)
    assert line == {"topic": "t", "qos": 1, "retain": False, **expected}
    json.loads(json.dumps(line, allow_nan=False))
