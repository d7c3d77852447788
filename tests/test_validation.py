"""Bad input raises the documented exception before any network I/O."""

from __future__ import annotations

import pytest

import awsiot_rs
from support.fake_broker import FakeBroker


def client(**kw: object) -> awsiot_rs.Client:
    opts: dict[str, object] = {"tls": False, "port": 1883}
    opts.update(kw)
    return awsiot_rs.Client("127.0.0.1", **opts)  # type: ignore[arg-type]


def test_exception_hierarchy_subclasses_builtins():
    assert issubclass(awsiot_rs.ConfigError, ValueError)
    assert issubclass(awsiot_rs.TopicError, awsiot_rs.ConfigError)
    assert issubclass(awsiot_rs.PayloadTooLarge, awsiot_rs.ConfigError)
    assert issubclass(awsiot_rs.TlsError, awsiot_rs.ConnectError)
    assert issubclass(awsiot_rs.AuthError, ConnectionError)
    assert issubclass(awsiot_rs.DisconnectedError, ConnectionError)
    assert issubclass(awsiot_rs.OperationTimeout, TimeoutError)
    for name in ("SubscribeError", "QueueFullError", "ClientClosedError", "ServiceError"):
        assert issubclass(getattr(awsiot_rs, name), awsiot_rs.AwsIotError)
    assert issubclass(awsiot_rs.ShadowRejected, awsiot_rs.ServiceError)


@pytest.mark.parametrize(
    ("kwargs", "exc", "text"),
    [
        ({"client_id": "x" * 129}, awsiot_rs.ConfigError, "128"),
        ({"keep_alive": 29, "limits": "aws"}, awsiot_rs.ConfigError, "30 to 1200"),
        ({"keep_alive": 1201}, awsiot_rs.ConfigError, "30 to 1200"),
        ({"keep_alive": 1.5, "limits": "mqtt"}, awsiot_rs.ConfigError, "whole number"),
        ({"keep_alive": -1}, awsiot_rs.ConfigError, ">= 0"),
        ({"clean_session": False}, awsiot_rs.ConfigError, "explicit client_id"),
        ({"port": 0}, awsiot_rs.ConfigError, "port"),
        ({"port": 70000}, awsiot_rs.ConfigError, "port"),
        ({"limits": "strict"}, awsiot_rs.ConfigError, "limits"),
        ({"will": awsiot_rs.Will("a/#", b"")}, awsiot_rs.TopicError, "wildcard"),
        ({"will": awsiot_rs.Will("a", b"", qos=2)}, awsiot_rs.ConfigError, "QoS 2"),
        ({"operation_timeout": 0}, awsiot_rs.ConfigError, "operation_timeout"),
        ({"reconnect": awsiot_rs.Reconnect(min_delay=5, max_delay=1)}, awsiot_rs.ConfigError, "max_delay"),
        ({"inflight": 0}, awsiot_rs.ConfigError, "inflight"),
        ({"inflight": 101, "limits": "aws"}, awsiot_rs.ConfigError, "inflight"),
        ({"log_file": "/nonexistent-dir/x/traffic.log"}, awsiot_rs.ConfigError, "log_file"),
    ],
)
def test_bad_configuration_raises_at_construction(kwargs, exc, text):
    with pytest.raises(exc, match=text):
        client(**kwargs)


@pytest.mark.parametrize("endpoint", ["mqtts://host", "host/mqtt", "host:8883", "", "bad host"])
def test_endpoint_must_be_a_bare_host_name(endpoint):
    with pytest.raises(awsiot_rs.ConfigError, match="endpoint"):
        awsiot_rs.Client(endpoint, tls=False)


def test_tls_false_with_auth_is_refused(pki):
    auth = awsiot_rs.MtlsAuth(pki.client_cert, pki.client_key)
    with pytest.raises(awsiot_rs.ConfigError, match="tls=False"):
        awsiot_rs.Client("h", tls=False, auth=auth)


def test_certificate_files_are_checked_at_construction(pki, tmp_path):
    with pytest.raises(awsiot_rs.ConfigError, match="does not exist"):
        awsiot_rs.MtlsAuth(tmp_path / "missing.crt", pki.client_key)
    with pytest.raises(awsiot_rs.ConfigError, match="does not exist"):
        awsiot_rs.MtlsAuth(pki.client_cert, tmp_path / "missing.key")
    with pytest.raises(awsiot_rs.ConfigError, match="not valid PEM|no PEM certificate"):
        awsiot_rs.MtlsAuth(pki.garbage_pem, pki.client_key)
    with pytest.raises(awsiot_rs.ConfigError, match="does not match"):
        awsiot_rs.MtlsAuth(pki.client_cert, pki.other_key)
    with pytest.raises(awsiot_rs.ConfigError, match="encrypted"):
        awsiot_rs.MtlsAuth(pki.client_cert, pki.client_key_encrypted)
    with pytest.raises(awsiot_rs.ConfigError, match="private key"):
        awsiot_rs.MtlsAuth(pki.client_cert, pki.client_cert)
    with pytest.raises(awsiot_rs.ConfigError, match="CA file"):
        awsiot_rs.Client("localhost", ca=pki.garbage_pem)
    with pytest.raises(awsiot_rs.ConfigError, match="does not exist"):
        awsiot_rs.Client("localhost", ca=tmp_path / "nope.pem")


def test_every_supported_key_format_loads(pki):
    for key in (pki.client_key, pki.client_key_pkcs8):
        assert "key=" in repr(awsiot_rs.MtlsAuth(pki.client_cert, key))
    awsiot_rs.MtlsAuth(pki.client_ec_cert, pki.client_ec_key)
    awsiot_rs.MtlsAuth.from_pem(pki.client_cert.read_bytes(), pki.client_key.read_text())


@pytest.mark.parametrize(
    ("topic", "exc", "text"),
    [
        ("a/+/b", awsiot_rs.TopicError, "wildcard"),
        ("a/#", awsiot_rs.TopicError, "wildcard"),
        ("", awsiot_rs.TopicError, "empty"),
        ("t" * 257, awsiot_rs.TopicError, "256 bytes"),
        ("1/2/3/4/5/6/7/8/9", awsiot_rs.TopicError, "8 slashes"),
    ],
)
async def test_bad_publish_input_raises_before_anything_is_sent(topic, exc, text):
    async with FakeBroker() as fb:
        c = client(port=fb.port, limits="aws", keep_alive=30)
        async with c:
            with pytest.raises(exc, match=text):
                await c.publish(topic, b"x", qos=1)
            with pytest.raises(exc, match=text):
                c.publish_nowait(topic, b"x")
            with pytest.raises(awsiot_rs.ConfigError, match="QoS 2"):
                await c.publish("ok", b"x", qos=2)
            with pytest.raises(awsiot_rs.PayloadTooLarge, match="131073 bytes"):
                await c.publish("ok", b"x" * (128 * 1024 + 1), qos=1)
            with pytest.raises(awsiot_rs.ConfigError, match="QoS 2"):
                await c.subscribe("ok", qos=2)
            with pytest.raises(awsiot_rs.TopicError):
                await c.subscribe("a/#/b")
            with pytest.raises(awsiot_rs.TopicError, match="cannot be subscribed"):
                await c.subscribe("$aws/rules/r/x")
            with pytest.raises(awsiot_rs.ConfigError, match="at most 8"):
                await c.subscribe([f"f{i}" for i in range(9)])
        # DISCONNECT left the client before disconnect() returned; the broker (on this same
        # loop) reads it on its next turn.
        await fb.wait_for(lambda: len(fb.received) >= 2, timeout=5)
        assert [p.name for p in fb.received] == ["CONNECT", "DISCONNECT"]


async def test_validation_applies_before_connect_too():
    c = client()
    with pytest.raises(awsiot_rs.TopicError):
        await c.publish("a/+", b"x", qos=1)
    with pytest.raises(awsiot_rs.ConfigError, match="QoS 2"):
        await c.subscribe("a", qos=2)


def test_topic_helpers():
    t = awsiot_rs.topics
    assert t.matches("Sensor/+/room1", "Sensor/temp/room1")
    assert t.matches("Sensor/#", "Sensor")
    assert not t.matches("+/x", "$aws/x")
    t.validate_topic("$aws/rules/rule/" + "/".join("abcdefgh"))
    with pytest.raises(awsiot_rs.TopicError):
        t.validate_topic("a" * 300)
    t.validate_topic("a" * 300, limits="mqtt")
    with pytest.raises(awsiot_rs.TopicError):
        t.validate_filter("a+")
    with pytest.raises(awsiot_rs.ConfigError):
        t.validate_filter("a", limits="other")


def test_message_is_immutable_and_helpful():
    m = awsiot_rs.Message("a/b", b'{"k": 1}', qos=1)
    assert m.json() == {"k": 1} and m.text() == '{"k": 1}' and m.matches("a/+")
    with pytest.raises(AttributeError):
        m.topic = "x"  # type: ignore[misc]
    assert repr(m) == "Message(topic='a/b', payload=<8 bytes>, qos=1, retain=False, dup=False)"
    assert m == awsiot_rs.Message("a/b", b'{"k": 1}', qos=1)
