"""Other MQTT clients against ``awsiot_rs.local``: paho-mqtt (a plain MQTT 3.1.1 client) and
the official AWS IoT Device SDK (``awsiotsdk`` on ``awscrt``), over loopback.

The core comes from the wheel's pytest plugin (``local_iot_core``); these clients are blocking,
so the tests are plain functions and wait on ``threading.Event``s set by the clients' callbacks.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest

from awsiot_rs.local import CoreEvent, LocalIoTCore

STEP = 10.0


class Paho:
    """A paho-mqtt client connected over mutual TLS, with its messages in a queue."""

    def __init__(self, core: LocalIoTCore, thing: str) -> None:
        dev = core.register_thing(thing)
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.subacks: queue.Queue[list[Any]] = queue.Queue()
        self.pubacks: queue.Queue[int] = queue.Queue()
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=thing, protocol=paho.MQTTv311)
        c.tls_set(ca_certs=core.ca_file, certfile=dev.cert_file, keyfile=dev.key_file)
        c.on_connect = lambda cl, ud, flags, rc, props: self.connected.set()
        c.on_disconnect = lambda cl, ud, flags, rc, props: self.disconnected.set()
        c.on_message = lambda cl, ud, msg: self.messages.put(msg)
        c.on_subscribe = lambda cl, ud, mid, codes, props: self.subacks.put(list(codes))
        c.on_publish = lambda cl, ud, mid, rc, props: self.pubacks.put(mid)
        self.client = c
        c.connect(core.endpoint, core.ports["mqtt"], keepalive=60)
        c.loop_start()
        assert self.connected.wait(STEP), "paho did not connect"

    def subscribe(self, topic_filter: str, qos: int = 1) -> list[Any]:
        self.client.subscribe(topic_filter, qos)
        return self.subacks.get(timeout=STEP)

    def next_message(self) -> paho.MQTTMessage:
        return self.messages.get(timeout=STEP)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def paho_client(local_iot_core: LocalIoTCore) -> Iterator[Any]:
    made: list[Paho] = []

    def make(thing: str) -> Paho:
        p = Paho(local_iot_core, thing)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


# -- paho-mqtt -----------------------------------------------------------------------------------


def test_paho_publishes_and_subscribes_at_qos1(paho_client: Any) -> None:
    p = paho_client("paho-1")
    codes = p.subscribe("paho/t", qos=1)
    assert [int(c.value) for c in codes] == [1]
    info = p.client.publish("paho/t", b"hello", qos=1)
    assert p.pubacks.get(timeout=STEP) == info.mid  # PUBACK received
    msg = p.next_message()
    assert (msg.topic, msg.payload, msg.qos) == ("paho/t", b"hello", 1)


def test_paho_subscribe_at_qos2_is_granted_qos1(paho_client: Any) -> None:
    p = paho_client("paho-q2sub")
    assert [int(c.value) for c in p.subscribe("paho/q2", qos=2)] == [1]


def test_paho_wildcards_do_not_match_dollar_topics(paho_client: Any) -> None:
    everything = paho_client("paho-wild")
    assert [int(c.value) for c in everything.subscribe("#")] == [1]
    shadow = paho_client("paho-shadow")
    accepted = "$aws/things/paho-shadow/shadow/update/accepted"
    shadow.subscribe(accepted)
    shadow.client.publish("$aws/things/paho-shadow/shadow/update", json.dumps({"state": {"reported": {"on": 1}}}), qos=1)
    got = shadow.next_message()
    assert got.topic == accepted and json.loads(got.payload)["state"]["reported"] == {"on": 1}
    # '#' saw neither the request nor the answer: its first message is this later one.
    shadow.client.publish("plain/sentinel", b"s", qos=1)
    assert everything.next_message().topic == "plain/sentinel"


def test_paho_cannot_subscribe_to_rule_topics(paho_client: Any) -> None:
    p = paho_client("paho-rules")
    codes = p.subscribe("$aws/rules/MyRule/#")
    assert codes[0].is_failure, f"the core granted {codes}"


def test_paho_qos2_publish_is_disconnected(paho_client: Any, local_iot_core: LocalIoTCore) -> None:
    p = paho_client("paho-qos2")
    p.client.reconnect_delay_set(60, 60)  # stay disconnected for the assertions
    events = local_iot_core.events()

    async def disconnect_event() -> CoreEvent:
        try:
            return await events.wait_for(lambda e: e.kind == "disconnect" and e.client_id == "paho-qos2", STEP)
        finally:
            await events.aclose()

    p.client.publish("paho/q2", b"x", qos=2)
    assert p.disconnected.wait(STEP), "a QoS 2 PUBLISH did not disconnect the client"
    ev = asyncio.run(disconnect_event())
    assert ev.reason is not None and ev.reason != "CLIENT_INITIATED_DISCONNECT"
    assert "paho-qos2" not in local_iot_core.connected_clients()


# -- the AWS IoT Device SDK (awsiotsdk / awscrt) ---------------------------------------------------

awscrt = pytest.importorskip("awscrt", reason="awsiotsdk (awscrt) is not installed: pip install awsiotsdk")
awsiot = pytest.importorskip("awsiot", reason="awsiotsdk is not installed: pip install awsiotsdk")

from awscrt import auth as crt_auth  # noqa: E402
from awscrt import mqtt as crt_mqtt  # noqa: E402
from awsiot import iotidentity, iotshadow, mqtt_connection_builder  # noqa: E402


def _connect(connection: Any) -> Any:
    result = connection.connect().result(STEP)
    return result


def _disconnect(connection: Any) -> None:
    connection.disconnect().result(STEP)


def test_awsiotsdk_mtls_publish_and_subscribe(local_iot_core: LocalIoTCore) -> None:
    dev = local_iot_core.register_thing("sdk-mtls")
    conn = mqtt_connection_builder.mtls_from_path(
        endpoint="localhost", port=local_iot_core.ports["mqtt"], cert_filepath=dev.cert_file,
        pri_key_filepath=dev.key_file, ca_filepath=local_iot_core.ca_file, client_id="sdk-mtls",
        clean_session=True, keep_alive_secs=30,
    )
    result = _connect(conn)
    assert result["session_present"] is False
    received: queue.Queue[tuple[str, bytes]] = queue.Queue()
    fut, _ = conn.subscribe("sdk/t", crt_mqtt.QoS.AT_LEAST_ONCE, lambda topic, payload, **kw: received.put((topic, payload)))
    assert fut.result(STEP)["qos"] == crt_mqtt.QoS.AT_LEAST_ONCE
    fut, _ = conn.publish("sdk/t", b"from-sdk", crt_mqtt.QoS.AT_LEAST_ONCE)
    fut.result(STEP)
    assert received.get(timeout=STEP) == ("sdk/t", b"from-sdk")
    assert "sdk-mtls" in local_iot_core.connected_clients()
    _disconnect(conn)


def test_awsiotsdk_websocket_with_sigv4_static_credentials(local_iot_core: LocalIoTCore) -> None:
    local_iot_core.add_credentials("AKIDSDKTEST", "sdk-secret-key", "sdk-session-token")
    provider = crt_auth.AwsCredentialsProvider.new_static("AKIDSDKTEST", "sdk-secret-key", "sdk-session-token")
    conn = mqtt_connection_builder.websockets_with_default_aws_signing(
        region="us-west-2", credentials_provider=provider, endpoint="localhost",
        port=local_iot_core.ports["wss"], ca_filepath=local_iot_core.ca_file, client_id="sdk-wss", clean_session=True,
    )
    _connect(conn)
    received: queue.Queue[bytes] = queue.Queue()
    fut, _ = conn.subscribe("sdk/wss", crt_mqtt.QoS.AT_LEAST_ONCE, lambda topic, payload, **kw: received.put(payload))
    fut.result(STEP)
    fut, _ = conn.publish("sdk/wss", b"over-wss", crt_mqtt.QoS.AT_LEAST_ONCE)
    fut.result(STEP)
    assert received.get(timeout=STEP) == b"over-wss"
    assert "sdk-wss" in local_iot_core.connected_clients()
    _disconnect(conn)


def test_awsiotsdk_websocket_with_a_wrong_secret_is_refused(local_iot_core: LocalIoTCore) -> None:
    local_iot_core.add_credentials("AKIDSDKTEST", "sdk-secret-key")
    provider = crt_auth.AwsCredentialsProvider.new_static("AKIDSDKTEST", "not-the-secret")
    conn = mqtt_connection_builder.websockets_with_default_aws_signing(
        region="us-west-2", credentials_provider=provider, endpoint="localhost",
        port=local_iot_core.ports["wss"], ca_filepath=local_iot_core.ca_file, client_id="sdk-wss-bad",
    )
    with pytest.raises(Exception) as info:  # awscrt raises its own AwsCrtError
        conn.connect().result(STEP)
    assert "UPGRADE" in str(info.value).upper() or "WEBSOCKET" in str(info.value).upper()
    assert local_iot_core.connected_clients() == []


def _sdk_mtls(core: LocalIoTCore, thing: str, cert_file: str, key_file: str) -> Any:
    conn = mqtt_connection_builder.mtls_from_path(
        endpoint="localhost", port=core.ports["mqtt"], cert_filepath=cert_file, pri_key_filepath=key_file,
        ca_filepath=core.ca_file, client_id=thing, clean_session=True,
    )
    _connect(conn)
    return conn


def test_awsiotsdk_shadow_client_update_and_get(local_iot_core: LocalIoTCore) -> None:
    dev = local_iot_core.register_thing("sdk-shadow")
    conn = _sdk_mtls(local_iot_core, "sdk-shadow", dev.cert_file, dev.key_file)
    shadow = iotshadow.IotShadowClient(conn)
    updated: queue.Queue[Any] = queue.Queue()
    got: queue.Queue[Any] = queue.Queue()
    deltas: queue.Queue[Any] = queue.Queue()
    q1 = crt_mqtt.QoS.AT_LEAST_ONCE
    fut, _ = shadow.subscribe_to_update_shadow_accepted(
        iotshadow.UpdateShadowSubscriptionRequest(thing_name="sdk-shadow"), q1, updated.put)
    fut.result(STEP)
    fut, _ = shadow.subscribe_to_get_shadow_accepted(
        iotshadow.GetShadowSubscriptionRequest(thing_name="sdk-shadow"), q1, got.put)
    fut.result(STEP)
    fut, _ = shadow.subscribe_to_shadow_delta_updated_events(
        iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name="sdk-shadow"), q1, deltas.put)
    fut.result(STEP)
    token = uuid.uuid4().hex
    shadow.publish_update_shadow(
        iotshadow.UpdateShadowRequest(
            thing_name="sdk-shadow", client_token=token,
            state=iotshadow.ShadowState(reported={"color": "red"}, desired={"color": "blue"}),
        ),
        q1,
    ).result(STEP)
    response = updated.get(timeout=STEP)
    assert response.client_token == token and response.version == 1
    assert response.state.reported == {"color": "red"} and response.state.desired == {"color": "blue"}
    delta = deltas.get(timeout=STEP)
    assert delta.state == {"color": "blue"} and delta.version == 1
    shadow.publish_get_shadow(iotshadow.GetShadowRequest(thing_name="sdk-shadow", client_token="get-1"), q1).result(STEP)
    document = got.get(timeout=STEP)
    assert document.client_token == "get-1" and document.version == 1
    assert document.state.delta == {"color": "blue"}
    assert local_iot_core.shadow_document("sdk-shadow")["version"] == 1  # type: ignore[index]
    _disconnect(conn)


TEMPLATE = {
    "Parameters": {"SerialNumber": {"Type": "String"}},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {"ThingName": {"Fn::Join": ["", ["sdk-", {"Ref": "SerialNumber"}]]}},
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"},
        },
    },
}


def test_awsiotsdk_identity_client_provisions_a_device_that_connects(local_iot_core: LocalIoTCore, tmp_path) -> None:  # type: ignore[no-untyped-def]
    claim = local_iot_core.add_provisioning_template("SdkTemplate", TEMPLATE, claim_thing="sdk-claim")
    conn = _sdk_mtls(local_iot_core, "sdk-claim", claim.cert_file, claim.key_file)
    identity = iotidentity.IotIdentityClient(conn)
    q1 = crt_mqtt.QoS.AT_LEAST_ONCE
    created: queue.Queue[Any] = queue.Queue()
    registered: queue.Queue[Any] = queue.Queue()
    rejected: queue.Queue[Any] = queue.Queue()
    identity.subscribe_to_create_keys_and_certificate_accepted(
        iotidentity.CreateKeysAndCertificateSubscriptionRequest(), q1, created.put)[0].result(STEP)
    identity.subscribe_to_create_keys_and_certificate_rejected(
        iotidentity.CreateKeysAndCertificateSubscriptionRequest(), q1, rejected.put)[0].result(STEP)
    identity.subscribe_to_register_thing_accepted(
        iotidentity.RegisterThingSubscriptionRequest(template_name="SdkTemplate"), q1, registered.put)[0].result(STEP)
    identity.subscribe_to_register_thing_rejected(
        iotidentity.RegisterThingSubscriptionRequest(template_name="SdkTemplate"), q1, rejected.put)[0].result(STEP)
    identity.publish_create_keys_and_certificate(iotidentity.CreateKeysAndCertificateRequest(), q1).result(STEP)
    keys = created.get(timeout=STEP)
    assert keys.certificate_pem.startswith("-----BEGIN CERTIFICATE-----") and len(keys.certificate_id) == 64
    identity.publish_register_thing(
        iotidentity.RegisterThingRequest(
            template_name="SdkTemplate", certificate_ownership_token=keys.certificate_ownership_token,
            parameters={"SerialNumber": "0042"},
        ),
        q1,
    ).result(STEP)
    thing = registered.get(timeout=STEP)
    assert rejected.empty()
    assert thing.thing_name == "sdk-0042"
    _disconnect(conn)
    cert_file, key_file = tmp_path / "new.cert.pem", tmp_path / "new.key"
    cert_file.write_text(keys.certificate_pem)
    key_file.write_text(keys.private_key)
    new_conn = _sdk_mtls(local_iot_core, "sdk-0042", str(cert_file), str(key_file))
    assert "sdk-0042" in local_iot_core.connected_clients()
    _disconnect(new_conn)


# -- botocore's SigV4 presigner + the websockets library (neither is awsiot_rs) -------------------


def _botocore_presigned_url(core: LocalIoTCore, access_key: str, secret_key: str, token: str | None) -> str:
    from botocore.auth import SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"wss://{core.endpoint}:{core.ports['wss']}/mqtt"
    request = AWSRequest(method="GET", url=url)
    SigV4QueryAuth(Credentials(access_key, secret_key, token), "iotdevicegateway", "eu-west-1", expires=300).add_auth(
        request
    )
    return str(request.url)


async def _mqtt_over_websocket(core: LocalIoTCore, url: str) -> bytes:
    """Opens the WebSocket with the `websockets` library, sends CONNECT, returns the first frame."""
    import ssl

    import websockets

    from support import packets

    ctx = ssl.create_default_context(cafile=core.ca_file)
    async with websockets.connect(url, subprotocols=["mqtt"], ssl=ctx) as ws:  # type: ignore[list-item]
        await ws.send(packets.connect("botocore-client"))
        frame = await asyncio.wait_for(ws.recv(), STEP)
        return frame if isinstance(frame, bytes) else frame.encode()


@pytest.mark.parametrize("token", [None, "session-token/with+chars="])
def test_a_botocore_presigned_url_is_accepted_by_the_websocket_listener(
    local_iot_core: LocalIoTCore, token: str | None
) -> None:
    local_iot_core.add_credentials("AKIDBOTOCORE", "botocore/secret+key", session_token=token)
    url = _botocore_presigned_url(local_iot_core, "AKIDBOTOCORE", "botocore/secret+key", token)
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=300" in url
    frame = asyncio.run(_mqtt_over_websocket(local_iot_core, url))
    assert frame == bytes([0x20, 0x02, 0x00, 0x00]), frame  # CONNACK, accepted


def test_a_botocore_presigned_url_with_a_wrong_secret_gets_403_before_any_mqtt(local_iot_core: LocalIoTCore) -> None:
    import websockets

    local_iot_core.add_credentials("AKIDBOTOCORE", "the-right-secret")
    url = _botocore_presigned_url(local_iot_core, "AKIDBOTOCORE", "a-wrong-secret", None)
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        asyncio.run(_mqtt_over_websocket(local_iot_core, url))
    assert refused.value.response.status_code == 403


def test_awsiotsdk_jobs_client_runs_a_job_to_success(local_iot_core: LocalIoTCore) -> None:
    from awsiot import iotjobs

    dev = local_iot_core.register_thing("sdk-jobs")
    conn = _sdk_mtls(local_iot_core, "sdk-jobs", dev.cert_file, dev.key_file)
    jobs = iotjobs.IotJobsClient(conn)
    q1 = crt_mqtt.QoS.AT_LEAST_ONCE
    pending: queue.Queue[Any] = queue.Queue()
    started: queue.Queue[Any] = queue.Queue()
    updated: queue.Queue[Any] = queue.Queue()
    next_changed: queue.Queue[Any] = queue.Queue()
    for subscribe, request, sink in (
        (jobs.subscribe_to_get_pending_job_executions_accepted,
         iotjobs.GetPendingJobExecutionsSubscriptionRequest(thing_name="sdk-jobs"), pending),
        (jobs.subscribe_to_start_next_pending_job_execution_accepted,
         iotjobs.StartNextPendingJobExecutionSubscriptionRequest(thing_name="sdk-jobs"), started),
        (jobs.subscribe_to_update_job_execution_accepted,
         iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name="sdk-jobs", job_id="+"), updated),
        (jobs.subscribe_to_next_job_execution_changed_events,
         iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name="sdk-jobs"), next_changed),
    ):
        fut, _ = subscribe(request, q1, sink.put)
        fut.result(STEP)
    local_iot_core.add_job("sdk-jobs", "job-1", {"operation": "reboot"})
    local_iot_core.add_job("sdk-jobs", "job-2", {"operation": "update"})
    assert next_changed.get(timeout=STEP).execution.job_id == "job-1"
    jobs.publish_get_pending_job_executions(
        iotjobs.GetPendingJobExecutionsRequest(thing_name="sdk-jobs", client_token="p-1"), q1).result(STEP)
    listing = pending.get(timeout=STEP)
    assert [j.job_id for j in listing.queued_jobs] == ["job-1", "job-2"] and listing.client_token == "p-1"
    jobs.publish_start_next_pending_job_execution(
        iotjobs.StartNextPendingJobExecutionRequest(thing_name="sdk-jobs"), q1).result(STEP)
    execution = started.get(timeout=STEP).execution
    assert execution.job_id == "job-1" and execution.job_document == {"operation": "reboot"}
    assert execution.status == "IN_PROGRESS"
    jobs.publish_update_job_execution(
        iotjobs.UpdateJobExecutionRequest(
            thing_name="sdk-jobs", job_id="job-1", status="SUCCEEDED",
            expected_version=execution.version_number),
        q1,
    ).result(STEP)
    updated.get(timeout=STEP)
    changed = next_changed.get(timeout=STEP)
    assert changed.execution.job_id == "job-2"
    state = local_iot_core.job_execution("sdk-jobs", "job-1")
    assert state is not None and state["status"] == "SUCCEEDED"
    _disconnect(conn)
