"""Self-checks for tests/support/fronts.py (TlsFront, WsFront, SigV4 verification).

Uses only Python's ssl, websockets and botocore as clients: nothing from awsiot_rs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import ssl
from urllib.parse import quote

import pytest
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from support import packets as P
from support.fronts import TlsFront, WsFront, check_presigned, presign_url, verify_presigned

pytestmark = pytest.mark.broker

# ----------------------------------------------------------------- reference values

REF_AKID = "AKIDEXAMPLE"
REF_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
REF_HOST = "example-ats.iot.us-east-1.amazonaws.com"
REF_TOKEN = "FQoGZXIvYXdzE//+tok=en/with+chars=="
REF_SIGNATURE = "96a76a6e12819cf0b4ea3687683286a1807d768ec83de20171765997cff8803b"
REF_QUERY_SIGNED = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIDEXAMPLE%2F20240102%2Fus-east-1%2Fiotdevicegateway%2Faws4_request"
    "&X-Amz-Date=20240102T030405Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
)
REF_TOKEN_PARAM = "X-Amz-Security-Token=FQoGZXIvYXdzE%2F%2F%2Btok%3Den%2Fwith%2Bchars%3D%3D"
REF_URL = f"wss://{REF_HOST}/mqtt?{REF_QUERY_SIGNED}&X-Amz-Signature={REF_SIGNATURE}&{REF_TOKEN_PARAM}"
REF_PATH = REF_URL.removeprefix(f"wss://{REF_HOST}")
REF_NOW = dt.datetime(2024, 1, 2, 3, 10, 0, tzinfo=dt.timezone.utc)
REF_SECRETS = {REF_AKID: REF_SECRET}

CONNACK_OK = P.connack()


def mqtt_connect(client_id: str = "cid", user: str = "user", password: str = "pw") -> bytes:
    return P.connect(client_id, username=user, password=password)


def botocore_presign(host_header: str, akid: str, secret: str, region: str = "us-east-1") -> str:
    """Presigns at the current time with plain botocore (token-less creds)."""
    request = AWSRequest(method="GET", url=f"https://{host_header}/mqtt")
    SigV4QueryAuth(Credentials(akid, secret), "iotdevicegateway", region, expires=3600).add_auth(request)
    return request.url


# ------------------------------------------------------------ verify_presigned unit


def test_reference_url_is_ok() -> None:
    assert verify_presigned(REF_PATH, REF_HOST, "us-east-1", REF_SECRETS, REF_NOW) == ("ok", REF_AKID, REF_TOKEN)
    assert verify_presigned(REF_PATH, REF_HOST, "us-east-1", REF_SECRETS, None)[0] == "ok"


def test_presign_url_reproduces_reference() -> None:
    url = presign_url(
        REF_HOST, REF_AKID, REF_SECRET, token=REF_TOKEN, timestamp=dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    )
    assert url == REF_URL


def test_reference_tampered_signature() -> None:
    bad = REF_SIGNATURE[:-1] + ("0" if REF_SIGNATURE[-1] != "0" else "1")
    path = REF_PATH.replace(REF_SIGNATURE, bad)
    assert verify_presigned(path, REF_HOST, "us-east-1", REF_SECRETS, REF_NOW) == ("bad-signature", REF_AKID, REF_TOKEN)


def test_reference_token_before_signature() -> None:
    path = f"/mqtt?{REF_QUERY_SIGNED}&{REF_TOKEN_PARAM}&X-Amz-Signature={REF_SIGNATURE}"
    check = check_presigned(path, REF_HOST, "us-east-1", REF_SECRETS, REF_NOW)
    assert (check.verdict, check.akid, check.token) == ("bad-signature", REF_AKID, REF_TOKEN)
    assert "before" in (check.detail or "")


@pytest.mark.parametrize("move_token_after_signature", [False, True])
def test_token_signed_in_is_rejected(move_token_after_signature: bool) -> None:
    # botocore with a token in the credentials signs the token in (before the signature).
    request = AWSRequest(method="GET", url=f"https://{REF_HOST}/mqtt")
    signer = SigV4QueryAuth(Credentials(REF_AKID, REF_SECRET, REF_TOKEN), "iotdevicegateway", "us-east-1", 3600)
    signer.add_auth(request)
    query = request.url.split("?", 1)[1]
    assert "X-Amz-Security-Token" in query.split("&X-Amz-Signature=")[0]
    if move_token_after_signature:
        params = query.split("&")
        token_param = next(p for p in params if p.startswith("X-Amz-Security-Token="))
        params.remove(token_param)
        query = "&".join(params + [token_param])
    verdict, akid, token = verify_presigned(f"/mqtt?{query}", REF_HOST, "us-east-1", REF_SECRETS, None)
    assert (verdict, akid, token) == ("bad-signature", REF_AKID, REF_TOKEN)


def test_reference_other_verdicts() -> None:
    region = "us-east-1"
    assert verify_presigned(REF_PATH, REF_HOST, region, {"OTHER": "x"}, REF_NOW)[0] == "unknown-key"
    assert verify_presigned(REF_PATH, REF_HOST, region, {REF_AKID: "wrong"}, REF_NOW)[0] == "bad-signature"
    assert verify_presigned(REF_PATH, REF_HOST, region, REF_SECRETS, REF_NOW, revoked={REF_AKID})[0] == "revoked"
    late = dt.datetime(2024, 1, 2, 4, 4, 6, tzinfo=dt.timezone.utc)  # 3601 s after signing
    assert verify_presigned(REF_PATH, REF_HOST, region, REF_SECRETS, late) == ("expired", REF_AKID, REF_TOKEN)
    edge = dt.datetime(2024, 1, 2, 4, 4, 5, tzinfo=dt.timezone.utc)  # exactly at expiry: still valid
    assert verify_presigned(REF_PATH, REF_HOST, region, REF_SECRETS, edge)[0] == "ok"
    # The Host header is signed: the port (or another host) changes the signature.
    assert verify_presigned(REF_PATH, f"{REF_HOST}:443", region, REF_SECRETS, REF_NOW)[0] == "bad-signature"
    assert verify_presigned(REF_PATH, "localhost:8443", region, REF_SECRETS, REF_NOW)[0] == "bad-signature"
    # Wrong region / service in the scope, missing parameters, wrong SignedHeaders.
    assert verify_presigned(REF_PATH, REF_HOST, "eu-west-1", REF_SECRETS, REF_NOW)[0] == "malformed"
    no_sig = REF_PATH.replace(f"&X-Amz-Signature={REF_SIGNATURE}", "")
    assert verify_presigned(no_sig, REF_HOST, region, REF_SECRETS, REF_NOW)[0] == "malformed"
    hdrs = REF_PATH.replace("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=host%3Bx-amz-date")
    assert verify_presigned(hdrs, REF_HOST, region, REF_SECRETS, REF_NOW)[0] == "malformed"
    # A token-less URL is fine too.
    no_token = REF_PATH.replace(f"&{REF_TOKEN_PARAM}", "")
    assert verify_presigned(no_token, REF_HOST, region, REF_SECRETS, REF_NOW) == ("ok", REF_AKID, None)


def test_botocore_presigned_now_round_trip() -> None:
    url = botocore_presign("127.0.0.1:4321", "AKIDNOW", "s3cr3t/+=", region="eu-central-1")
    path = url.removeprefix("https://127.0.0.1:4321") + "&X-Amz-Security-Token=" + quote("a+b/c=", safe="")
    now = dt.datetime.now(dt.timezone.utc)
    assert verify_presigned(path, "127.0.0.1:4321", "eu-central-1", {"AKIDNOW": "s3cr3t/+="}, now) == (
        "ok",
        "AKIDNOW",
        "a+b/c=",
    )
    assert verify_presigned(path, "127.0.0.1:4322", "eu-central-1", {"AKIDNOW": "s3cr3t/+="}, now)[0] == "bad-signature"


# ------------------------------------------------------------------------ TlsFront


def client_context(pki, alpn: list[str] | None) -> ssl.SSLContext:  # type: ignore[no-untyped-def]
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


async def read_connack(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readexactly(4), 5)


async def close_stream(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await asyncio.wait_for(writer.wait_closed(), 5)


async def test_tls_front_records_and_relays(broker, pki) -> None:  # type: ignore[no-untyped-def]
    async with TlsFront(pki.server_cert, pki.server_key, broker.port) as front:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", front.port, ssl=client_context(pki, ["x-amzn-mqtt-ca"]), server_hostname="localhost"
        )
        try:
            assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "x-amzn-mqtt-ca"
            writer.write(mqtt_connect())
            assert await read_connack(reader) == CONNACK_OK  # from mosquitto, through the front
            [rec] = await front.wait_for_connections(1)
            assert rec.handshake_ok and rec.handshake_error is None
            assert rec.sni == "localhost" and rec.offered_sni == "localhost"
            assert rec.offered_alpn == ["x-amzn-mqtt-ca"]
            assert rec.selected_alpn == "x-amzn-mqtt-ca"
            connect = await rec.wait_connect()
            assert (connect.username, connect.password, connect.client_id) == ("user", b"pw", "cid")
            assert [p.name for p in rec.packets] == ["CONNECT"]
            assert rec.b2c_bytes == 4
            assert front.active == 1
        finally:
            await close_stream(writer)
        await rec.wait_closed()
        assert front.active == 0
    await front.close()  # idempotent


async def read_packet(reader: asyncio.StreamReader, buffer: bytearray) -> P.Packet:
    """Reads one whole MQTT packet from a byte stream."""
    while True:
        done = P.split(buffer)
        if done:
            assert len(done) == 1, "one packet at a time expected"
            return P.decode(done[0])
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        assert chunk, "unexpected EOF"
        buffer += chunk


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_tls_front_bulk_relay(broker, pki, unique_topic, version) -> None:  # type: ignore[no-untyped-def]
    """A 300 kB PUBLISH goes out and comes back through the front (many TLS records both ways)."""
    payload = bytes(range(256)) * 1200
    async with TlsFront(pki.server_cert, pki.server_key, broker.port) as front:
        ctx = client_context(pki, ["mqtt"])
        ctx.minimum_version = ctx.maximum_version = version
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port, ssl=ctx, server_hostname="localhost")
        buffer = bytearray()
        try:
            writer.write(mqtt_connect(client_id=f"bulk-{version.name}"))
            assert (await read_packet(reader, buffer)).name == "CONNACK"
            writer.write(P.subscribe(1, unique_topic))
            assert (await read_packet(reader, buffer)).name == "SUBACK"
            writer.write(P.publish(unique_topic, payload))
            echoed = await read_packet(reader, buffer)
            assert (echoed.name, echoed.topic, echoed.payload == payload) == ("PUBLISH", unique_topic, True)
        finally:
            await close_stream(writer)
        [rec] = await front.wait_for_connections(1)
        assert rec.tls_version == version.name.replace("_", ".") and rec.selected_alpn == "mqtt"
        assert [p.name for p in rec.packets] == ["CONNECT", "SUBSCRIBE", "PUBLISH"]
        assert rec.packets[2].payload == payload and rec.b2c_bytes > len(payload)


async def test_tls_front_require_alpn(broker, pki) -> None:  # type: ignore[no-untyped-def]
    async with TlsFront(pki.server_cert, pki.server_key, broker.port, require_alpn="mqtt") as front:
        try:
            _, stray = await asyncio.open_connection(
                "127.0.0.1", front.port, ssl=client_context(pki, ["x-amzn-mqtt-ca"]), server_hostname="localhost"
            )
        except ssl.SSLError as exc:
            assert re.search(r"(?i)no.?application.?protocol", str(exc)), exc
        else:
            await close_stream(stray)
            pytest.fail("the handshake succeeded without the required ALPN")
        [refused] = await front.wait_for_connections(1)
        await refused.wait_closed()
        assert not refused.handshake_ok
        assert refused.offered_alpn == ["x-amzn-mqtt-ca"]
        assert "mqtt" in (refused.handshake_error or "")
        assert refused.mqtt_connect is None and refused.c2b_bytes == 0

        # Offering mqtt (as well) passes, and the server picks it.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", front.port, ssl=client_context(pki, ["mqtt", "x-amzn-mqtt-ca"]), server_hostname="localhost"
        )
        try:
            writer.write(mqtt_connect(client_id="alpn-ok"))
            assert await read_connack(reader) == CONNACK_OK
        finally:
            await close_stream(writer)
        _, accepted = await front.wait_for_connections(2)
        assert accepted.handshake_ok and accepted.selected_alpn == "x-amzn-mqtt-ca"
        assert accepted.offered_alpn == ["mqtt", "x-amzn-mqtt-ca"]
        assert accepted.mqtt_connect is not None and accepted.mqtt_connect.client_id == "alpn-ok"


async def test_tls_front_drop_all_and_reconnect(broker, pki) -> None:  # type: ignore[no-untyped-def]
    async with TlsFront(pki.server_cert, pki.server_key, broker.port, alpn_protocols=["mqtt"]) as front:
        ctx = client_context(pki, None)
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port, ssl=ctx, server_hostname="localhost")
        try:
            writer.write(mqtt_connect(client_id="drop-me"))
            assert await read_connack(reader) == CONNACK_OK
            assert await front.drop_all() == 1
            assert await asyncio.wait_for(reader.read(), 5) == b""  # clean close_notify + FIN
        finally:
            await close_stream(writer)
        [first] = await front.wait_for_connections(1)
        assert first.closed and first.offered_alpn == [] and first.selected_alpn is None

        reader, writer = await asyncio.open_connection("127.0.0.1", front.port, ssl=ctx, server_hostname="localhost")
        try:
            writer.write(mqtt_connect(client_id="drop-me"))
            assert await read_connack(reader) == CONNACK_OK
            assert await front.drop_all(abort=True) == 1
            with contextlib.suppress(OSError, ssl.SSLError):
                assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            await close_stream(writer)
        _, second = await front.wait_for_connections(2)
        assert second.closed and second.mqtt_connect is not None
        assert front.active == 0


async def test_tls_front_client_certificate(broker, pki) -> None:  # type: ignore[no-untyped-def]
    async with TlsFront(
        pki.server_cert, pki.server_key, broker.port, ca=pki.ca_cert, require_client_cert=True
    ) as front:
        ctx = client_context(pki, ["x-amzn-mqtt-ca"])
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port, ssl=ctx, server_hostname="localhost")
        try:
            writer.write(mqtt_connect(client_id="mtls"))
            assert await read_connack(reader) == CONNACK_OK
        finally:
            await close_stream(writer)
        [rec] = await front.wait_for_connections(1)
        assert rec.handshake_ok and rec.client_cert_der
        subject = dict(item[0] for item in rec.client_cert["subject"])  # type: ignore[index]
        assert subject["commonName"] == "test-device"

        # No client certificate: the server refuses (TLS 1.3 reports it after the client's Finished).
        bare = client_context(pki, ["x-amzn-mqtt-ca"])
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", front.port, ssl=bare, server_hostname="localhost"
            )
            try:
                writer.write(mqtt_connect(client_id="nocert"))
                await read_connack(reader)
            finally:
                await close_stream(writer)
        _, refused = await front.wait_for_connections(2)
        await refused.wait_closed()
        assert not refused.handshake_ok and refused.handshake_error
        assert refused.mqtt_connect is None


# ------------------------------------------------------------------------- WsFront


async def ws_exchange_connect(url: str, *, client_id: str, ssl_ctx: ssl.SSLContext | None = None, **kw) -> str:  # type: ignore[no-untyped-def]
    """Opens the WebSocket, sends CONNECT split across two frames, returns the subprotocol."""
    async with ws_connect(url, subprotocols=["mqtt"], ssl=ssl_ctx, compression=None, open_timeout=5, **kw) as ws:
        raw = mqtt_connect(client_id=client_id)
        await ws.send(raw[:3])
        await ws.send(raw[3:])
        got = b""
        while len(got) < 4:
            got += await asyncio.wait_for(ws.recv(), 5)
        assert got == CONNACK_OK
        return ws.subprotocol  # type: ignore[return-value]


async def test_ws_front_sigv4_accepts_botocore_url(broker) -> None:  # type: ignore[no-untyped-def]
    secrets = {"AKIDTEST": "secret/one+"}
    async with WsFront(broker.port, credentials=secrets, region="us-east-1") as front:
        host = f"127.0.0.1:{front.port}"
        token = "tok/+=en"
        url = botocore_presign(host, "AKIDTEST", "secret/one+").replace("https://", "ws://", 1)
        url += "&X-Amz-Security-Token=" + quote(token, safe="")
        assert await ws_exchange_connect(url, client_id="ws-ok") == "mqtt"
        [rec] = await front.wait_for_connections(1)
        assert rec.status == 101 and rec.handshake_ok and rec.subprotocol == "mqtt"
        assert rec.headers["host"] == host and rec.headers["sec-websocket-protocol"] == "mqtt"
        assert rec.mqtt_connect is not None and rec.mqtt_connect.username == "user"
        assert rec.mqtt_connect.client_id == "ws-ok" and rec.c2b_frames == 2
        [attempt] = front.attempts
        assert attempt.verdict == "ok" and attempt.akid == "AKIDTEST" and attempt.token == token
        assert attempt.x_amz_date == rec.query["X-Amz-Date"]
        await rec.wait_closed()


async def test_ws_front_sigv4_rejections_and_rotation(broker) -> None:  # type: ignore[no-untyped-def]
    secrets = {"AKID1": "first-secret"}
    async with WsFront(broker.port, credentials=secrets) as front:
        host = f"127.0.0.1:{front.port}"

        def url(akid: str, secret: str) -> str:
            return botocore_presign(host, akid, secret).replace("https://", "ws://", 1)

        with pytest.raises(InvalidStatus) as wrong:
            await ws_exchange_connect(url("AKID1", "not-the-secret"), client_id="x")
        assert wrong.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as unknown:
            await ws_exchange_connect(url("AKID2", "second-secret"), client_id="x")
        assert unknown.value.response.status_code == 403

        assert await ws_exchange_connect(url("AKID1", "first-secret"), client_id="rot1") == "mqtt"
        front.revoke("AKID1")
        with pytest.raises(InvalidStatus) as revoked:
            await ws_exchange_connect(url("AKID1", "first-secret"), client_id="x")
        assert revoked.value.response.status_code == 403

        secrets["AKID2"] = "second-secret"  # rotation: the live dict is used
        assert await ws_exchange_connect(url("AKID2", "second-secret"), client_id="rot2") == "mqtt"

        # Expired (signed two hours ago, valid one hour), via the front's own presigner.
        old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
        with pytest.raises(InvalidStatus) as expired:
            await ws_exchange_connect(front.presign("AKID2", "second-secret", timestamp=old), client_id="x")
        assert expired.value.response.status_code == 403

        verdicts = [(a.akid, a.verdict) for a in front.attempts]
        assert verdicts == [
            ("AKID1", "bad-signature"),
            ("AKID2", "unknown-key"),
            ("AKID1", "ok"),
            ("AKID1", "revoked"),
            ("AKID2", "ok"),
            ("AKID2", "expired"),
        ]
        records = await front.wait_for_connections(6)
        assert [r.status for r in records] == [403, 403, 101, 403, 101, 403]
        assert [r.mqtt_connect.client_id for r in records if r.mqtt_connect] == ["rot1", "rot2"]


async def test_ws_front_wss(broker, pki) -> None:  # type: ignore[no-untyped-def]
    async with WsFront(broker.port, cert=pki.server_cert, key=pki.server_key, credentials={"AK": "SK"}) as front:
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        url = front.presign("AK", "SK", host="localhost", token="session-token")
        assert url.startswith(f"wss://localhost:{front.port}/mqtt?")
        assert await ws_exchange_connect(url, client_id="wss", ssl_ctx=ctx) == "mqtt"
        [rec] = await front.wait_for_connections(1)
        assert rec.sni == "localhost" and rec.headers["host"] == f"localhost:{front.port}"
        assert front.attempts[0].verdict == "ok" and front.attempts[0].token == "session-token"
        assert rec.mqtt_connect is not None and rec.mqtt_connect.client_id == "wss"


async def test_ws_front_bulk_relay_arbitrary_frames(broker, unique_topic) -> None:  # type: ignore[no-untyped-def]
    """MQTT packets split and coalesced arbitrarily across binary frames are relayed intact."""
    payload = bytes(range(256)) * 1200
    async with WsFront(broker.port) as front:
        async with ws_connect(front.url(), subprotocols=["mqtt"], open_timeout=5, max_size=None) as ws:  # type: ignore[list-item]
            stream = mqtt_connect(client_id="ws-bulk") + P.subscribe(1, unique_topic)
            await ws.send(stream[:1])
            await ws.send(stream[1:-5])  # rest of CONNECT + most of SUBSCRIBE in one frame
            await ws.send(stream[-5:])
            got = bytearray()
            seen: list[P.Packet] = []
            while len(seen) < 2:
                got += await asyncio.wait_for(ws.recv(), 5)
                seen += [P.decode(raw) for raw in P.split(got)]
            assert [p.name for p in seen] == ["CONNACK", "SUBACK"]
            publish = P.publish(unique_topic, payload)
            for i in range(0, len(publish), 7000):
                await ws.send(publish[i : i + 7000])
            while not seen[2:]:
                got += await asyncio.wait_for(ws.recv(), 5)
                seen += [P.decode(raw) for raw in P.split(got)]
            assert seen[2].topic == unique_topic and seen[2].payload == payload
        [rec] = await front.wait_for_connections(1)
        await rec.wait_closed()
        assert [p.name for p in rec.packets] == ["CONNECT", "SUBSCRIBE", "PUBLISH"]
        assert rec.packets[2].payload == payload
        assert rec.c2b_frames == 3 + -(-len(publish) // 7000) and rec.b2c_frames >= 2


async def test_ws_front_protocol_checks(broker) -> None:  # type: ignore[no-untyped-def]
    async with WsFront(broker.port) as front:  # no auth
        with pytest.raises(InvalidStatus) as no_subprotocol:
            async with ws_connect(front.url(), open_timeout=5):
                pass
        assert no_subprotocol.value.response.status_code == 400
        with pytest.raises(InvalidStatus) as wrong_path:
            await ws_exchange_connect(f"ws://127.0.0.1:{front.port}/other", client_id="x")
        assert wrong_path.value.response.status_code == 404
        assert await ws_exchange_connect(front.url(), client_id="open") == "mqtt"
        records = await front.wait_for_connections(3)
        assert [r.status for r in records] == [400, 404, 101]
        assert front.attempts == []


async def test_ws_front_custom_auth(broker) -> None:  # type: ignore[no-untyped-def]
    def authorize(headers: dict[str, str], query: dict[str, str]) -> bool:
        return headers.get("x-amz-customauthorizer-name") == "my-authorizer" and query.get("token") == "good"

    async with WsFront(broker.port, custom_auth=authorize) as front:
        headers = {"x-amz-customauthorizer-name": "my-authorizer", "X-Amz-CustomAuthorizer-Signature": "c2ln"}
        ok = await ws_exchange_connect(f"{front.url()}?token=good", client_id="ca", additional_headers=headers)
        assert ok == "mqtt"
        with pytest.raises(InvalidStatus) as denied:
            await ws_exchange_connect(f"{front.url()}?token=bad%2Bx", client_id="x", additional_headers=headers)
        assert denied.value.response.status_code == 401

        first, second = front.attempts
        assert first.accepted and not second.accepted
        assert first.query == {"token": "good"} and second.query == {"token": "bad+x"}
        assert first.headers["x-amz-customauthorizer-signature"] == "c2ln"
        assert first.headers["x-amz-customauthorizer-name"] == "my-authorizer"
        records = await front.wait_for_connections(2)
        assert [r.status for r in records] == [101, 401]
        assert records[0].mqtt_connect is not None and records[0].mqtt_connect.client_id == "ca"


async def test_ws_front_drop_all(broker) -> None:  # type: ignore[no-untyped-def]
    async with WsFront(broker.port) as front:
        async with ws_connect(front.url(), subprotocols=["mqtt"], open_timeout=5) as ws:  # type: ignore[list-item]
            await ws.send(mqtt_connect(client_id="ws-drop"))
            assert await asyncio.wait_for(ws.recv(), 5) == CONNACK_OK
            assert front.active == 1
            assert await front.drop_all() == 1
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert front.active == 0
        [rec] = await front.wait_for_connections(1)
        assert rec.closed and rec.mqtt_connect is not None
        # Reconnect works after a drop; an abort-drop closes without a close frame.
        async with ws_connect(front.url(), subprotocols=["mqtt"], open_timeout=5) as ws:  # type: ignore[list-item]
            await ws.send(mqtt_connect(client_id="ws-drop"))
            assert await asyncio.wait_for(ws.recv(), 5) == CONNACK_OK
            assert await front.drop_all(abort=True) == 1
            with pytest.raises(ConnectionClosed) as aborted:
                await asyncio.wait_for(ws.recv(), 5)
            assert aborted.value.rcvd is None
    await front.close()


async def test_close_with_live_clients(broker, pki) -> None:  # type: ignore[no-untyped-def]
    """close() ends relayed and half-open (no ClientHello yet) connections and WebSockets cleanly."""
    front = await TlsFront(pki.server_cert, pki.server_key, broker.port).start()
    tls_reader, tls_writer = await asyncio.open_connection(
        "127.0.0.1", front.port, ssl=client_context(pki, None), server_hostname="localhost"
    )
    raw_reader, raw_writer = await asyncio.open_connection("127.0.0.1", front.port)
    try:
        tls_writer.write(mqtt_connect(client_id="live-tls"))
        assert await read_connack(tls_reader) == CONNACK_OK
        await front.wait_for_connections(1)
        await asyncio.sleep(0.05)  # let the raw connection be accepted
        await front.close()
        assert await asyncio.wait_for(tls_reader.read(), 5) == b""
        assert await asyncio.wait_for(raw_reader.read(), 5) == b""
    finally:
        await close_stream(tls_writer)
        await close_stream(raw_writer)
    relayed, half_open = front.connections
    assert relayed.closed and relayed.handshake_ok and relayed.mqtt_connect is not None
    assert half_open.closed and not half_open.handshake_ok and half_open.handshake_error

    ws_front = await WsFront(broker.port).start()
    async with ws_connect(ws_front.url(), subprotocols=["mqtt"], open_timeout=5) as ws:  # type: ignore[list-item]
        await ws.send(mqtt_connect(client_id="live-ws"))
        assert await asyncio.wait_for(ws.recv(), 5) == CONNACK_OK
        await ws_front.close()
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert ws_front.active == 0 and ws_front.connections[0].closed
