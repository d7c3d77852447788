"""``awsiot_rs.local``: the awsiot_rs client against the embedded AWS IoT Core, over loopback.

Every test starts its own core on free ports (the ``local_iot_core`` fixture of the wheel's
pytest plugin, or ``LocalIoTCore`` directly) and talks to it with real clients: no mock.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import stat
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import pytest

import awsiot_rs
from awsiot_rs import AuthError, ConnectError, MtlsAuth, ShadowRejected
from awsiot_rs.local import (
    AuthorizerRequest,
    AuthorizerResult,
    CoreEvent,
    Device,
    LocalIoTCore,
)

T = TypeVar("T")
STEP = 10.0  # seconds any single awaited step may take

SECRET_TOKEN = "S3NTINEL-LOCAL-TOKEN"
SECRET_KEY = "S3NTINEL-LOCAL-SECRET-KEY"
SECRET_PASSWORD = "S3NTINEL-LOCAL-PASSWORD"


async def within(aw: Awaitable[T], timeout: float = STEP) -> T:
    return await asyncio.wait_for(aw, timeout)


async def next_message(sub: awsiot_rs.Subscription) -> awsiot_rs.Message:
    return await within(sub.__anext__())


def new_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def core(tmp_path) -> AsyncIterator[LocalIoTCore]:  # type: ignore[no-untyped-def]
    """A core started on this test's loop (its authorizer functions run here)."""
    async with LocalIoTCore(state_dir=tmp_path / "state") as c:
        yield c


# -- start, stop, files --------------------------------------------------------------------------


async def test_start_reports_ports_endpoint_and_writes_the_ca_file(core: LocalIoTCore) -> None:
    ports = core.ports
    assert set(ports) == {"mqtt", "alpn", "custom_auth", "wss"}
    assert len(set(ports.values())) == 4 and all(p > 0 for p in ports.values())
    assert core.endpoint == "localhost"
    assert core.ca_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    with open(core.ca_file, "rb") as f:
        assert f.read() == core.ca_pem
    for port in ports.values():  # every listener accepts TCP on loopback
        socket.create_connection(("127.0.0.1", port), timeout=STEP).close()


async def test_register_thing_writes_the_key_owner_only_and_repr_hides_it(core: LocalIoTCore) -> None:
    dev = core.register_thing("sensor-files", attributes={"room": "lab"})
    assert isinstance(dev, Device)
    assert stat.S_IMODE(os.stat(dev.key_file).st_mode) == 0o600
    with open(dev.key_file, "rb") as f:
        assert f.read() == dev.key_pem
    with open(dev.cert_file, "rb") as f:
        assert f.read() == dev.cert_pem
    assert len(dev.certificate_id) == 64 and all(c in "0123456789abcdef" for c in dev.certificate_id)
    key_body = dev.key_pem.decode().splitlines()[1]
    for text in (repr(dev), str(dev)):
        assert "PRIVATE KEY" not in text and key_body not in text
        assert "sensor-files" in text and dev.certificate_id in text


async def test_the_temporary_state_dir_is_removed_on_stop_and_ports_are_freed() -> None:
    core = LocalIoTCore()
    await core.start()
    ca_file, ports = core.ca_file, core.ports
    assert os.path.exists(ca_file)
    await core.stop()
    assert not os.path.exists(os.path.dirname(ca_file))
    for port in ports.values():  # free again: it can be bound
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    with pytest.raises(RuntimeError, match="not started"):
        _ = core.ports
    await core.stop()  # idempotent


async def test_a_port_in_use_raises_oserror() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(OSError):
            await LocalIoTCore(mqtt_port=s.getsockname()[1]).start()


async def test_bad_configuration_raises_config_error() -> None:
    with pytest.raises(awsiot_rs.ConfigError):
        LocalIoTCore(mqtt_port=70000)
    with pytest.raises(awsiot_rs.ConfigError):
        await LocalIoTCore(qos2="sometimes").start()
    with pytest.raises(awsiot_rs.ConfigError):
        await LocalIoTCore(host="not an address").start()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd (Linux)")
@pytest.mark.timeout(120)
async def test_start_and_stop_200_times_leaks_no_fd_or_thread() -> None:
    async def cycle() -> None:
        async with LocalIoTCore() as c:
            c.register_thing("leak-check")
            c.add_authorizer("a", lambda r: True)  # starts the authorizer thread too
            ev = c.events()
            await ev.aclose()

    def own_threads() -> list[str]:
        # The loop's default executor grows up to its bound as it likes: not a leak.
        return sorted(t.name for t in threading.enumerate() if not t.name.startswith("asyncio_"))

    for _ in range(5):  # warm up: runtime threads
        await cycle()
    gc.collect()
    fds, threads = _open_fds(), own_threads()
    for _ in range(200):
        await cycle()
    gc.collect()
    assert _open_fds() <= fds + 2, "file descriptors leak across start/stop"
    assert own_threads() == threads, "threads leak across start/stop"
    assert "awsiot_rs-local-authorizer" not in threads


def test_with_statement_and_the_sync_client(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from awsiot_rs.sync import Client as SyncClient

    with LocalIoTCore(state_dir=tmp_path) as core:
        dev = core.register_thing("sync-thing")
        with SyncClient(core.endpoint, port=core.ports["mqtt"], client_id="sync-thing", ca=core.ca_file,
                        auth=MtlsAuth(dev.cert_file, dev.key_file)) as client:
            sub = client.subscribe("sync/t", qos=1)
            client.publish("sync/t", "hello", qos=1)
            assert sub.get(timeout=STEP).text() == "hello"
            assert core.connected_clients() == ["sync-thing"]
    assert not core.running


def test_many_cores_run_at_once_independently() -> None:
    with LocalIoTCore() as a, LocalIoTCore() as b:
        assert a.ca_pem != b.ca_pem
        assert not set(a.ports.values()) & set(b.ports.values())


# -- auth modes ----------------------------------------------------------------------------------


async def roundtrip(client: awsiot_rs.Client, topic: str) -> None:
    sub = await client.subscribe(topic, qos=1)
    await within(client.publish(topic, {"n": 1}, qos=1))
    assert (await next_message(sub)).json() == {"n": 1}


@pytest.mark.parametrize("auth", ["mtls", "alpn"])
async def test_mutual_tls_clients_connect_and_round_trip(core: LocalIoTCore, auth: str) -> None:
    core.register_thing("tls-thing")
    async with core.client("tls-thing", auth=auth) as c:  # type: ignore[arg-type]
        assert c.client_id == "tls-thing"
        assert core.connected_clients() == ["tls-thing"]
        await roundtrip(c, f"t/{auth}")


async def test_the_alpn_port_refuses_a_client_without_the_alpn_protocol(core: LocalIoTCore) -> None:
    core.register_thing("no-alpn")
    c = core.client("no-alpn", port=core.ports["alpn"], alpn=["mqtt"], reconnect=None)
    with pytest.raises(ConnectError):
        await within(c.connect())


async def test_sigv4_client_over_websocket(core: LocalIoTCore) -> None:
    core.add_credentials("AKIDLOCALTEST", SECRET_KEY, "session-token-1")
    async with core.client(auth="sigv4", client_id="sigv4-client") as c:
        await roundtrip(c, "t/sigv4")
    async with core.events() as events:
        async with core.client(auth="sigv4", client_id="sigv4-again", region="eu-west-1"):
            ev = await events.wait_for(lambda e: e.kind == "connect", STEP)
    assert ev.client_id == "sigv4-again" and ev.principal is not None and "AKIDLOCALTEST" in ev.principal


async def test_sigv4_with_a_wrong_secret_is_refused(core: LocalIoTCore) -> None:
    core.add_credentials("AKIDLOCALTEST", SECRET_KEY)
    c = core.client(auth="sigv4", client_id="bad-sig", access_key="AKIDLOCALTEST", secret_key="wrong", reconnect=None)
    with pytest.raises(AuthError) as info:
        await within(c.connect())
    assert "wrong" not in str(info.value) and SECRET_KEY not in str(info.value)


async def test_custom_authorizer_over_mqtt_with_an_async_function(core: LocalIoTCore) -> None:
    seen: list[AuthorizerRequest] = []
    loop_threads: list[int] = []

    async def authorize(request: AuthorizerRequest) -> AuthorizerResult:
        loop_threads.append(threading.get_ident())
        seen.append(request)
        await asyncio.sleep(0)
        return AuthorizerResult(allow=request.token == SECRET_TOKEN, principal_id="custom-principal")

    core.add_authorizer("TokenAuth", authorize, token_key_name="x-token")
    async with core.events() as events:
        async with core.client(auth="custom", authorizer="TokenAuth", token=SECRET_TOKEN, client_id="cust-mqtt",
                               username="alice", password=SECRET_PASSWORD) as c:
            await roundtrip(c, "t/custom")
            ev = await events.wait_for(lambda e: e.kind == "connect", STEP)
    assert ev.client_id == "cust-mqtt" and ev.principal == "custom-principal"
    (request,) = seen
    assert loop_threads == [threading.get_ident()], "the authorizer runs on the loop that started the core"
    assert request.authorizer == "TokenAuth" and request.protocol == "mqtt"
    assert request.token == SECRET_TOKEN and request.client_id == "cust-mqtt"
    assert request.username == "alice" and request.password == SECRET_PASSWORD.encode()
    text = repr(request)
    for secret in (SECRET_TOKEN, SECRET_PASSWORD):
        assert secret not in text
    assert "TokenAuth" in text and "cust-mqtt" in text


@pytest.mark.parametrize("credentials_in", ["headers", "query"])
async def test_custom_authorizer_over_websocket_with_a_plain_function(core: LocalIoTCore, credentials_in: str) -> None:
    seen: list[AuthorizerRequest] = []

    def authorize(request: AuthorizerRequest) -> bool:
        seen.append(request)
        return request.token == SECRET_TOKEN

    core.add_authorizer("WsAuth", authorize, token_key_name="x-token")
    async with core.client(auth="custom", authorizer="WsAuth", token=SECRET_TOKEN, websockets=True,
                           credentials_in=credentials_in, client_id="cust-wss") as c:
        await roundtrip(c, "t/custom-wss")
    assert seen and seen[0].protocol == "wss" and seen[0].token == SECRET_TOKEN
    where = seen[0].headers if credentials_in == "headers" else seen[0].query
    assert where.get("x-token") == SECRET_TOKEN
    assert SECRET_TOKEN not in repr(seen[0])


async def test_a_denied_authorizer_fails_connect_with_an_auth_error(core: LocalIoTCore) -> None:
    core.add_authorizer("Deny", lambda request: False, token_key_name="x-token")
    c = core.client(auth="custom", authorizer="Deny", token="nope", client_id="denied", reconnect=None)
    with pytest.raises(AuthError):
        await within(c.connect())
    assert core.connected_clients() == []


async def test_an_authorizer_that_raises_denies_and_logs_no_secret(
    core: LocalIoTCore, caplog: pytest.LogCaptureFixture
) -> None:
    def authorize(request: AuthorizerRequest) -> bool:
        raise ValueError(f"bad token {request.token}")

    core.add_authorizer("Broken", authorize, token_key_name="x-token")
    c = core.client(auth="custom", authorizer="Broken", token=SECRET_TOKEN, password=SECRET_PASSWORD,
                    client_id="broken", reconnect=None)
    with caplog.at_level(logging.ERROR, logger="awsiot_rs.local"):
        with pytest.raises(AuthError) as info:
            await within(c.connect())
    assert SECRET_TOKEN not in str(info.value)
    records = [r for r in caplog.records if r.name == "awsiot_rs.local"]
    assert any("ValueError" in r.getMessage() and "Broken" in r.getMessage() for r in records)
    for r in records:
        assert SECRET_TOKEN not in r.getMessage() and SECRET_PASSWORD not in r.getMessage()


# -- MQTT behaviour ------------------------------------------------------------------------------


async def test_lifecycle_events_carry_aws_fields(core: LocalIoTCore) -> None:
    core.register_thing("watcher")
    dev = core.register_thing("subject")
    async with core.client("watcher") as watcher:
        presence = await watcher.subscribe("$aws/events/presence/+/subject", qos=1)
        subs = await watcher.subscribe("$aws/events/subscriptions/+/subject", qos=1)
        async with core.client("subject") as subject:
            connected = (await next_message(presence)).json()
            await subject.subscribe(["a/b", "c/+"], qos=1)
            subscribed = (await next_message(subs)).json()
        disconnected = (await next_message(presence)).json()
    assert connected["eventType"] == "connected" and connected["clientId"] == "subject"
    assert connected["principalIdentifier"] == dev.certificate_id
    assert isinstance(connected["timestamp"], int) and connected["timestamp"] > 1_600_000_000_000
    assert connected["ipAddress"] == "127.0.0.1"
    assert connected["sessionIdentifier"] == disconnected["sessionIdentifier"]
    assert isinstance(connected["versionNumber"], int)
    assert subscribed["eventType"] == "subscribed" and sorted(subscribed["topics"]) == ["a/b", "c/+"]
    assert disconnected["eventType"] == "disconnected"
    assert disconnected["clientInitiatedDisconnect"] is True
    assert disconnected["disconnectReason"] == "CLIENT_INITIATED_DISCONNECT"


async def test_wildcards_never_match_dollar_topics(core: LocalIoTCore) -> None:
    core.register_thing("wild")
    async with core.client("wild") as c:
        everything = await c.subscribe("#", qos=1)
        await c.subscribe("$aws/things/wild/shadow/get/accepted", qos=1)
        # A $ topic reaches the exact subscription only; then a plain topic reaches '#'.
        await c.shadow("wild").update(reported={"x": 1})
        await within(c.publish("plain/topic", "after", qos=1))
        first = await next_message(everything)
    assert first.topic == "plain/topic", "'#' received a $ topic"


async def test_retained_messages_go_only_to_exact_filters_and_an_empty_payload_clears(core: LocalIoTCore) -> None:
    core.register_thing("ret")
    async with core.client("ret") as c:
        await within(c.publish("ret/a", "kept", qos=1, retain=True))
        exact = await c.subscribe("ret/a", qos=1)
        got = await next_message(exact)
        assert (got.text(), got.retain) == ("kept", True)
        await exact.unsubscribe()
        wild = await c.subscribe("ret/+", qos=1)
        await within(c.publish("ret/a", "live", qos=1))
        first = await next_message(wild)
        assert (first.text(), first.retain) == ("live", False), "a wildcard subscription got the retained message"
        await wild.unsubscribe()
        await within(c.publish("ret/a", b"", qos=1, retain=True))  # clears
        again = await c.subscribe("ret/a", qos=1)
        await within(c.publish("ret/a", "live-2", qos=1))
        first = await next_message(again)
        assert (first.text(), first.retain) == ("live-2", False), "the empty retained payload did not clear"


async def test_a_persistent_session_keeps_subscriptions_and_qos1_messages(core: LocalIoTCore) -> None:
    core.register_thing("persist")
    core.register_thing("sender")
    c = core.client("persist", clean_session=False, reconnect=None)
    assert (await within(c.connect())).session_present is False
    stored = await c.subscribe("persist/in", qos=1)  # kept across disconnect()/connect()
    await within(c.disconnect())
    async with core.client("sender") as sender:
        await within(sender.publish("persist/in", "while-away", qos=1))
    result = await within(c.connect())
    try:
        assert result.session_present is True
        msg = await next_message(stored)
        assert (msg.topic, msg.text(), msg.qos) == ("persist/in", "while-away", 1)
    finally:
        await c.disconnect()


async def test_a_second_connection_with_the_same_client_id_takes_over(core: LocalIoTCore) -> None:
    core.register_thing("twin")
    dropped = asyncio.Event()
    first = core.client("twin", reconnect=None, on_disconnect=lambda e: dropped.set())
    second = core.client("twin", reconnect=None)
    async with core.events() as events:
        await within(first.connect())
        await within(second.connect())
        ev = await events.wait_for(lambda e: e.kind == "disconnect", STEP)
        await within(dropped.wait())
    try:
        assert ev.client_id == "twin" and ev.reason == "DUPLICATE_CLIENTID"
        assert second.is_connected and not first.is_connected
        assert core.connected_clients() == ["twin"]
    finally:
        await second.disconnect()


async def test_core_disconnect_drops_the_client_with_the_reason(core: LocalIoTCore) -> None:
    core.register_thing("kicked")
    core.register_thing("watch2")
    reasons: list[Any] = []
    gone = asyncio.Event()

    def on_disconnect(event: Any) -> None:
        reasons.append(event)
        gone.set()

    async with core.client("watch2") as watcher:
        presence = await watcher.subscribe("$aws/events/presence/disconnected/kicked", qos=1)
        c = core.client("kicked", reconnect=None, on_disconnect=on_disconnect)
        await within(c.connect())
        assert core.disconnect("kicked", "API_INITIATED_DISCONNECT") is True
        await within(gone.wait())
        event = (await next_message(presence)).json()
    assert event["disconnectReason"] == "API_INITIATED_DISCONNECT"
    assert event["clientInitiatedDisconnect"] is False
    assert reasons and not c.is_connected
    assert core.disconnect("kicked") is False


@pytest.mark.parametrize("status", ["INACTIVE", "REVOKED"])
async def test_a_certificate_not_active_is_refused_at_connect(core: LocalIoTCore, status: str) -> None:
    dev = core.register_thing("revoked")
    core.certificate_status(dev.certificate_id, status)  # type: ignore[arg-type]
    with pytest.raises(ConnectError):
        await within(core.client("revoked", reconnect=None).connect())
    assert core.connected_clients() == []
    core.certificate_status(dev.certificate_id, "ACTIVE")
    async with core.client("revoked") as c:
        assert c.is_connected
    with pytest.raises(KeyError):
        core.certificate_status("0" * 64, "ACTIVE")


async def test_rule_topics_surface_as_events_and_cannot_be_subscribed(core: LocalIoTCore) -> None:
    core.register_thing("ruler")
    async with core.client("ruler") as c:
        async with core.events() as events:
            await within(c.publish("$aws/rules/MyRule/sensors/t", {"t": 1}, qos=1))
            ev = await events.wait_for(lambda e: e.kind == "rule", STEP)
        assert ev.topic == "$aws/rules/MyRule/sensors/t" and ev.client_id == "ruler"
        assert ev.payload_len == len(b'{"t":1}')
        # awsiot_rs refuses it before sending (the core's refusal: test_local_interop.py).
        with pytest.raises(awsiot_rs.TopicError):
            await within(c.subscribe("$aws/rules/MyRule/#", qos=1))


async def test_events_reports_connect_subscribe_publish_and_disconnect(core: LocalIoTCore) -> None:
    core.register_thing("evt")
    events = core.events()  # from this call on: nothing earlier
    kinds: list[CoreEvent] = []
    async with core.client("evt") as c:
        sub = await c.subscribe("evt/x", qos=1)
        await within(c.publish("evt/x", "12345", qos=1))
        await next_message(sub)
    async for ev in events:
        if ev.client_id == "evt":
            kinds.append(ev)
        if ev.kind == "disconnect":
            break
    await events.aclose()
    assert [e.kind for e in kinds] == ["connect", "subscribe", "publish", "disconnect"]
    sub, pub, disc = kinds[1], kinds[2], kinds[3]
    assert sub.topics == ("evt/x",)
    assert (pub.topic, pub.qos, pub.payload_len) == ("evt/x", 1, 5)
    assert disc.reason == "CLIENT_INITIATED_DISCONNECT"
    assert all(e.timestamp_ms > 0 for e in kinds)


async def test_events_end_when_the_core_stops() -> None:
    c = LocalIoTCore()
    await c.start()
    events = c.events()
    await c.stop()
    assert [e async for e in events] == []


async def test_core_publish_reaches_subscribers(core: LocalIoTCore) -> None:
    core.register_thing("listener")
    async with core.client("listener") as c:
        sub = await c.subscribe("cmd/listener", qos=1)
        core.publish("cmd/listener", {"reboot": True}, qos=1)
        assert (await next_message(sub)).json() == {"reboot": True}
    routed = core.counters()["routed"]
    assert routed >= 1


async def test_qos2_publish_disconnects_the_client(core: LocalIoTCore) -> None:
    # awsiot_rs refuses QoS 2 itself (AWS does not support it); paho sends one in
    # test_local_interop.py. Here: SUBSCRIBE at QoS 2 is not possible from awsiot_rs either,
    # so only the limit is checked: the client refuses before sending.
    core.register_thing("q2")
    async with core.client("q2") as c:
        with pytest.raises(awsiot_rs.ConfigError):
            await c.publish("q2/t", "x", qos=2)


# -- services ------------------------------------------------------------------------------------


async def test_shadow_get_update_delta_and_documents_through_the_client(core: LocalIoTCore) -> None:
    core.register_thing("lamp")
    async with core.client("lamp") as c:
        shadow = c.shadow("lamp")
        with pytest.raises(ShadowRejected) as missing:
            await shadow.get()
        assert missing.value.code == 404
        assert core.shadow_document("lamp") is None
        deltas: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await shadow.on_delta(deltas.put_nowait)
        documents = await c.subscribe(shadow.topic("update/documents"), qos=1)
        doc = await shadow.update(reported={"light": "off", "temp": 20})
        assert doc["version"] == 1
        first_documents = (await next_message(documents)).json()
        assert first_documents["previous"] is None or "state" not in (first_documents["previous"] or {})
        assert first_documents["current"]["state"]["reported"] == {"light": "off", "temp": 20}
        await shadow.update(desired={"light": "on"})
        delta = await within(deltas.get())
        assert delta["state"] == {"light": "on"} and delta["version"] == 2
        assert "light" in delta["metadata"]
        second_documents = (await next_message(documents)).json()
        assert second_documents["previous"]["version"] == 1 and second_documents["current"]["version"] == 2
        await shadow.update(reported={"light": "on", "temp": None})  # None deletes the key
        got = await shadow.get()
        assert got["state"]["reported"] == {"light": "on"} and "delta" not in got["state"]
        assert got["version"] == 3
        with pytest.raises(ShadowRejected) as conflict:
            await shadow.update(reported={"x": 1}, version=1)
        assert conflict.value.code == 409
        stored = core.shadow_document("lamp")
        assert stored is not None and stored["state"] == got["state"] and stored["version"] == 3
        named = c.shadow("lamp", "config")
        await named.update(desired={"rate": 5})
        assert core.shadow_document("lamp", "config")["state"]["desired"] == {"rate": 5}  # type: ignore[index]


TEMPLATE = {
    "Parameters": {"SerialNumber": {"Type": "String"}},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {"ThingName": {"Fn::Join": ["", ["sensor-", {"Ref": "SerialNumber"}]]}},
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"},
        },
    },
    "DeviceConfiguration": {"sampleRate": "60"},
}


@pytest.mark.parametrize("fmt", ["json", "cbor"])
async def test_fleet_provisioning_creates_a_certificate_that_connects(core: LocalIoTCore, fmt: str) -> None:
    claim = core.add_provisioning_template("FleetTemplate", TEMPLATE, claim_thing="claim-fleet")
    assert repr(claim).count("PRIVATE KEY") == 0
    serial = uuid.uuid4().hex[:6]
    async with core.client("claim-fleet") as c:
        fp = c.fleet_provisioning(fmt)
        keys = await fp.create_keys_and_certificate()
        thing = await fp.register_thing(
            "FleetTemplate", {"SerialNumber": serial}, certificate_ownership_token=keys.certificate_ownership_token
        )
    assert thing.thing_name == f"sensor-{serial}"
    assert thing.device_configuration == {"sampleRate": "60"}
    auth = MtlsAuth.from_pem(keys.certificate_pem, keys.private_key)
    async with core.client(auth=auth, client_id=thing.thing_name) as device_client:
        await roundtrip(device_client, f"provisioned/{serial}")


async def test_jobs_pending_start_next_update_and_notify(core: LocalIoTCore) -> None:
    core.register_thing("robot")
    core.add_job("robot", "job-1", {"operation": "reboot"})
    async with core.client("robot") as c:
        jobs = c.jobs("robot")
        pending = await jobs.get_pending()
        assert [j["jobId"] for j in pending["queuedJobs"]] == ["job-1"]
        notify_next = await c.subscribe("$aws/things/robot/jobs/notify-next", qos=1)
        execution = await jobs.start_next()
        assert execution is not None and execution["jobId"] == "job-1"
        assert execution["status"] == "IN_PROGRESS" and execution["jobDocument"] == {"operation": "reboot"}
        core.add_job("robot", "job-2", {"operation": "update"})
        await jobs.update("job-1", "SUCCEEDED", expected_version=execution["versionNumber"])
        stored = core.job_execution("robot", "job-1")
        assert stored is not None and stored["status"] == "SUCCEEDED"
        note = (await next_message(notify_next)).json()
        assert note["execution"]["jobId"] == "job-2"
        with pytest.raises(awsiot_rs.JobRejected):
            await jobs.update("job-2", "SUCCEEDED", expected_version=99)


# -- the pytest plugin ---------------------------------------------------------------------------


def test_the_local_iot_core_fixture_is_a_started_core(local_iot_core: LocalIoTCore) -> None:
    assert local_iot_core.running and local_iot_core.ports["mqtt"] > 0


async def test_the_iot_device_fixture_is_a_connected_client(iot_device) -> None:  # type: ignore[no-untyped-def]
    device, client, core = iot_device
    assert client.is_connected and client.client_id == device.thing_name
    assert device.thing_name.startswith("test_the_iot_device_fixture")
    assert core.connected_clients() == [device.thing_name]
    await roundtrip(client, f"fixture/{device.thing_name}")


def test_a_core_started_with_with_runs_authorizers_on_the_sync_loop() -> None:
    from awsiot_rs.sync import Client as SyncClient
    from awsiot_rs.sync import _get_runner

    threads: list[int] = []

    async def authorize(request: AuthorizerRequest) -> bool:
        threads.append(threading.get_ident())
        return request.token == SECRET_TOKEN

    with LocalIoTCore() as core:
        core.add_authorizer("SyncAuth", authorize, token_key_name="tok")
        aio = core.client(auth="custom", authorizer="SyncAuth", token=SECRET_TOKEN, client_id="sync-custom")
        auth = awsiot_rs.CustomAuth(authorizer_name="SyncAuth", token_key_name="tok", token=SECRET_TOKEN)
        with SyncClient(core.endpoint, port=core.ports["custom_auth"], alpn=["mqtt"], ca=core.ca_pem,
                        client_id="sync-custom", auth=auth) as client:
            assert client.is_connected
        assert aio.client_id == "sync-custom"
    assert threads == [_get_runner().thread.ident]


PLUGIN_USER = '''
import pytest

def test_core(local_iot_core):
    assert local_iot_core.running

@pytest.mark.asyncio
async def test_device(iot_device):
    device, client, core = iot_device
    assert device.thing_name == "test_device" and client.is_connected
    sub = await client.subscribe("plugin/t", qos=1)
    await client.publish("plugin/t", "x", qos=1)
    assert (await sub.__anext__()).text() == "x"
'''


def test_the_plugin_in_a_fresh_pytest_run_in_strict_mode(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    (tmp_path / "test_user.py").write_text(PLUGIN_USER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # enable by hand, as documented
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "awsiot_rs.pytest_plugin", "-p", "pytest_asyncio.plugin",
         "-p", "no:cacheprovider", "-q", "-o", "asyncio_mode=strict", "test_user.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed" in r.stdout


def test_the_plugin_is_declared_as_a_pytest11_entry_point() -> None:
    tomllib = pytest.importorskip("tomllib")  # 3.11+
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        entry_points = tomllib.load(f)["project"]["entry-points"]
    assert entry_points["pytest11"] == {"awsiot_rs": "awsiot_rs.pytest_plugin"}
