"""Self-checks for the test-support fixtures, independent of ``awsiot_rs``.

These use only the standard library (``socket`` + ``ssl``) and the test suite's
MQTT 3.1.1 codec (:mod:`support.packets`) to prove that the PKI, the mosquitto broker
listeners and the recording TLS server really behave as the rest of the
test-suite assumes. This module must never import ``awsiot_rs``.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import signal
import socket
import ssl
import stat
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from support import packets as P
from support.certs import CLIENT_KEY_PASSWORD, GARBAGE_PEM, Pki, make_pki, write_pkcs12
from support.mosquitto import HOST, Mosquitto
from support.tls_server import CONNACK_ACCEPTED, RecordingTlsServer, parse_client_hello

TIMEOUT = 5.0

# --------------------------------------------------------------------------
# MQTT over blocking sockets (the codec is support.packets)
# --------------------------------------------------------------------------

MQTT_DISCONNECT = P.disconnect()


def mqtt_connect(client_id: str, *, clean_session: bool = True) -> bytes:
    """A CONNECT with keep-alive 30 s."""
    return P.connect(client_id, keep_alive=30, clean_session=clean_session)


def connect_and_get_connack(sock: socket.socket, client_id: str, *, clean_session: bool = True) -> bytes:
    """Send CONNECT, return the full CONNACK packet bytes."""
    sock.sendall(mqtt_connect(client_id, clean_session=clean_session))
    return P.recv(sock).raw


def tcp(port: int) -> socket.socket:
    """Plain TCP connection to 127.0.0.1:port."""
    sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
    sock.settimeout(TIMEOUT)
    return sock


def client_context(
    pki: Pki,
    *,
    cafile: pathlib.Path | None = None,
    cert: pathlib.Path | None = None,
    key: pathlib.Path | None = None,
) -> ssl.SSLContext:
    """Verifying client context trusting ``cafile`` (default: the test CA)."""
    ctx = ssl.create_default_context(cafile=str(cafile or pki.ca_cert))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def tls(port: int, ctx: ssl.SSLContext, server_hostname: str | None = "localhost") -> ssl.SSLSocket:
    """TLS connection (handshake done) to 127.0.0.1:port."""
    return ctx.wrap_socket(tcp(port), server_hostname=server_hostname)


def expect_rejected_after_connect(sock: ssl.SSLSocket) -> None:
    """Assert the peer never answers a CONNECT with a CONNACK.

    With TLS 1.3 the client finishes its handshake before the server checks
    the client certificate, so the refusal shows up on the first read.
    """
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        sock.sendall(mqtt_connect("refused"))
        P.recv(sock)


# --------------------------------------------------------------------------
# PKI
# --------------------------------------------------------------------------


def _cert(path: pathlib.Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _key(path: pathlib.Path, password: str | None = None):  # type: ignore[no-untyped-def]
    return serialization.load_pem_private_key(
        path.read_bytes(), password=password.encode() if password else None
    )


def _pub_der(obj) -> bytes:  # type: ignore[no-untyped-def]
    return obj.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_pki_formats_and_permissions(pki: Pki) -> None:
    heads = {
        pki.client_key: b"-----BEGIN RSA PRIVATE KEY-----",
        pki.other_key: b"-----BEGIN RSA PRIVATE KEY-----",
        pki.client_key_pkcs8: b"-----BEGIN PRIVATE KEY-----",
        pki.client_key_encrypted: b"-----BEGIN ENCRYPTED PRIVATE KEY-----",
        pki.client_ec_key: b"-----BEGIN EC PRIVATE KEY-----",
        pki.ca_cert: b"-----BEGIN CERTIFICATE-----",
    }
    for path, head in heads.items():
        assert path.read_bytes().startswith(head), path
    assert pki.garbage_pem.read_text() == GARBAGE_PEM
    key_fields = [f for f in Pki.__dataclass_fields__ if f.endswith("_key") or "_key_" in f]
    assert len(key_fields) == 13
    for name in key_fields:
        mode = stat.S_IMODE(os.stat(getattr(pki, name)).st_mode)
        assert mode == 0o600, (name, oct(mode))


def test_pki_key_relationships(pki: Pki) -> None:
    client_pub = _pub_der(_cert(pki.client_cert))
    assert _pub_der(_key(pki.client_key)) == client_pub
    assert _pub_der(_key(pki.client_key_pkcs8)) == client_pub
    assert _pub_der(_key(pki.client_key_encrypted, CLIENT_KEY_PASSWORD)) == client_pub
    with pytest.raises(TypeError):
        _key(pki.client_key_encrypted)  # password required
    assert _pub_der(_key(pki.other_key)) != client_pub
    assert _pub_der(_key(pki.client_ec_key)) == _pub_der(_cert(pki.client_ec_cert))
    assert _cert(pki.client_ec_cert).public_key().curve.name == "secp256r1"  # type: ignore[union-attr]


def test_pki_chains_and_validity(pki: Pki) -> None:
    ca, fake_ca, other_ca = _cert(pki.ca_cert), _cert(pki.fake_ca_cert), _cert(pki.other_ca_cert)
    now = datetime.datetime.now(datetime.timezone.utc)

    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "awsiot_rs test CA"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf in (pki.server_cert, pki.wrong_host_cert, pki.expired_server_cert, pki.client_cert, pki.client_ec_cert):
        _cert(leaf).verify_directly_issued_by(ca)
    _cert(pki.other_client_cert).verify_directly_issued_by(other_ca)
    _cert(pki.fake_server_cert).verify_directly_issued_by(fake_ca)

    # The fake root impersonates the real one by name only.
    assert fake_ca.subject == ca.subject
    assert _pub_der(fake_ca) != _pub_der(ca)
    with pytest.raises(Exception):
        _cert(pki.fake_server_cert).verify_directly_issued_by(ca)

    server = _cert(pki.server_cert)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    client = _cert(pki.client_cert)
    assert ExtendedKeyUsageOID.CLIENT_AUTH in client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "test-device"

    wrong = _cert(pki.wrong_host_cert)
    assert wrong.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == ["evil.example"]

    expired = _cert(pki.expired_server_cert)
    assert expired.not_valid_after_utc < now - datetime.timedelta(days=9)
    assert server.not_valid_before_utc < now < server.not_valid_after_utc


@pytest.mark.parametrize("password", [None, "p12-password"])
def test_write_pkcs12(pki: Pki, tmp_path: pathlib.Path, password: str | None) -> None:
    path = write_pkcs12(tmp_path, pki, password)
    key, cert, cas = pkcs12.load_key_and_certificates(
        path.read_bytes(), password.encode() if password else None
    )
    assert cert is not None and cert == _cert(pki.client_cert)
    assert key is not None and _pub_der(key) == _pub_der(cert)
    assert cas == [_cert(pki.ca_cert)]
    if password:
        with pytest.raises(ValueError):
            pkcs12.load_key_and_certificates(path.read_bytes(), b"wrong")


def test_make_pki_is_fresh(tmp_path: pathlib.Path, pki: Pki) -> None:
    other = make_pki(tmp_path)
    assert other.ca_cert.read_bytes() != pki.ca_cert.read_bytes()


# --------------------------------------------------------------------------
# Mosquitto broker
# --------------------------------------------------------------------------


@pytest.mark.broker
def test_broker_ports_distinct_and_running(broker: Mosquitto) -> None:
    ports = list(broker.ports.values())
    assert len(ports) == 6 and len(set(ports)) == 6
    assert all(isinstance(p, int) and 1024 < p < 65536 for p in ports)
    assert broker.running
    assert "mosquitto version 2." in broker.log_text()


@pytest.mark.broker
def test_plain_connect_connack(broker: Mosquitto) -> None:
    with tcp(broker.port) as sock:
        assert connect_and_get_connack(sock, "selfcheck-plain") == b"\x20\x02\x00\x00"
        sock.sendall(MQTT_DISCONNECT)


@pytest.mark.broker
def test_plain_publish_subscribe_roundtrip(broker: Mosquitto, unique_topic: str) -> None:
    assert unique_topic.startswith("test/") and len(unique_topic) > 20
    with tcp(broker.port) as sub, tcp(broker.port) as pub:
        connect_and_get_connack(sub, "selfcheck-sub")
        sub.sendall(P.subscribe(7, unique_topic, 1))
        assert P.recv(sub).raw == b"\x90\x03\x00\x07\x01"  # SUBACK, granted QoS 1
        connect_and_get_connack(pub, "selfcheck-pub")
        pub.sendall(P.publish(unique_topic, b"hello", qos=0))
        got = P.recv(sub)
        assert got.type == P.PUBLISH
        assert (got.topic, got.payload) == (unique_topic, b"hello")


@pytest.mark.broker
@pytest.mark.security
def test_mtls_connect_connack(broker: Mosquitto, pki: Pki) -> None:
    ctx = client_context(pki, cert=pki.client_cert, key=pki.client_key)
    with tls(broker.mtls_port, ctx) as sock:
        assert connect_and_get_connack(sock, "selfcheck-mtls") == b"\x20\x02\x00\x00"
        sock.sendall(MQTT_DISCONNECT)


@pytest.mark.broker
@pytest.mark.security
def test_mtls_connect_by_ip_and_tls12(broker: Mosquitto, pki: Pki) -> None:
    ctx = client_context(pki, cert=pki.client_ec_cert, key=pki.client_ec_key)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with tls(broker.mtls_port, ctx, server_hostname="127.0.0.1") as sock:
        assert sock.version() == "TLSv1.2"
        assert connect_and_get_connack(sock, "selfcheck-mtls12") == b"\x20\x02\x00\x00"


@pytest.mark.broker
@pytest.mark.security
def test_mtls_refuses_without_client_cert(broker: Mosquitto, pki: Pki) -> None:
    ctx = client_context(pki)
    try:
        sock = tls(broker.mtls_port, ctx)
    except (ssl.SSLError, ConnectionError):
        return  # TLS 1.2: refused during the handshake
    with sock:
        expect_rejected_after_connect(sock)


@pytest.mark.broker
@pytest.mark.security
def test_mtls_refuses_client_from_other_ca(broker: Mosquitto, pki: Pki) -> None:
    ctx = client_context(pki, cert=pki.other_client_cert, key=pki.other_client_key)
    try:
        sock = tls(broker.mtls_port, ctx)
    except (ssl.SSLError, ConnectionError):
        return
    with sock:
        expect_rejected_after_connect(sock)


@pytest.mark.broker
@pytest.mark.security
def test_tls_port_needs_no_client_cert(broker: Mosquitto, pki: Pki) -> None:
    with tls(broker.tls_port, client_context(pki)) as sock:
        assert connect_and_get_connack(sock, "selfcheck-tls") == b"\x20\x02\x00\x00"


@pytest.mark.broker
@pytest.mark.security
@pytest.mark.parametrize(
    ("attr", "verify_code"),
    [
        ("wrong_host_port", 62),  # X509_V_ERR_HOSTNAME_MISMATCH
        ("expired_port", 10),  # X509_V_ERR_CERT_HAS_EXPIRED
        ("fake_ca_port", 20),  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    ],
)
def test_bad_server_listeners_fail_verification(
    broker: Mosquitto, pki: Pki, attr: str, verify_code: int
) -> None:
    ctx = client_context(pki, cert=pki.client_cert, key=pki.client_key)
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        tls(getattr(broker, attr), ctx)
    assert info.value.verify_code == verify_code, info.value


@pytest.mark.broker
@pytest.mark.security
def test_fake_ca_listener_serves_fake_chain(broker: Mosquitto, pki: Pki) -> None:
    """Trusting the fake root instead proves the listener is otherwise sound."""
    ctx = client_context(pki, cafile=pki.fake_ca_cert, cert=pki.client_cert, key=pki.client_key)
    with tls(broker.fake_ca_port, ctx) as sock:
        assert connect_and_get_connack(sock, "selfcheck-fake") == b"\x20\x02\x00\x00"


@pytest.mark.broker
@pytest.mark.reliability
@pytest.mark.slow
def test_private_broker_persistence_restart_and_kill(pki: Pki, tmp_path: pathlib.Path) -> None:
    topic = f"test/persist/{os.getpid()}"
    with Mosquitto(pki, tmp_path, persistence=True) as broker:
        ports_before = broker.ports
        # Persistent session with a QoS 1 subscription, then go offline.
        with tcp(broker.port) as sock:
            assert connect_and_get_connack(sock, "persist", clean_session=False)[3] == 0
            sock.sendall(P.subscribe(1, topic, 1))
            assert P.recv(sock).raw[0] == 0x90  # SUBACK
            sock.sendall(MQTT_DISCONNECT)
        # Queue a QoS 1 message for the offline session.
        with tcp(broker.port) as pub:
            connect_and_get_connack(pub, "persist-pub")
            pub.sendall(P.publish(topic, b"queued", qos=1, pkid=9))
            assert P.recv(pub).raw == b"\x40\x02\x00\x09"  # PUBACK

        broker.restart()
        assert broker.ports == ports_before
        assert broker.log_text().count("mosquitto version 2.0") >= 2
        assert (tmp_path / "mosquitto.db").exists()

        with tcp(broker.port) as sock:
            connack = connect_and_get_connack(sock, "persist", clean_session=False)
            assert connack == b"\x20\x02\x01\x00"  # session present after restart
            got = P.recv(sock)
            assert (got.topic, got.payload, got.qos) == (topic, b"queued", 1)

        # A crash (SIGKILL) is also survivable and start() works afterwards.
        pid = broker.pid
        assert broker.stop(signal.SIGKILL) == -signal.SIGKILL
        assert not broker.running
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((HOST, broker.port), timeout=1).close()
        broker.start()
        assert broker.pid != pid
        with tcp(broker.port) as sock:
            assert connect_and_get_connack(sock, "after-kill") == b"\x20\x02\x00\x00"
    assert not broker.running


# --------------------------------------------------------------------------
# Recording TLS server
# --------------------------------------------------------------------------


@pytest.mark.security
def test_recording_server_records_sni_alpn_and_app_bytes(pki: Pki) -> None:
    with RecordingTlsServer(
        pki.server_cert, pki.server_key, alpn_protocols=["x-amzn-mqtt-ca"], answer_connack=True
    ) as server:
        ctx = client_context(pki)
        ctx.check_hostname = False  # the SNI below is not in the cert
        ctx.set_alpn_protocols(["x-amzn-mqtt-ca", "mqtt"])
        connect = mqtt_connect("recorded-device")
        with tls(server.port, ctx, server_hostname="abc123-ats.iot.eu-west-1.amazonaws.com") as sock:
            assert sock.selected_alpn_protocol() == "x-amzn-mqtt-ca"
            sock.sendall(connect)
            assert P.recv(sock).raw == CONNACK_ACCEPTED
            sock.sendall(MQTT_DISCONNECT)
        (record,) = server.wait_for_connections(1)
    assert record.handshake_ok and record.handshake_error is None
    assert record.sni == "abc123-ats.iot.eu-west-1.amazonaws.com"
    assert record.offered_sni == record.sni
    assert record.alpn == "x-amzn-mqtt-ca"
    assert record.offered_alpn == ["x-amzn-mqtt-ca", "mqtt"]
    assert record.app_bytes == connect + MQTT_DISCONNECT
    assert record.connack_sent
    assert record.client_cert_der is None


@pytest.mark.security
def test_recording_server_without_alpn_or_sni(pki: Pki) -> None:
    with RecordingTlsServer(pki.server_cert, pki.server_key) as server:
        ctx = client_context(pki)
        ctx.check_hostname = False
        ctx.set_alpn_protocols(["mqtt"])
        with tls(server.port, ctx, server_hostname=None) as sock:
            sock.sendall(b"\x10abc")
            # answer_connack is off: nothing comes back before we close.
            sock.settimeout(0.3)
            with pytest.raises(socket.timeout):
                sock.recv(1)
        (record,) = server.wait_for_connections(1)
    assert record.handshake_ok
    assert record.sni is None and record.offered_sni is None
    assert record.alpn is None
    assert record.offered_alpn == ["mqtt"]
    assert record.app_bytes == b"\x10abc"
    assert not record.connack_sent


@pytest.mark.security
def test_recording_server_records_failed_handshake(pki: Pki) -> None:
    """A client that rejects the server cert leaves a failed record behind."""
    with RecordingTlsServer(pki.server_cert, pki.server_key) as server:
        ctx = client_context(pki, cafile=pki.other_ca_cert)
        with pytest.raises(ssl.SSLCertVerificationError):
            tls(server.port, ctx)
        (record,) = server.wait_for_connections(1)
    assert not record.handshake_ok
    assert record.handshake_error and "SSL" in record.handshake_error
    assert record.sni == "localhost"
    assert record.app_bytes == b""


@pytest.mark.security
def test_recording_server_client_cert(pki: Pki) -> None:
    with RecordingTlsServer(
        pki.server_cert, pki.server_key, ca=pki.ca_cert, require_client_cert=True
    ) as server:
        # Without a client certificate the server-side handshake fails.
        try:
            with tls(server.port, client_context(pki)) as sock:
                sock.sendall(b"\x10\x00")
                sock.recv(1)
        except (ssl.SSLError, ConnectionError, OSError):
            pass
        ctx = client_context(pki, cert=pki.client_cert, key=pki.client_key)
        with tls(server.port, ctx) as sock:
            sock.sendall(b"\x10\x00")
        first, second = server.wait_for_connections(2)
    assert not first.handshake_ok and first.handshake_error
    assert first.client_cert_der is None
    assert second.handshake_ok
    assert second.client_cert_der == _cert(pki.client_cert).public_bytes(serialization.Encoding.DER)
    assert second.app_bytes == b"\x10\x00"


def test_recording_server_close_is_quick(pki: Pki) -> None:
    server = RecordingTlsServer(pki.server_cert, pki.server_key)
    idle = tcp(server.port)  # never sends a ClientHello
    try:
        time.sleep(0.2)
        start = time.monotonic()
        server.close()
        assert time.monotonic() - start < 3.0
    finally:
        idle.close()
    assert len(server.connections) == 1
    assert server.connections[0].wait(3.0)
    assert not server.connections[0].handshake_ok
    with pytest.raises(OSError):
        socket.create_connection((HOST, server.port), timeout=1).close()


def test_parse_client_hello_rejects_non_tls() -> None:
    with pytest.raises(ValueError):
        parse_client_hello(mqtt_connect("x"))
