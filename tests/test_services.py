"""AWS IoT services over MQTT against the fakes on mosquitto: shadow, fleet provisioning,
jobs, reserved topics, lifecycle events."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import stat
import uuid

import pytest

import awsiot_rs
from awsiot_rs import topics
from support.aws_fakes import JobsService, ProvisioningService, ShadowService
from support.clients import make_client

pytestmark = pytest.mark.broker


#: Clients of the session broker's plain listener: ``client(broker.port, **overrides)``.
client = functools.partial(make_client, operation_timeout=5)


@pytest.fixture
def thing() -> str:
    return f"thing-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def shadow_service(broker, thing):  # type: ignore[no-untyped-def]
    svc = ShadowService("127.0.0.1", broker.port, thing_names=[thing])
    svc.start()
    yield svc
    svc.stop()


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


async def test_shadow_get_update_delete_round_trip(broker, shadow_service, thing):
    async with client(broker.port) as c:
        shadow = c.shadow(thing)
        with pytest.raises(awsiot_rs.ShadowRejected) as missing:
            await shadow.get()
        assert missing.value.code == 404
        doc = await shadow.update(desired={"temp": 20, "mode": "auto"}, reported={"temp": 18})
        assert doc["version"] == 1 and doc["state"]["desired"] == {"temp": 20, "mode": "auto"}
        assert "clientToken" in doc
        got = await shadow.get()
        assert got["state"]["delta"] == {"temp": 20, "mode": "auto"}
        doc = await shadow.update(desired={"mode": None})
        assert doc["version"] == 2
        got = await shadow.get()
        assert "mode" not in got["state"]["desired"]
        with pytest.raises(awsiot_rs.ShadowRejected) as conflict:
            await shadow.update(reported={"temp": 19}, version=1)
        assert conflict.value.code == 409 and conflict.value.client_token
        deleted = await shadow.delete()
        assert deleted["version"] == 2
        doc = await shadow.update(reported={"temp": 1})
        assert doc["version"] == 3, "deleting does not reset the version"


async def test_subscribe_happens_before_the_first_request(broker, shadow_service, thing, tmp_path):
    log = tmp_path / "traffic.log"
    async with client(broker.port, log_file=log) as c:
        await c.shadow(thing).update(reported={"x": 1})
    lines = log.read_text().splitlines()
    suback = next(i for i, line in enumerate(lines) if " IN  SUBACK" in line)
    request = next(i for i, line in enumerate(lines) if "OUT PUBLISH" in line and "/shadow/update\"" in line)
    assert suback < request


async def test_named_and_classic_shadows_are_separate(broker, shadow_service, thing):
    async with client(broker.port) as c:
        await c.shadow(thing).update(reported={"classic": True})
        await c.shadow(thing, "config").update(reported={"named": True})
        assert (await c.shadow(thing).get())["state"]["reported"] == {"classic": True}
        assert (await c.shadow(thing, "config").get())["state"]["reported"] == {"named": True}


async def test_twenty_concurrent_updates_resolve_to_their_own_answers(broker, shadow_service, thing):
    async with client(broker.port) as c:
        shadow = c.shadow(thing)
        docs = await asyncio.gather(*(shadow.update(reported={f"k{i}": i}) for i in range(20)))
        for i, d in enumerate(docs):
            assert d["state"]["reported"] == {f"k{i}": i}, "each update got its own accepted document"
        assert sorted(d["version"] for d in docs) == list(range(1, 21))
        assert len({d["clientToken"] for d in docs}) == 20


async def test_duplicates_and_foreign_tokens_are_ignored(broker, shadow_service, thing):
    async with client(broker.port) as c:
        shadow = c.shadow(thing)
        shadow_service.duplicate_responses = True
        shadow_service.wrong_token_first = True
        d1 = await shadow.update(reported={"a": 1})
        d2 = await shadow.update(reported={"a": 2})
        assert (d1["version"], d2["version"]) == (1, 2)
        assert d1["clientToken"] != d2["clientToken"]


async def test_no_answer_times_out_and_the_client_keeps_working(broker, shadow_service, thing):
    async with client(broker.port) as c:
        shadow_service.drop_next(1)
        with pytest.raises(awsiot_rs.OperationTimeout):
            await asyncio.wait_for(c._request(shadow_service_topic(thing), {"state": {"reported": {"a": 1}}},
                                              shadow_service_topic(thing) + "/accepted", shadow_service_topic(thing) + "/rejected",
                                              timeout=0.5), 5)
        assert (await c.shadow(thing).update(reported={"a": 2}))["version"] == 1


def shadow_service_topic(thing: str) -> str:
    return topics.shadow(thing, "update")


async def test_rejections_surface_as_shadow_rejected(broker, shadow_service, thing):
    async with client(broker.port) as c:
        shadow_service.reject_next(code=400, message="Missing required node: state")
        with pytest.raises(awsiot_rs.ShadowRejected, match="400"):
            await c.shadow(thing).update(reported={"x": 1})


async def test_delta_stream_yields_new_versions_and_survives_a_lost_session(pki, tmp_path, thing):
    from support.mosquitto import Mosquitto

    private = Mosquitto(pki, tmp_path / "b")
    private.start()
    svc = ShadowService("127.0.0.1", private.port, thing_names=[thing])
    svc.start()
    try:
        c = client(private.port, reconnect=awsiot_rs.Reconnect(min_delay=0.2, max_delay=0.5, jitter=False), keep_alive=5)
        async with c:
            shadow = c.shadow(thing)
            deltas = shadow.deltas()
            first = asyncio.ensure_future(deltas.__anext__())
            await asyncio.sleep(0.3)
            await shadow.update(desired={"light": "on"})
            d = await asyncio.wait_for(first, 5)
            assert d["state"] == {"light": "on"}
            await asyncio.to_thread(private.restart)  # the broker forgets every session
            await asyncio.to_thread(svc.wait_ready, 10)
            for _ in range(100):
                if c.is_connected:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            svc.cloud_update(thing, {"desired": {"light": "off"}})
            d = await asyncio.wait_for(deltas.__anext__(), 5)
            assert d["state"] == {"light": "off"}, "the delta stream was re-subscribed after the lost session"
            await deltas.aclose()
    finally:
        svc.stop()
        private.stop()


async def test_fleet_provisioning_full_flow(broker, pki, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    svc = ProvisioningService("127.0.0.1", broker.port, ca_cert_path=pki.ca_cert, ca_key_path=pki.ca_key)
    svc.private_key_marker = "S3NTINEL-KEY"
    svc.start()
    try:
        claim = awsiot_rs.MtlsAuth(pki.client_cert, pki.client_key)
        async with awsiot_rs.Client("localhost", port=broker.mtls_port, ca=pki.ca_cert, auth=claim, operation_timeout=10) as c:
            fp = c.fleet_provisioning()
            keys = await fp.create_keys_and_certificate()
            assert "S3NTINEL" not in repr(keys) and "PRIVATE KEY" not in repr(keys)
            reg = await fp.register_thing("default", {"SerialNumber": "42"},
                                          certificate_ownership_token=keys.certificate_ownership_token)
            assert reg.thing_name == "thing-42"
            with pytest.raises(awsiot_rs.ProvisioningRejected) as bad:
                await fp.register_thing("nope", {}, certificate_ownership_token=keys.certificate_ownership_token)
            assert bad.value.status_code in (400, 404)
        auth = keys.save(tmp_path / "device.pem.crt", tmp_path / "private.pem.key")
        for p in (tmp_path / "device.pem.crt", tmp_path / "private.pem.key"):
            assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
        async with awsiot_rs.Client("localhost", port=broker.mtls_port, ca=pki.ca_cert, auth=auth, client_id="thing-42") as new:
            assert new.is_connected, "reconnected as the newly provisioned thing"
    finally:
        svc.stop()
    assert not any("S3NTINEL" in r.getMessage() for r in caplog.records if r.name.startswith("awsiot_rs"))


async def test_fleet_provisioning_from_a_csr(broker, pki):
    from cryptography import x509

    from support.certs import ec_key, make_csr

    key = ec_key()
    csr = make_csr(key, "csr-device")
    svc = ProvisioningService("127.0.0.1", broker.port, ca_cert_path=pki.ca_cert, ca_key_path=pki.ca_key)
    svc.start()
    try:
        async with client(broker.port) as c:
            resp = await c.fleet_provisioning().create_certificate_from_csr(csr)
            cert = x509.load_pem_x509_certificate(resp.certificate_pem.encode())
            assert cert.public_key().public_numbers() == key.public_key().public_numbers()
            with pytest.raises(awsiot_rs.ProvisioningRejected):
                await c.fleet_provisioning().create_certificate_from_csr("not a csr")
    finally:
        svc.stop()
    with pytest.raises(awsiot_rs.ConfigError, match="json"):
        client(broker.port).fleet_provisioning(fmt="xml")


async def test_fleet_provisioning_with_cbor_payloads(broker, pki, tmp_path):
    svc = ProvisioningService("127.0.0.1", broker.port, ca_cert_path=pki.ca_cert, ca_key_path=pki.ca_key)
    svc.start()
    try:
        async with client(broker.port) as c:
            fp = c.fleet_provisioning(fmt="cbor")
            keys = await fp.create_keys_and_certificate()
            reg = await fp.register_thing("default", {"SerialNumber": "cb"},
                                          certificate_ownership_token=keys.certificate_ownership_token)
            assert reg.thing_name == "thing-cb"
        topics_seen = [r.topic for r in svc.requests]
        assert topics_seen[0] == "$aws/certificates/create/cbor"
        assert topics_seen[1] == "$aws/provisioning-templates/default/provision/cbor"
        assert svc.requests[1].payload["parameters"] == {"SerialNumber": "cb"}, "the request was CBOR the fake decoded"
        auth = keys.save(tmp_path / "c.crt", tmp_path / "c.key")
        assert "S3NTINEL" not in repr(auth)
    finally:
        svc.stop()


async def test_jobs_flow(broker, thing):
    svc = JobsService("127.0.0.1", broker.port, thing_names=[thing])
    svc.start()
    try:
        async with client(broker.port) as c:
            jobs = c.jobs(thing)
            assert await jobs.start_next() is None
            notes = jobs.notify_next()
            first = asyncio.ensure_future(notes.__anext__())
            await asyncio.sleep(0.3)
            svc.add_job(thing, "job-1", {"op": "reboot"})
            note = await asyncio.wait_for(first, 5)
            assert note["execution"]["jobId"] == "job-1"
            pending = await jobs.get_pending()
            assert [j["jobId"] for j in pending["queuedJobs"]] == ["job-1"]
            ex = await jobs.start_next()
            assert ex is not None and ex["status"] == "IN_PROGRESS" and ex["jobDocument"] == {"op": "reboot"}
            described = await jobs.describe("job-1")
            assert described is not None and described["jobId"] == "job-1"
            with pytest.raises(awsiot_rs.JobRejected) as mismatch:
                await jobs.update("job-1", "SUCCEEDED", expected_version=99)
            assert mismatch.value.code == "VersionMismatch"
            await jobs.update("job-1", "SUCCEEDED", expected_version=ex["versionNumber"])
            pending = await jobs.get_pending()
            assert pending["inProgressJobs"] == [] and pending["queuedJobs"] == []
            await notes.aclose()
    finally:
        svc.stop()
