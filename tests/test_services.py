"""AWS IoT services over MQTT through the client's APIs, against the embedded AWS IoT Core
(``awsiot_rs.local.LocalIoTCore``, the plugin fixture ``local_iot_core``): shadow, fleet
provisioning, jobs, reserved topics, lifecycle events.

The tests that need a service that misbehaves on purpose (duplicate or foreign answers, no
answer) run against the fakes on Mosquitto: tests/test_services_faults.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

import awsiot_rs
from awsiot_rs import topics
from awsiot_rs.local import CoreEvent, CoreEvents, LocalIoTCore

T = TypeVar("T")
#: Seconds any single awaited step may take.
STEP = 10.0

#: A fleet provisioning template as AWS's: the thing is ``thing-<SerialNumber>``.
TEMPLATE: dict[str, Any] = {
    "Parameters": {"SerialNumber": {"Type": "String"}},
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
    "DeviceConfiguration": {"sampleRate": "60"},
}


async def within(aw: Awaitable[T], timeout: float = STEP) -> T:
    return await asyncio.wait_for(aw, timeout)


def client(core: LocalIoTCore, thing: str | None = None, **overrides: Any) -> awsiot_rs.Client:
    """A client of ``core`` for ``thing``'s certificate (not connected)."""
    overrides.setdefault("operation_timeout", 5)
    return core.client(thing, **overrides)


def subscribed(client_id: str, topic: str) -> Callable[[CoreEvent], bool]:
    """A ``CoreEvents.wait_for`` predicate: ``client_id``'s SUBSCRIBE of ``topic``."""
    return lambda e: e.kind == "subscribe" and e.client_id == client_id and topic in e.topics


@pytest.fixture
async def core_events(local_iot_core: LocalIoTCore) -> AsyncIterator[CoreEvents]:
    """The core's events from the start of the test on."""
    events = local_iot_core.events()
    yield events
    await events.aclose()


@pytest.fixture
def thing(local_iot_core: LocalIoTCore) -> str:
    """A thing registered in the core (its certificate is what ``client(core, thing)`` uses)."""
    name = f"thing-{uuid.uuid4().hex[:10]}"
    local_iot_core.register_thing(name)
    return name


# -- reserved topics and lifecycle events ---------------------------------------------------


def test_reserved_topics_have_the_documented_forms():
    assert topics.client_connected("c1") == "$aws/events/presence/connected/c1"
    assert topics.client_disconnected("c1") == "$aws/events/presence/disconnected/c1"
    assert topics.client_subscribed("c1") == "$aws/events/subscriptions/subscribed/c1"
    assert topics.client_unsubscribed("c1") == "$aws/events/subscriptions/unsubscribed/c1"
    assert topics.rule("myRule") == "$aws/rules/myRule"
    assert topics.rule("myRule", "a/b") == "$aws/rules/myRule/a/b"
    assert topics.shadow("t1", "update/delta") == "$aws/things/t1/shadow/update/delta"
    assert topics.shadow("t1", "get", "cfg") == "$aws/things/t1/shadow/name/cfg/get"
    assert topics.fleet_provisioning("create") == "$aws/certificates/create/json"
    assert topics.fleet_provisioning("create-from-csr/accepted", fmt="cbor") == "$aws/certificates/create-from-csr/cbor/accepted"
    assert topics.fleet_provisioning("provision/rejected", template="T") == "$aws/provisioning-templates/T/provision/json/rejected"
    assert topics.jobs("t1", "notify-next") == "$aws/things/t1/jobs/notify-next"
    assert topics.jobs("t1", "update/accepted", "job-1") == "$aws/things/t1/jobs/job-1/update/accepted"
    assert topics.jobs("t1", "get", "$next") == "$aws/things/t1/jobs/$next/get"
    for bad in (lambda: topics.shadow("bad thing", "get"), lambda: topics.shadow("t", "put"),  # type: ignore[arg-type]
                lambda: topics.shadow("t", "get", "x" * 65), lambda: topics.rule("bad-rule"),
                lambda: topics.client_connected("a+b"), lambda: topics.fleet_provisioning("provision"),
                lambda: topics.jobs("t", "update"), lambda: topics.jobs("t", "notify/accepted")):
        with pytest.raises(awsiot_rs.TopicError):
            bad()
    with pytest.raises(awsiot_rs.TopicError, match="cannot be subscribed"):
        topics.validate_filter(topics.rule("r", "x"))


def test_lifecycle_events_parse_into_typed_objects():
    e = topics.LifecycleEvent.parse(
        b'{"clientId":"c1","timestamp":1573002230757,"eventType":"disconnected","sessionIdentifier":"s",'
        b'"principalIdentifier":"p","clientInitiatedDisconnect":true,"disconnectReason":"CLIENT_INITIATED_DISCONNECT",'
        b'"versionNumber":3}'
    )
    assert (e.client_id, e.event_type, e.timestamp, e.disconnect_reason, e.version_number) == (
        "c1", "disconnected", 1573002230757, "CLIENT_INITIATED_DISCONNECT", 3)
    s = topics.LifecycleEvent.parse({"clientId": "c1", "eventType": "subscribed", "timestamp": 1, "topics": ["a/b"]})
    assert s.topics == ["a/b"]
    with pytest.raises(ValueError):
        topics.LifecycleEvent.parse(b"{}")


async def test_the_cores_lifecycle_events_parse_into_typed_objects(local_iot_core, thing):
    core = local_iot_core
    watcher_thing = f"watcher-{uuid.uuid4().hex[:8]}"
    core.register_thing(watcher_thing)
    subject = core.device(thing)
    async with client(core, watcher_thing) as watcher:
        presence = await watcher.subscribe(
            [topics.client_connected(thing), topics.client_disconnected(thing)], qos=1)
        subscriptions = await watcher.subscribe(
            [topics.client_subscribed(thing), topics.client_unsubscribed(thing)], qos=1)

        async def next_event(sub: awsiot_rs.Subscription, topic: str) -> topics.LifecycleEvent:
            message = await within(sub.__anext__())
            assert message.topic == topic
            return topics.LifecycleEvent.parse(message)  # from the Message itself

        before_ms = int(time.time() * 1000)
        c = client(core, thing, reconnect=None)
        await c.connect()
        connected = await next_event(presence, topics.client_connected(thing))
        await c.subscribe("lifecycle/a", qos=1)
        sub_event = await next_event(subscriptions, topics.client_subscribed(thing))
        await c.unsubscribe("lifecycle/a")
        unsub_event = await next_event(subscriptions, topics.client_unsubscribed(thing))
        await c.disconnect()
        disconnected = await next_event(presence, topics.client_disconnected(thing))

        # A second session of the same client, ended by the service.
        c2 = client(core, thing, reconnect=None)
        await c2.connect()
        reconnected = await next_event(presence, topics.client_connected(thing))
        assert core.disconnect(thing)
        kicked = await next_event(presence, topics.client_disconnected(thing))
        await c2.disconnect()
        after_ms = int(time.time() * 1000)

    events = [connected, sub_event, unsub_event, disconnected, reconnected, kicked]
    assert [e.event_type for e in events] == [
        "connected", "subscribed", "unsubscribed", "disconnected", "connected", "disconnected"]
    for e in events:
        assert isinstance(e, topics.LifecycleEvent)
        assert e.client_id == thing
        assert before_ms - 1000 <= e.timestamp <= after_ms + 1000, "timestamp is epoch milliseconds"
        assert e.principal_identifier == subject.certificate_id
        assert e.session_identifier
        assert e.raw["clientId"] == thing
    for e in (connected, disconnected, reconnected, kicked):
        assert isinstance(e.version_number, int)
    for e in (connected, reconnected):  # AWS puts the address in connected events only
        assert e.ip_address is not None and e.ip_address.startswith("127.0.0.1")
    assert disconnected.ip_address is None and kicked.ip_address is None
    assert connected.session_identifier == sub_event.session_identifier == disconnected.session_identifier
    assert reconnected.session_identifier != connected.session_identifier, "a new session"
    assert sub_event.topics == ["lifecycle/a"] and unsub_event.topics == ["lifecycle/a"]
    assert (disconnected.client_initiated_disconnect, disconnected.disconnect_reason) == (
        True, "CLIENT_INITIATED_DISCONNECT")
    assert (kicked.client_initiated_disconnect, kicked.disconnect_reason) == (False, "SERVER_INITIATED_DISCONNECT")
    assert connected.disconnect_reason is None and connected.client_initiated_disconnect is None


# -- Device Shadow ---------------------------------------------------------------------------


async def test_shadow_get_update_delete_round_trip(local_iot_core, thing):
    core = local_iot_core
    async with client(core, thing) as c:
        # The service's messages on the shadow's update topics, in the order it sends them.
        watch = await c.subscribe(topics.shadow(thing, "update") + "/#", qos=1)
        shadow = c.shadow(thing)
        with pytest.raises(awsiot_rs.ShadowRejected) as missing:
            await shadow.get()
        assert missing.value.code == 404 and missing.value.client_token
        doc = await shadow.update(desired={"temp": 20, "mode": "auto"}, reported={"temp": 18})
        assert doc["version"] == 1 and doc["state"]["desired"] == {"temp": 20, "mode": "auto"}
        assert "clientToken" in doc
        assert set(doc["metadata"]["desired"]) == {"temp", "mode"}
        assert isinstance(doc["metadata"]["desired"]["temp"]["timestamp"], int)
        # What the service published for the update: accepted, documents, delta (AWS's order).
        sent = [await within(watch.__anext__()) for _ in range(3)]
        assert [m.topic.rsplit("/", 1)[1] for m in sent] == ["accepted", "documents", "delta"]
        documents = sent[1].json()
        assert documents["previous"] is None, "the update created the shadow"
        assert documents["current"]["version"] == 1
        assert documents["current"]["state"] == {"desired": {"temp": 20, "mode": "auto"}, "reported": {"temp": 18}}
        assert sent[2].json()["state"] == {"temp": 20, "mode": "auto"}

        got = await shadow.get()
        assert got["state"]["delta"] == {"temp": 20, "mode": "auto"}
        assert got["version"] == 1 and got["state"]["reported"] == {"temp": 18}
        doc = await shadow.update(desired={"mode": None})
        assert doc["version"] == 2
        got = await shadow.get()
        assert "mode" not in got["state"]["desired"]
        stored = core.shadow_document(thing)
        assert stored is not None and (stored["state"], stored["metadata"], stored["version"]) == (
            got["state"], got["metadata"], got["version"]), "GET answers what the core holds"
        with pytest.raises(awsiot_rs.ShadowRejected) as conflict:
            await shadow.update(reported={"temp": 19}, version=1)
        assert conflict.value.code == 409 and conflict.value.client_token
        assert conflict.value.message == "Version conflict"
        deleted = await shadow.delete()
        assert deleted["version"] == 2
        assert core.shadow_document(thing) is None
        with pytest.raises(awsiot_rs.ShadowRejected) as gone:
            await shadow.get()
        assert gone.value.code == 404
        doc = await shadow.update(reported={"temp": 1})
        assert doc["version"] == 3, "deleting does not reset the version"


async def test_subscribe_happens_before_the_first_request(local_iot_core, thing, tmp_path):
    log = tmp_path / "traffic.log"
    async with client(local_iot_core, thing, log_file=log) as c:
        await c.shadow(thing).update(reported={"x": 1})
    lines = log.read_text().splitlines()
    suback = next(i for i, line in enumerate(lines) if " IN  SUBACK" in line)
    request = next(i for i, line in enumerate(lines) if "OUT PUBLISH" in line and "/shadow/update\"" in line)
    assert suback < request


async def test_named_and_classic_shadows_are_separate(local_iot_core, thing):
    core = local_iot_core
    async with client(core, thing) as c:
        await c.shadow(thing).update(reported={"classic": True})
        await c.shadow(thing, "config").update(reported={"named": True})
        assert (await c.shadow(thing).get())["state"]["reported"] == {"classic": True}
        assert (await c.shadow(thing, "config").get())["state"]["reported"] == {"named": True}
        with pytest.raises(awsiot_rs.ShadowRejected) as missing:
            await c.shadow(thing, "other").get()
        assert missing.value.code == 404
    assert core.shadow_document(thing)["state"]["reported"] == {"classic": True}  # type: ignore[index]
    assert core.shadow_document(thing, "config")["state"]["reported"] == {"named": True}  # type: ignore[index]


async def test_twenty_concurrent_updates_resolve_to_their_own_answers(local_iot_core, thing):
    async with client(local_iot_core, thing) as c:
        shadow = c.shadow(thing)
        docs = await asyncio.gather(*(shadow.update(reported={f"k{i}": i}) for i in range(20)))
        for i, d in enumerate(docs):
            assert d["state"]["reported"] == {f"k{i}": i}, "each update got its own accepted document"
        assert sorted(d["version"] for d in docs) == list(range(1, 21))
        assert len({d["clientToken"] for d in docs}) == 20
        assert (await shadow.get())["state"]["reported"] == {f"k{i}": i for i in range(20)}


async def test_rejections_surface_as_shadow_rejected(local_iot_core, thing):
    too_deep: dict[str, Any] = {"v": 1}
    for _ in range(6):
        too_deep = {"n": too_deep}
    async with client(local_iot_core, thing) as c:
        with pytest.raises(awsiot_rs.ShadowRejected, match="400") as deep:
            await c.shadow(thing).update(reported=too_deep)
        assert deep.value.code == 400 and "nesting" in deep.value.message and deep.value.client_token
        with pytest.raises(awsiot_rs.ShadowRejected) as large:
            await c.shadow(thing).update(reported={"blob": "x" * 9000})
        assert large.value.code == 413
        assert local_iot_core.shadow_document(thing) is None, "nothing rejected was stored"
        assert (await c.shadow(thing).update(reported={"ok": True}))["version"] == 1


async def test_delta_stream_yields_new_versions_and_survives_a_lost_session(local_iot_core, thing, core_events):
    core = local_iot_core
    app_thing = f"app-{uuid.uuid4().hex[:8]}"
    core.register_thing(app_thing)
    delta_topic = topics.shadow(thing, "update/delta")
    c = client(core, thing, reconnect=awsiot_rs.Reconnect(min_delay=0.2, max_delay=0.5, jitter=False))
    async with c, client(core, app_thing) as app:
        shadow = c.shadow(thing)
        deltas = shadow.deltas()
        first = asyncio.ensure_future(deltas.__anext__())
        await core_events.wait_for(subscribed(thing, delta_topic), STEP)
        await shadow.update(desired={"light": "on"})
        d = await within(first)
        assert d["state"] == {"light": "on"} and d["version"] == 1
        # The service drops the connection; the clean session (and its subscriptions) is gone.
        assert core.disconnect(thing)
        await core_events.wait_for(lambda e: e.kind == "disconnect" and e.client_id == thing, STEP)
        await core_events.wait_for(lambda e: e.kind == "connect" and e.client_id == thing, STEP)
        await core_events.wait_for(subscribed(thing, delta_topic), STEP)
        # The application changes the desired state.
        await app.shadow(thing).update(desired={"light": "off"})
        d = await within(deltas.__anext__())
        assert d["state"] == {"light": "off"} and d["version"] == 2, "the delta stream was re-subscribed"
        await deltas.aclose()


# -- fleet provisioning ----------------------------------------------------------------------


async def test_fleet_provisioning_full_flow(local_iot_core, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    core = local_iot_core
    claim = core.add_provisioning_template("default", TEMPLATE)
    admin = f"admin-{uuid.uuid4().hex[:8]}"  # a device certificate: not limited to one template
    core.register_thing(admin)
    async with client(core, claim.thing_name, operation_timeout=10) as c:
        fp = c.fleet_provisioning()
        keys = await fp.create_keys_and_certificate()
        key_line = keys.private_key.splitlines()[1]  # a line of the key's base64 body
        assert "PRIVATE KEY" in keys.private_key and len(key_line) > 40
        assert key_line not in repr(keys) and "PRIVATE KEY" not in repr(keys)
        assert keys.certificate_ownership_token not in repr(keys)
        assert len(keys.certificate_id) == 64
        with pytest.raises(awsiot_rs.ProvisioningRejected) as bad_params:
            await fp.register_thing("default", {}, certificate_ownership_token=keys.certificate_ownership_token)
        assert (bad_params.value.status_code, bad_params.value.error_code) == (400, "InvalidParameters")
        reg = await fp.register_thing("default", {"SerialNumber": "42"},
                                      certificate_ownership_token=keys.certificate_ownership_token)
        assert reg.thing_name == "thing-42"
        assert reg.device_configuration == {"sampleRate": "60"}
    async with client(core, admin) as c:
        with pytest.raises(awsiot_rs.ProvisioningRejected) as bad:
            await c.fleet_provisioning().register_thing(
                "nope", {}, certificate_ownership_token=keys.certificate_ownership_token)
        assert (bad.value.status_code, bad.value.error_code) == (404, "ResourceNotFound")
    auth = keys.save(tmp_path / "device.pem.crt", tmp_path / "private.pem.key")
    for p in (tmp_path / "device.pem.crt", tmp_path / "private.pem.key"):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    async with client(core, auth=auth, client_id="thing-42") as new:
        assert new.is_connected, "reconnected as the newly provisioned thing"
        assert "thing-42" in core.connected_clients()
        sub = await new.subscribe("provisioned/thing-42", qos=1)
        await new.publish("provisioned/thing-42", "hello", qos=1)
        assert (await within(sub.__anext__())).text() == "hello"
    assert not any(key_line in r.getMessage() or keys.certificate_ownership_token in r.getMessage()
                   for r in caplog.records if r.name.startswith("awsiot_rs"))


async def test_fleet_provisioning_from_a_csr(local_iot_core):
    from cryptography import x509

    from support.certs import ec_key, make_csr

    core = local_iot_core
    claim = core.add_provisioning_template("default", TEMPLATE)
    key = ec_key()
    csr = make_csr(key, "csr-device")
    async with client(core, claim.thing_name) as c:
        fp = c.fleet_provisioning()
        resp = await fp.create_certificate_from_csr(csr)
        cert = x509.load_pem_x509_certificate(resp.certificate_pem.encode())
        assert cert.public_key().public_numbers() == key.public_key().public_numbers()
        ca = x509.load_pem_x509_certificate(core.ca_pem)
        assert cert.issuer == ca.subject, "signed by the core's CA"
        with pytest.raises(awsiot_rs.ProvisioningRejected) as bad:
            await fp.create_certificate_from_csr("not a csr")
        assert (bad.value.status_code, bad.value.error_code) == (400, "InvalidCSR")
        reg = await fp.register_thing("default", {"SerialNumber": "csr"},
                                      certificate_ownership_token=resp.certificate_ownership_token)
    from cryptography.hazmat.primitives import serialization

    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    auth = awsiot_rs.MtlsAuth.from_pem(resp.certificate_pem, key_pem)
    async with client(core, auth=auth, client_id=reg.thing_name) as device:
        assert device.is_connected, "the key never left the device and its certificate connects"
    with pytest.raises(awsiot_rs.ConfigError, match="json"):
        client(core, claim.thing_name).fleet_provisioning(fmt="xml")


async def test_fleet_provisioning_with_cbor_payloads(local_iot_core, tmp_path):
    import cbor2

    core = local_iot_core
    claim = core.add_provisioning_template("default", TEMPLATE)
    watcher_thing = f"watcher-{uuid.uuid4().hex[:8]}"
    core.register_thing(watcher_thing)
    async with client(core, watcher_thing) as watcher:
        requests = await watcher.subscribe(
            ["$aws/certificates/create/cbor", "$aws/provisioning-templates/default/provision/cbor"], qos=1)
        async with client(core, claim.thing_name) as c:
            fp = c.fleet_provisioning(fmt="cbor")
            keys = await fp.create_keys_and_certificate()
            reg = await fp.register_thing("default", {"SerialNumber": "cb"},
                                          certificate_ownership_token=keys.certificate_ownership_token)
            assert reg.thing_name == "thing-cb" and reg.device_configuration == {"sampleRate": "60"}
        seen = [await within(requests.__anext__()) for _ in range(2)]
    assert [m.topic for m in seen] == [
        "$aws/certificates/create/cbor", "$aws/provisioning-templates/default/provision/cbor"]
    provision = cbor2.loads(seen[1].payload)
    assert provision["parameters"] == {"SerialNumber": "cb"}, "the request was CBOR"
    assert provision["certificateOwnershipToken"] == keys.certificate_ownership_token
    auth = keys.save(tmp_path / "c.crt", tmp_path / "c.key")
    assert keys.private_key.splitlines()[1] not in repr(auth)
    async with client(core, auth=auth, client_id="thing-cb") as device:
        assert device.is_connected


# -- jobs ------------------------------------------------------------------------------------


async def test_jobs_flow(local_iot_core, thing, core_events):
    core = local_iot_core
    async with client(core, thing) as c:
        jobs = c.jobs(thing)
        assert await jobs.start_next() is None
        assert await jobs.describe() is None, "no $next execution"
        with pytest.raises(awsiot_rs.JobRejected) as unknown:
            await jobs.describe("job-1")
        assert unknown.value.code == "ResourceNotFound"
        notes = jobs.notify_next()
        first = asyncio.ensure_future(notes.__anext__())
        await core_events.wait_for(subscribed(thing, topics.jobs(thing, "notify-next")), STEP)
        core.add_job(thing, "job-1", {"op": "reboot"})
        note = await within(first)
        assert note["execution"]["jobId"] == "job-1" and note["execution"]["status"] == "QUEUED"
        assert note["execution"]["jobDocument"] == {"op": "reboot"}
        pending = await jobs.get_pending()
        assert [j["jobId"] for j in pending["queuedJobs"]] == ["job-1"] and pending["inProgressJobs"] == []
        ex = await jobs.start_next()
        assert ex is not None and ex["status"] == "IN_PROGRESS" and ex["jobDocument"] == {"op": "reboot"}
        described = await jobs.describe("job-1")
        assert described is not None and described["jobId"] == "job-1" and described["status"] == "IN_PROGRESS"
        assert described["versionNumber"] == ex["versionNumber"]
        with pytest.raises(awsiot_rs.JobRejected) as mismatch:
            await jobs.update("job-1", "SUCCEEDED", expected_version=99)
        assert mismatch.value.code == "VersionMismatch" and mismatch.value.client_token
        await jobs.update("job-1", "SUCCEEDED", expected_version=ex["versionNumber"])
        assert core.job_execution(thing, "job-1")["status"] == "SUCCEEDED"  # type: ignore[index]
        emptied = await within(notes.__anext__())
        assert "execution" not in emptied, "notify-next says nothing is left"
        pending = await jobs.get_pending()
        assert pending["inProgressJobs"] == [] and pending["queuedJobs"] == []
        await notes.aclose()
