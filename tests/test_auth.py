"""Every way into AWS IoT: mTLS on 443 with ALPN, PKCS#12 and encrypted keys, custom
authorizers over TCP and WebSocket, SigV4 over WebSocket with refreshing credentials."""

from __future__ import annotations

import asyncio

import pytest

import awsiot_rs
from support import packets as P
from support.certs import CLIENT_KEY_PASSWORD, write_pkcs12
from support.tls_server import RecordingTlsServer

pytestmark = [pytest.mark.broker, pytest.mark.security]


async def connect_once(srv: RecordingTlsServer, client: awsiot_rs.Client) -> P.Packet:
    await client.connect()
    await client.disconnect()
    await asyncio.to_thread(srv.wait_for_connections, 1)
    record = srv.connections[0]
    await asyncio.to_thread(record.wait)
    buf = bytearray(record.app_bytes)
    return P.decode(P.split(buf)[0])


async def test_pkcs12_bundles_and_encrypted_keys_connect(broker, pki, tmp_path):
    for password in (None, "p12-pass"):
        p12 = write_pkcs12(tmp_path, pki, password)
        auth = awsiot_rs.MtlsAuth.from_pkcs12(p12, password)
        async with awsiot_rs.Client("localhost", port=broker.mtls_port, ca=pki.ca_cert, auth=auth) as c:
            assert c.is_connected
    with pytest.raises(awsiot_rs.ConfigError, match="password"):
        awsiot_rs.MtlsAuth.from_pkcs12(write_pkcs12(tmp_path, pki, "right"), "wrong")
    enc = awsiot_rs.MtlsAuth(pki.client_cert, pki.client_key_encrypted, key_password=CLIENT_KEY_PASSWORD)
    async with awsiot_rs.Client("localhost", port=broker.mtls_port, ca=pki.ca_cert, auth=enc) as c:
        assert c.is_connected
    with pytest.raises(awsiot_rs.ConfigError, match="password"):
        awsiot_rs.MtlsAuth(pki.client_cert, pki.client_key_encrypted, key_password="S3NTINEL-PW")
    with pytest.raises(awsiot_rs.ConfigError, match="does not exist"):
        awsiot_rs.MtlsAuth.from_pkcs12(tmp_path / "missing.p12")


async def test_custom_authorizer_over_tcp_uses_the_username_query_and_alpn_mqtt(pki):
    auth = awsiot_rs.CustomAuth(
        authorizer_name="MyAuth", token_key_name="token", token="S3NTINEL-TOK",
        signature="abc/def=", username="alice", password="S3NTINEL-PW",
    )
    with RecordingTlsServer(pki.server_cert, pki.server_key, answer_connack=True, alpn_protocols=["mqtt"]) as srv:
        # Port 443 would get ALPN "mqtt" automatically; this front is on an ephemeral port.
        c = awsiot_rs.Client("localhost", port=srv.port, ca=pki.ca_cert, auth=auth, alpn=["mqtt"])
        connect = await connect_once(srv, c)
        record = srv.connections[0]
    assert record.offered_alpn == ["mqtt"] and record.sni == "localhost"
    assert connect.username == (
        "alice?x-amz-customauthorizer-name=MyAuth"
        "&x-amz-customauthorizer-signature=abc%2Fdef%3D&token=S3NTINEL-TOK"
    )
    assert connect.password == b"S3NTINEL-PW"
    assert "S3NTINEL" not in repr(auth) and "S3NTINEL" not in repr(c)


def test_custom_and_sigv4_arguments_are_validated():
    with pytest.raises(awsiot_rs.ConfigError, match="token_key_name"):
        awsiot_rs.CustomAuth(token="t")
    with pytest.raises(awsiot_rs.ConfigError, match="websockets=True"):
        awsiot_rs.CustomAuth(headers={"x": "y"})
    with pytest.raises(awsiot_rs.ConfigError, match="credentials_in"):
        awsiot_rs.CustomAuth(credentials_in="body")  # type: ignore[arg-type]
    with pytest.raises(awsiot_rs.ConfigError, match="header name"):
        awsiot_rs.Client("h", auth=awsiot_rs.CustomAuth(websockets=True, headers={"bad header": "v"}))
    with pytest.raises(awsiot_rs.ConfigError, match="region"):
        awsiot_rs.SigV4Auth("US East", access_key="a", secret_key="b")


def test_sigv4_credentials_come_from_keys_callable_or_environment(monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(awsiot_rs.ConfigError, match="AWS_ACCESS_KEY_ID"):
        awsiot_rs.SigV4Auth("us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "S3NTINEL-SAK")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "S3NTINEL-STS")
    auth = awsiot_rs.SigV4Auth("us-east-1")
    assert "AKIDENV" in repr(auth) and "S3NTINEL" not in repr(auth)
    creds = awsiot_rs.Credentials("AKID", "S3NTINEL-SAK", "S3NTINEL-STS")
    assert "S3NTINEL" not in repr(creds)
    assert "callable" in repr(awsiot_rs.SigV4Auth("eu-west-1", credentials=lambda: creds))


def test_presigned_url_known_answer():
    import datetime as dt

    t = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc).timestamp()
    url = awsiot_rs._native.presign_url(
        "example-ats.iot.us-east-1.amazonaws.com", 443, "us-east-1", "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "FQoGZXIvYXdzE//+tok=en/with+chars==", t, 3600,
    )
    assert url.endswith(
        "X-Amz-Signature=96a76a6e12819cf0b4ea3687683286a1807d768ec83de20171765997cff8803b"
        "&X-Amz-Security-Token=FQoGZXIvYXdzE%2F%2F%2Btok%3Den%2Fwith%2Bchars%3D%3D"
    )
