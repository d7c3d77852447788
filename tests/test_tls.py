"""TLS: server identity is always verified, client certificates are required by the mTLS
listener, and a failed handshake never leaks an MQTT byte."""

from __future__ import annotations

import asyncio
import functools

import pytest

import awsiot_rs
from support.clients import make_client
from support.tls_server import RecordingTlsServer

pytestmark = [pytest.mark.broker, pytest.mark.security]


#: ``mtls(port, pki, **overrides)``: the test device over mutual TLS, failing fast.
mtls = functools.partial(make_client, reconnect=None, connect_timeout=5)


@pytest.mark.parametrize(
    ("listener", "reason"),
    [
        ("fake_ca_port", "BadSignature"),
        ("wrong_host_port", "NotValidForName"),
        ("expired_port", "Expired"),
    ],
)
async def test_untrusted_server_identities_are_refused(broker, pki, listener, reason):
    c = mtls(getattr(broker, listener), pki)
    with pytest.raises(awsiot_rs.TlsError, match=reason):
        await c.connect()
    assert not c.is_connected


async def test_missing_or_foreign_client_certificate_is_a_tls_error(broker, pki):
    with pytest.raises(awsiot_rs.TlsError):
        await awsiot_rs.Client(
            "localhost", port=broker.mtls_port, ca=pki.ca_cert, reconnect=None
        ).connect()
    other = awsiot_rs.MtlsAuth(pki.other_client_cert, pki.other_client_key)
    with pytest.raises(awsiot_rs.TlsError):
        await mtls(broker.mtls_port, pki, auth=other).connect()


async def test_ec_client_certificates_connect(broker, pki):
    async with mtls(broker.mtls_port, pki, auth=awsiot_rs.MtlsAuth(pki.client_ec_cert, pki.client_ec_key)) as c:
        assert c.is_connected


async def test_server_auth_only_tls_listener(broker, pki):
    async with awsiot_rs.Client("localhost", port=broker.tls_port, ca=pki.ca_cert) as c:
        assert c.is_connected


@pytest.mark.parametrize(
    ("cert", "key", "reason"),
    [
        ("wrong_host_cert", "wrong_host_key", "NotValidForName"),
        ("expired_server_cert", "expired_server_key", "Expired"),
        ("fake_server_cert", "fake_server_key", "BadSignature"),
    ],
)
async def test_failed_server_verification_sends_no_mqtt_byte(pki, cert, key, reason):
    with RecordingTlsServer(getattr(pki, cert), getattr(pki, key), answer_connack=True) as srv:
        with pytest.raises(awsiot_rs.TlsError, match=reason):
            await mtls(srv.port, pki, password="S3NTINEL-PW", username="u").connect()
        await asyncio.to_thread(srv.wait_for_connections, 1)
        (record,) = srv.connections
        await asyncio.to_thread(record.wait)
        assert not record.handshake_ok
        assert record.app_bytes == b""


async def test_client_without_certificate_sends_no_mqtt_byte_to_an_mtls_server(pki):
    with RecordingTlsServer(pki.server_cert, pki.server_key, ca=pki.ca_cert, require_client_cert=True) as srv:
        c = awsiot_rs.Client("localhost", port=srv.port, ca=pki.ca_cert, reconnect=None, password="S3NTINEL-PW", username="u")
        with pytest.raises(awsiot_rs.TlsError):
            await c.connect()
        await asyncio.to_thread(srv.wait_for_connections, 1)
        (record,) = srv.connections
        await asyncio.to_thread(record.wait)
        assert not record.handshake_ok
        assert record.app_bytes == b""


async def test_sni_is_the_endpoint_and_alpn_is_what_was_configured(pki):
    with RecordingTlsServer(
        pki.server_cert, pki.server_key, answer_connack=True, alpn_protocols=["x-amzn-mqtt-ca", "mqtt"]
    ) as srv:
        c = mtls(srv.port, pki, alpn=["x-amzn-mqtt-ca"])
        await c.connect()
        await c.disconnect()
        await asyncio.to_thread(srv.wait_for_connections, 1)
        record = srv.connections[0]
        await asyncio.to_thread(record.wait)
        assert record.handshake_ok
        assert record.sni == "localhost"
        assert record.offered_alpn == ["x-amzn-mqtt-ca"]
        assert record.alpn == "x-amzn-mqtt-ca"
        assert record.app_bytes[:1] == b"\x10", "the first application bytes are the MQTT CONNECT"


async def test_no_alpn_is_offered_on_8883_style_ports(pki):
    with RecordingTlsServer(pki.server_cert, pki.server_key, answer_connack=True) as srv:
        c = mtls(srv.port, pki)
        await c.connect()
        await c.disconnect()
        await asyncio.to_thread(srv.wait_for_connections, 1)
        record = srv.connections[0]
        await asyncio.to_thread(record.wait)
        assert record.offered_alpn in (None, [])


def test_there_is_no_option_to_skip_verification():
    import inspect

    params = inspect.signature(awsiot_rs.Client).parameters
    assert not any("verify" in p or "insecure" in p for p in params)


async def test_a_server_from_an_untrusted_ca_is_unknown_issuer(broker, pki):
    with pytest.raises(awsiot_rs.TlsError, match="UnknownIssuer"):
        await mtls(broker.mtls_port, pki, ca=pki.other_ca_cert).connect()
