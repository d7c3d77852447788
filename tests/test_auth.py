"""Every way into AWS IoT: mTLS on 443 with ALPN, PKCS#12 and encrypted keys, custom
authorizers over TCP and WebSocket, SigV4 over WebSocket with refreshing credentials."""

from __future__ import annotations

import asyncio

import pytest

import awsiot_rs
from support import packets as P
from support.certs import CLIENT_KEY_PASSWORD, write_pkcs12
from support.clients import make_client
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


# --- ALPN derivation, and real connections through the TLS and WebSocket fronts ---------

from awsiot_rs.client import derive_alpn  # noqa: E402
from support.fronts import TlsFront, WsFront  # noqa: E402


def test_alpn_follows_auth_and_port(pki):
    mtls = awsiot_rs.MtlsAuth(pki.client_cert, pki.client_key)
    assert derive_alpn(mtls, 443) == ["x-amzn-mqtt-ca"]
    assert derive_alpn(mtls, 8883) == []
    assert derive_alpn(awsiot_rs.CustomAuth(authorizer_name="a"), 443) == ["mqtt"]
    assert derive_alpn(awsiot_rs.CustomAuth(authorizer_name="a", websockets=True), 443) == []
    assert derive_alpn(awsiot_rs.SigV4Auth("us-east-1", access_key="a", secret_key="b"), 443) == []


async def test_mtls_through_a_tls_front_offers_alpn_and_sni_and_reaches_the_broker(broker, pki, unique_topic):
    async with TlsFront(pki.server_cert, pki.server_key, broker.port, require_alpn="x-amzn-mqtt-ca") as front:
        auth = awsiot_rs.MtlsAuth(pki.client_cert, pki.client_key)
        async with awsiot_rs.Client("localhost", port=front.port, ca=pki.ca_cert, auth=auth, alpn=["x-amzn-mqtt-ca"]) as c:
            sub = await c.subscribe(unique_topic)
            await c.publish(unique_topic, b"via front", qos=1)
            assert (await asyncio.wait_for(sub.__anext__(), 5)).payload == b"via front"
        (rec,) = await front.wait_for_connections(1)
        assert rec.sni == "localhost" and rec.offered_alpn == ["x-amzn-mqtt-ca"]
        assert rec.selected_alpn == "x-amzn-mqtt-ca"


async def test_custom_authorizer_over_tls_front_reaches_the_broker(broker, pki):
    auth = awsiot_rs.CustomAuth(authorizer_name="Auth", token_key_name="tok", token="S3NTINEL-TOK", signature="s+g/=")
    async with TlsFront(pki.server_cert, pki.server_key, broker.port, require_alpn="mqtt") as front:
        async with awsiot_rs.Client("localhost", port=front.port, ca=pki.ca_cert, auth=auth, alpn=["mqtt"]) as c:
            assert c.is_connected
        (rec,) = await front.wait_for_connections(1)
        await rec.wait_connect()
        assert rec.mqtt_connect.username == "?x-amz-customauthorizer-name=Auth&x-amz-customauthorizer-signature=s%2Bg%2F%3D&tok=S3NTINEL-TOK"


def ws_client(front: WsFront, pki, auth, **kw):  # type: ignore[no-untyped-def]
    reconnect = awsiot_rs.Reconnect(min_delay=0.1, max_delay=0.3, jitter=False)
    return make_client(front.port, pki, auth=auth, **{"reconnect": reconnect, **kw})


async def test_sigv4_websocket_with_static_keys_round_trips(broker, pki, unique_topic):
    creds = {"AKIDSTATIC": "S3NTINEL-SAK"}
    async with WsFront(broker.port, cert=pki.server_cert, key=pki.server_key, credentials=creds) as front:
        auth = awsiot_rs.SigV4Auth("us-east-1", access_key="AKIDSTATIC", secret_key="S3NTINEL-SAK", session_token="S3NTINEL-STS")
        async with ws_client(front, pki, auth) as c:
            sub = await c.subscribe(unique_topic)
            await c.publish(unique_topic, b"over wss", qos=1)
            assert (await asyncio.wait_for(sub.__anext__(), 5)).payload == b"over wss"
        attempt = front.attempts[0]
        assert (attempt.akid, attempt.verdict, attempt.token) == ("AKIDSTATIC", "ok", "S3NTINEL-STS")


async def test_rotating_credentials_are_fetched_for_every_connection(broker, pki):
    creds = {"AKIDONE": "secret-one"}
    keys = iter([("AKIDONE", "secret-one"), ("AKIDTWO", "secret-two"), ("AKIDTWO", "secret-two")])
    calls: list[str] = []

    async def provider() -> awsiot_rs.Credentials:
        akid, secret = next(keys)
        calls.append(akid)
        return awsiot_rs.Credentials(akid, secret, session_token="S3NTINEL-STS")

    connects: list[awsiot_rs.ConnectEvent] = []
    async with WsFront(broker.port, cert=pki.server_cert, key=pki.server_key, credentials=creds) as front:
        c = ws_client(front, pki, awsiot_rs.SigV4Auth("us-east-1", credentials=provider), on_connect=connects.append)
        async with c:
            creds["AKIDTWO"] = "secret-two"
            front.revoke("AKIDONE")
            await front.drop_all()
            for _ in range(100):
                if len(connects) == 2:
                    break
                await asyncio.sleep(0.05)
            assert connects[-1].reconnect
        verdicts = [(a.akid, a.verdict) for a in front.attempts]
        assert verdicts == [("AKIDONE", "ok"), ("AKIDTWO", "ok")], verdicts
        assert calls == ["AKIDONE", "AKIDTWO"]


async def test_wrong_keys_and_failing_providers_are_auth_errors(broker, pki, caplog):
    async with WsFront(broker.port, cert=pki.server_cert, key=pki.server_key, credentials={"AKIDGOOD": "good"}) as front:
        bad = awsiot_rs.SigV4Auth("us-east-1", access_key="AKIDGOOD", secret_key="S3NTINEL-SAK")
        with pytest.raises(awsiot_rs.AuthError, match="HTTP 403"):
            await ws_client(front, pki, bad, reconnect=None).connect()

        def broken() -> awsiot_rs.Credentials:
            raise RuntimeError("no credentials today")

        with pytest.raises(awsiot_rs.AuthError, match="no credentials today"):
            await ws_client(front, pki, awsiot_rs.SigV4Auth("us-east-1", credentials=broken), reconnect=None).connect()
        assert [a.verdict for a in front.attempts] == ["bad-signature"], "a failing provider sends nothing"
    assert not any("S3NTINEL" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("where", ["headers", "query", "username"])
async def test_custom_authorizer_over_websocket(broker, pki, where):
    seen: list[tuple[dict[str, str], dict[str, str]]] = []

    def authorize(headers: dict[str, str], query: dict[str, str]) -> bool:
        seen.append((headers, query))
        return True

    auth = awsiot_rs.CustomAuth(
        authorizer_name="Auth", token_key_name="tok", token="S3NTINEL-TOK", signature="sig/=",
        websockets=True, credentials_in=where, headers={"x-extra": "1"}, query={"q": "2"},
        username="user", password="S3NTINEL-PW",
    )
    async with WsFront(broker.port, cert=pki.server_cert, key=pki.server_key, custom_auth=authorize) as front:
        async with ws_client(front, pki, auth) as c:
            assert c.is_connected
        (rec,) = await front.wait_for_connections(1)
        await rec.wait_connect()
    headers, query = seen[0]
    assert headers.get("x-extra") == "1" and query.get("q") == "2"
    fields = {"x-amz-customauthorizer-name": "Auth", "x-amz-customauthorizer-signature": "sig/=", "tok": "S3NTINEL-TOK"}
    if where == "headers":
        assert all(headers.get(k) == v for k, v in fields.items())
        assert rec.mqtt_connect.username == "user"
    elif where == "query":
        assert all(query.get(k) == v for k, v in fields.items())
        assert rec.mqtt_connect.username == "user"
    else:
        assert rec.mqtt_connect.username.startswith("user?x-amz-customauthorizer-name=Auth&")
    assert rec.mqtt_connect.password == b"S3NTINEL-PW"


async def test_websocket_secrets_never_leak(broker, pki, caplog, tmp_path):
    import logging
    import traceback

    caplog.set_level(logging.DEBUG)
    log = tmp_path / "traffic.log"
    async with WsFront(broker.port, cert=pki.server_cert, key=pki.server_key, credentials={"AKIDX": "S3NTINEL-SAK"}) as front:
        auth = awsiot_rs.SigV4Auth("us-east-1", access_key="AKIDX", secret_key="S3NTINEL-SAK", session_token="S3NTINEL-STS")
        async with ws_client(front, pki, auth, log_file=log) as c:
            seen = [repr(c), repr(auth), str(c.stats())]
        front.revoke("AKIDX")
        with pytest.raises(awsiot_rs.AuthError) as err:
            await ws_client(front, pki, auth, reconnect=None).connect()
        seen.append("".join(traceback.format_exception(type(err.value), err.value, err.value.__traceback__)))
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("awsiot_rs")]
    assert ours, "the client logged at DEBUG"
    # (the test front's own websockets logger prints the request line: that is not the client)
    everything = seen + ours + [log.read_text()]
    for text in everything:
        for secret in ("S3NTINEL-SAK", "S3NTINEL-STS", "X-Amz-Signature="):
            assert secret not in text, (secret, text)
