"""Secrets (private keys, passwords) never appear in logs, reprs, exceptions or the traffic log."""

from __future__ import annotations

import logging
import traceback

import pytest

import awsiot_rs
from support.fake_broker import FakeBroker

pytestmark = pytest.mark.security

KEY_SENTINEL = "S3NTINEL-KEY"
PW_SENTINEL = "S3NTINEL-PW"


def sentinel_key_file(tmp_path, pki):  # type: ignore[no-untyped-def]
    """A key file that is garbage PEM whose body carries the sentinel."""
    path = tmp_path / "sentinel.key"
    path.write_text(f"-----BEGIN PRIVATE KEY-----\n{KEY_SENTINEL}AAAA{KEY_SENTINEL}\n-----END PRIVATE KEY-----\n")
    return path


def scan(*texts: str) -> None:
    for t in texts:
        assert KEY_SENTINEL not in t and PW_SENTINEL not in t, t


async def test_sentinels_never_leak(tmp_path, pki, broker, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    # 1. a garbage private key: the error names the problem, not the content
    with pytest.raises(awsiot_rs.ConfigError) as bad_key:
        awsiot_rs.MtlsAuth(pki.client_cert, sentinel_key_file(tmp_path, pki))
    seen += [str(bad_key.value), repr(bad_key.value), "".join(traceback.format_exception(type(bad_key.value), bad_key.value, bad_key.value.__traceback__))]
    # 2. a real key: the auth object's repr shows paths only
    auth = awsiot_rs.MtlsAuth(pki.client_cert, pki.client_key)
    seen.append(repr(auth))
    assert "PRIVATE KEY" not in repr(auth)
    # 3. a successful connection with a password, traffic log on, DEBUG logging
    log = tmp_path / "traffic.log"
    c = awsiot_rs.Client(
        "localhost", port=broker.mtls_port, ca=pki.ca_cert, auth=auth,
        username="user", password=PW_SENTINEL, log_file=log,
    )
    async with c:
        seen += [repr(c), str(c.stats())]
        await c.publish("t/secret", PW_SENTINEL.encode(), qos=1)
    # 4. a refused password
    async with FakeBroker() as fb:
        fb.connack_code = 4
        refused = awsiot_rs.Client("127.0.0.1", port=fb.port, tls=False, password=PW_SENTINEL, username="u")
        with pytest.raises(awsiot_rs.AuthError) as bad_pw:
            await refused.connect()
        seen += [str(bad_pw.value), "".join(traceback.format_exception(type(bad_pw.value), bad_pw.value, bad_pw.value.__traceback__)), repr(refused)]
    # 5. a TLS failure with the key and password configured
    bad = awsiot_rs.Client("localhost", port=broker.wrong_host_port, ca=pki.ca_cert, auth=auth, password=PW_SENTINEL, username="u")
    with pytest.raises(awsiot_rs.TlsError) as tls_err:
        await bad.connect()
    seen.append("".join(traceback.format_exception(type(tls_err.value), tls_err.value, tls_err.value.__traceback__)))
    key_body = pki.client_key.read_text().splitlines()[1]
    out, err = capfd.readouterr()
    everything = seen + [r.getMessage() for r in caplog.records] + [log.read_text(), out, err]
    scan(*everything)
    assert not any(key_body in t for t in everything), "no line of the private key leaks"
    assert any("connected to localhost" in r.getMessage() for r in caplog.records), "core logs reach Python"
