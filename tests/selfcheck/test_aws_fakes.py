"""Self-checks for ``support.aws_fakes``, driven by a plain paho-mqtt probe.

Nothing here imports ``awsiot_rs``: these tests prove that the fake Device
Shadow, Fleet Provisioning and Jobs services answer like AWS IoT (topics,
payload shapes, error documents) and that their fault knobs work, so tests of
the real client can rely on them.
"""

from __future__ import annotations

import json
import pathlib
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from support.aws_fakes import (
    FakeServiceError,
    JobsService,
    ProvisioningRejection,
    ProvisioningService,
    ShadowService,
)
from support import certs
from support import packets as P
from support.certs import Pki
from support.mosquitto import HOST, Mosquitto, free_ports

pytestmark = pytest.mark.broker

TIMEOUT = 5.0
QUIET = 0.4  # how long "nothing else arrives" is watched for


# --------------------------------------------------------------------------
# A minimal synchronous MQTT probe (paho, independent of awsiot_rs)
# --------------------------------------------------------------------------


class Probe:
    """A paho client that subscribes to some filters and buffers what arrives."""

    def __init__(
        self,
        port: int,
        filters: list[str],
        *,
        host: str = HOST,
        tls: dict[str, str] | None = None,
    ) -> None:
        self._cond = threading.Condition()
        self._inbox: list[tuple[str, Any, float]] = []
        self._connected = threading.Event()
        self._acked: dict[int, bool] = {}  # SUBACK mid -> all granted
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"probe-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv311,
        )
        if tls is not None:
            self.client.tls_set(**tls)
        self._refused: str | None = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        try:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._connected.is_set() or self._refused is not None, TIMEOUT
                )
            if not self._connected.is_set():
                raise ConnectionError(f"probe not connected: {self._refused or 'no CONNACK'}")
            if filters:
                _, mid = self.client.subscribe([(f, 1) for f in filters])
                with self._cond:  # the SUBACK may beat subscribe()'s return
                    assert self._cond.wait_for(lambda: mid in self._acked, TIMEOUT), "no SUBACK"
                    assert self._acked[mid], "probe: subscription refused"
        except BaseException:
            self.close()
            raise

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._cond:
            if rc.is_failure:
                self._refused = f"CONNACK {rc}"
            else:
                self._connected.set()
            self._cond.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._cond:
            if not self._connected.is_set():
                self._refused = f"disconnected before CONNACK ({rc})"
            self._cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._cond:
            self._acked[mid] = not any(rc.is_failure for rc in codes)
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        raw = bytes(msg.payload)
        try:
            payload: Any = json.loads(raw) if raw else None
        except ValueError:
            payload = raw
        with self._cond:
            self._inbox.append((msg.topic, payload, time.monotonic()))
            self._cond.notify_all()

    def publish(self, topic: str, payload: Any = b"") -> float:
        """Publish (QoS 1) a dict as JSON, or raw bytes/str; return the send time."""
        data = json.dumps(payload) if isinstance(payload, dict) else payload
        sent = time.monotonic()
        info = self.client.publish(topic, data, qos=1)
        info.wait_for_publish(TIMEOUT)
        return sent

    def _take(
        self, topic: str, where: Callable[[Any], bool] | None
    ) -> tuple[str, Any, float] | None:
        for i, (t, p, at) in enumerate(self._inbox):
            if t == topic and (where is None or where(p)):
                return self._inbox.pop(i)
        return None

    def expect(
        self,
        topic: str,
        timeout: float = TIMEOUT,
        where: Callable[[Any], bool] | None = None,
    ) -> Any:
        """Return (and consume) the next payload received on ``topic``."""
        return self.expect_timed(topic, timeout, where)[0]

    def expect_timed(
        self,
        topic: str,
        timeout: float = TIMEOUT,
        where: Callable[[Any], bool] | None = None,
    ) -> tuple[Any, float]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self._take(topic, where)
                if found is not None:
                    return found[1], found[2]
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [t for t, _, _ in self._inbox]
                    raise AssertionError(f"nothing on {topic} within {timeout}s; buffered: {seen}")
                self._cond.wait(left)

    def expect_none(self, topic: str, within: float = QUIET) -> None:
        """Assert nothing (more) arrives on ``topic`` within ``within`` seconds."""
        time.sleep(within)
        with self._cond:
            extra = [p for t, p, _ in self._inbox if t == topic]
        assert not extra, f"unexpected message(s) on {topic}: {extra}"

    def count(self, topic: str) -> int:
        with self._cond:
            return sum(1 for t, _, _ in self._inbox if t == topic)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def probe(broker: Mosquitto) -> Iterator[Callable[..., Probe]]:
    made: list[Probe] = []

    def make(*filters: str) -> Probe:
        p = Probe(broker.port, list(filters))
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture
def shadow(broker: Mosquitto) -> Iterator[ShadowService]:
    with ShadowService(broker.host, broker.port) as service:
        yield service


@pytest.fixture
def thing() -> str:
    return f"thing-{uuid.uuid4().hex[:12]}"


def now_s() -> int:
    return int(time.time())


def assert_recent(ts: Any) -> None:
    assert isinstance(ts, int) and not isinstance(ts, bool)
    assert abs(ts - now_s()) <= 5


# --------------------------------------------------------------------------
# Shadow
# --------------------------------------------------------------------------


class ShadowClient:
    """Tiny request/response helper on top of a probe for one shadow."""

    def __init__(self, probe: Probe, thing: str, name: str | None = None) -> None:
        self.probe = probe
        self.prefix = ShadowService.topic_prefix(thing, name)

    def send(self, op: str, payload: Any = b"") -> None:
        self.probe.publish(f"{self.prefix}/{op}", payload)

    def expect(self, suffix: str, **kwargs: Any) -> Any:
        return self.probe.expect(f"{self.prefix}/{suffix}", **kwargs)

    def update(self, state: dict[str, Any], token: str | None = None, **extra: Any) -> Any:
        body: dict[str, Any] = {"state": state, **extra}
        if token is not None:
            body["clientToken"] = token
        self.send("update", body)
        return self.expect("update/accepted")


@pytest.fixture
def shadow_client(probe: Callable[..., Probe], thing: str) -> ShadowClient:
    return ShadowClient(probe(f"$aws/things/{thing}/shadow/#"), thing)


def test_shadow_get_missing_is_404_with_client_token(
    shadow: ShadowService, shadow_client: ShadowClient, thing: str
) -> None:
    shadow_client.send("get", {"clientToken": "tok-1"})
    rejected = shadow_client.expect("get/rejected")
    assert rejected["code"] == 404
    assert rejected["message"] == f"No shadow exists with name: '{thing}'"
    assert rejected["clientToken"] == "tok-1"
    assert_recent(rejected["timestamp"])
    # An empty payload is allowed; without a token none is echoed.
    shadow_client.send("get")
    rejected = shadow_client.expect("get/rejected")
    assert rejected["code"] == 404 and "clientToken" not in rejected
    shadow_client.probe.expect_none(f"{shadow_client.prefix}/get/accepted")


def test_shadow_first_update_accepted_document(
    shadow: ShadowService, shadow_client: ShadowClient
) -> None:
    state = {"desired": {"color": "red", "light": {"on": True}}}
    accepted = shadow_client.update(state, token="t-1")
    ts = accepted["timestamp"]
    assert_recent(ts)
    assert accepted == {
        "state": state,
        "metadata": {
            "desired": {"color": {"timestamp": ts}, "light": {"on": {"timestamp": ts}}}
        },
        "version": 1,
        "timestamp": ts,
        "clientToken": "t-1",
    }
    # Nothing is reported, so every desired key is in the delta.
    delta = shadow_client.expect("update/delta")
    assert delta == {
        "version": 1,
        "timestamp": ts,
        "state": {"color": "red", "light": {"on": True}},
        "metadata": {"color": {"timestamp": ts}, "light": {"on": {"timestamp": ts}}},
        "clientToken": "t-1",
    }
    documents = shadow_client.expect("update/documents")
    assert "previous" not in documents
    assert documents["current"] == {
        "state": state,
        "metadata": accepted["metadata"],
        "version": 1,
    }
    assert documents["clientToken"] == "t-1" and documents["timestamp"] == ts


def test_shadow_accepted_metadata_covers_only_updated_leaves(
    shadow: ShadowService, shadow_client: ShadowClient
) -> None:
    shadow_client.update({"reported": {"a": 1, "b": 2}})
    accepted = shadow_client.update({"reported": {"b": 3}})
    ts = accepted["timestamp"]
    assert accepted["state"] == {"reported": {"b": 3}}
    assert accepted["metadata"] == {"reported": {"b": {"timestamp": ts}}}
    assert accepted["version"] == 2
    assert "clientToken" not in accepted


def test_shadow_partial_merge_null_deletes_and_arrays_replace(
    shadow: ShadowService, shadow_client: ShadowClient, thing: str
) -> None:
    shadow_client.update(
        {"reported": {"a": 1, "nested": {"x": 1, "y": 2}, "list": [1, 2, 3]}}
    )
    accepted = shadow_client.update(
        {"reported": {"a": None, "nested": {"y": None, "z": 3}, "list": [{"k": "v"}]}}
    )
    ts = accepted["timestamp"]
    # The accepted echo keeps the nulls and gives them metadata.
    assert accepted["state"]["reported"]["a"] is None
    assert accepted["metadata"]["reported"]["a"] == {"timestamp": ts}
    # Array metadata is per element.
    assert accepted["metadata"]["reported"]["list"] == [{"k": {"timestamp": ts}}]
    doc = shadow.get_document(thing)
    assert doc is not None
    assert doc["state"] == {"reported": {"nested": {"x": 1, "z": 3}, "list": [{"k": "v"}]}}
    assert set(doc["metadata"]["reported"]) == {"nested", "list"}
    assert set(doc["metadata"]["reported"]["nested"]) == {"x", "z"}

    shadow_client.send("get", {"clientToken": "g"})
    got = shadow_client.expect("get/accepted")
    assert got["state"] == {"reported": {"nested": {"x": 1, "z": 3}, "list": [{"k": "v"}]}}
    assert got["metadata"] == doc["metadata"]
    assert got["version"] == 2 and got["clientToken"] == "g"


def test_shadow_null_section_removes_it(
    shadow: ShadowService, shadow_client: ShadowClient, thing: str
) -> None:
    shadow_client.update({"desired": {"a": 1}, "reported": {"a": 0}})
    shadow_client.expect("update/delta")
    accepted = shadow_client.update({"desired": None})
    assert accepted["state"] == {"desired": None}
    assert accepted["metadata"] == {"desired": {"timestamp": accepted["timestamp"]}}
    doc = shadow.get_document(thing)
    assert doc is not None
    assert doc["state"] == {"reported": {"a": 0}}
    assert "desired" not in doc["metadata"]
    shadow_client.send("get")
    got = shadow_client.expect("get/accepted")
    assert got["state"] == {"reported": {"a": 0}}  # no desired, no delta
    # Removing desired leaves nothing to differ: no second delta.
    shadow_client.probe.expect_none(f"{shadow_client.prefix}/update/delta")
    # A section whose last key is deleted disappears too.
    shadow_client.update({"reported": {"a": None}})
    shadow_client.send("get")
    got = shadow_client.expect("get/accepted")
    assert got["state"] == {} and got["metadata"] == {} and got["version"] == 3


def test_shadow_delta_only_for_differing_keys(
    shadow: ShadowService, shadow_client: ShadowClient
) -> None:
    shadow_client.update(
        {"reported": {"same": 1, "obj": {"x": 1, "y": 2}, "arr": [1, 2], "flag": 1}}
    )
    accepted = shadow_client.update(
        {
            "desired": {
                "same": 1,
                "obj": {"x": 1, "y": 3},
                "arr": [1, 2, 3],
                "flag": True,  # JSON true is not 1
                "new": "n",
            }
        },
        token="d",
    )
    ts = accepted["timestamp"]
    delta = shadow_client.expect("update/delta")
    assert delta["state"] == {"obj": {"y": 3}, "arr": [1, 2, 3], "flag": True, "new": "n"}
    assert delta["metadata"] == {
        "obj": {"y": {"timestamp": ts}},
        "arr": [{"timestamp": ts}] * 3,
        "flag": {"timestamp": ts},
        "new": {"timestamp": ts},
    }
    assert delta["version"] == 2 and delta["clientToken"] == "d"

    shadow_client.send("get")
    got = shadow_client.expect("get/accepted")
    assert got["state"]["delta"] == delta["state"]
    assert set(got["state"]) == {"desired", "reported", "delta"}
    assert set(got["metadata"]) == {"desired", "reported"}


def test_shadow_no_delta_when_in_sync(shadow: ShadowService, shadow_client: ShadowClient) -> None:
    shadow_client.update({"desired": {"a": 1}})
    shadow_client.expect("update/delta")
    shadow_client.expect("update/documents")
    accepted = shadow_client.update({"reported": {"a": 1, "extra": 5}})
    assert accepted["version"] == 2
    documents = shadow_client.expect("update/documents")
    assert documents["previous"]["version"] == 1
    assert documents["previous"]["state"] == {"desired": {"a": 1}}
    assert documents["current"]["state"] == {"desired": {"a": 1}, "reported": {"a": 1, "extra": 5}}
    assert documents["current"]["version"] == 2
    # The delta for an update is published before its documents message.
    shadow_client.probe.expect_none(f"{shadow_client.prefix}/update/delta")
    shadow_client.send("get")
    assert "delta" not in shadow_client.expect("get/accepted")["state"]


def test_shadow_version_conflict_409(
    shadow: ShadowService, shadow_client: ShadowClient, thing: str
) -> None:
    shadow_client.update({"reported": {"a": 1}})
    shadow_client.update({"reported": {"a": 2}}, version=1)  # matches: accepted, now 2
    shadow_client.send("update", {"state": {"reported": {"a": 3}}, "version": 1, "clientToken": "c"})
    rejected = shadow_client.expect("update/rejected")
    assert rejected["code"] == 409
    assert rejected["message"] == "Version conflict"
    assert rejected["clientToken"] == "c"
    assert_recent(rejected["timestamp"])
    doc = shadow.get_document(thing)
    assert doc is not None and doc["version"] == 2 and doc["state"]["reported"] == {"a": 2}


def test_shadow_delete_keeps_version_numbering(
    shadow: ShadowService, shadow_client: ShadowClient, thing: str
) -> None:
    shadow_client.update({"reported": {"a": 1}})
    shadow_client.update({"reported": {"a": 2}})
    shadow_client.update({"reported": {"a": 3}})
    shadow_client.send("delete", {"clientToken": "del"})
    deleted = shadow_client.expect("delete/accepted")
    assert deleted["version"] == 3 and deleted["clientToken"] == "del"
    assert set(deleted) == {"version", "timestamp", "clientToken"}
    assert shadow.get_document(thing) is None

    shadow_client.send("get")
    assert shadow_client.expect("get/rejected")["code"] == 404
    shadow_client.send("delete", {"clientToken": "again"})
    again = shadow_client.expect("delete/rejected")
    assert again["code"] == 404 and again["clientToken"] == "again"

    accepted = shadow_client.update({"reported": {"b": 1}})
    assert accepted["version"] == 4  # not reset by the delete
    documents = shadow_client.expect("update/documents", where=lambda d: d["current"]["version"] == 4)
    assert "previous" not in documents  # the shadow was re-created
    assert shadow.version_of(thing) == 4


def test_named_shadows_are_separate_from_classic(
    shadow: ShadowService, probe: Callable[..., Probe], thing: str
) -> None:
    p = probe(f"$aws/things/{thing}/shadow/#")
    classic = ShadowClient(p, thing)
    named = ShadowClient(p, thing, "config")
    other = ShadowClient(p, thing, "other")

    assert named.update({"desired": {"mode": "eco"}}, token="n1")["version"] == 1
    classic.send("get", {"clientToken": "c1"})
    assert classic.expect("get/rejected")["code"] == 404
    assert classic.update({"reported": {"mode": "x"}})["version"] == 1
    assert named.update({"reported": {"mode": "eco"}})["version"] == 2

    named.send("get", {"clientToken": "n2"})
    got = named.expect("get/accepted")
    assert got["state"] == {"desired": {"mode": "eco"}, "reported": {"mode": "eco"}}
    assert got["version"] == 2 and got["clientToken"] == "n2"

    other.send("get")
    rejected = other.expect("get/rejected")
    assert rejected["code"] == 404
    assert rejected["message"] == f"No shadow exists with name: '{thing}~other'"

    named.send("delete")
    assert named.expect("delete/accepted")["version"] == 2
    classic.send("get")
    assert classic.expect("get/accepted")["state"] == {"reported": {"mode": "x"}}
    assert shadow.get_document(thing, "config") is None
    assert shadow.get_document(thing) is not None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "Invalid JSON"),
        ({"clientToken": "bad"}, "Missing required node: state"),
        ({"state": {"delta": {"a": 1}}, "clientToken": "bad"}, "State contains an invalid node: 'delta'"),
        ({"state": {"reported": 5}, "clientToken": "bad"}, "Invalid JSON"),
        ({"state": {"reported": {"arr": [1, None]}}, "clientToken": "bad"}, "Invalid JSON"),
    ],
)
def test_shadow_bad_update_is_400(
    shadow: ShadowService, shadow_client: ShadowClient, thing: str, payload: Any, message: str
) -> None:
    shadow_client.send("update", payload)
    rejected = shadow_client.expect("update/rejected")
    assert rejected["code"] == 400
    assert rejected["message"] == message
    if isinstance(payload, dict):
        assert rejected["clientToken"] == "bad"
    assert shadow.get_document(thing) is None and shadow.version_of(thing) == 0


def test_shadow_oversized_state_is_413(
    shadow: ShadowService, shadow_client: ShadowClient, thing: str
) -> None:
    shadow_client.send("update", {"state": {"reported": {"blob": "x" * 9000}}, "clientToken": "big"})
    rejected = shadow_client.expect("update/rejected")
    assert rejected["code"] == 413 and rejected["clientToken"] == "big"
    assert shadow.get_document(thing) is None


def test_shadow_set_document_preload_and_cloud_update(
    shadow: ShadowService, shadow_client: ShadowClient, thing: str
) -> None:
    shadow.set_document(thing, {"state": {"reported": {"fw": "1.0"}}, "version": 7})
    shadow_client.send("get", {"clientToken": "p"})
    got = shadow_client.expect("get/accepted")
    assert got["state"] == {"reported": {"fw": "1.0"}}
    assert got["version"] == 7
    assert_recent(got["metadata"]["reported"]["fw"]["timestamp"])

    accepted = shadow.cloud_update(thing, {"desired": {"fw": "2.0"}}, client_token="cloud")
    assert accepted["version"] == 8
    # The device sees the cloud-side update like any other.
    assert shadow_client.expect("update/accepted")["clientToken"] == "cloud"
    delta = shadow_client.expect("update/delta")
    assert delta["state"] == {"fw": "2.0"} and delta["version"] == 8
    with pytest.raises(ValueError, match="400"):
        shadow.cloud_update(thing, {"bogus": {}})


def test_shadow_request_log(shadow: ShadowService, shadow_client: ShadowClient, thing: str) -> None:
    before = time.monotonic()
    shadow_client.send("get", {"clientToken": "log-1"})
    shadow_client.expect("get/rejected")
    shadow_client.send("update", b"garbage")
    shadow_client.expect("update/rejected")
    records = shadow.wait_for_requests(2)
    assert [r.topic for r in records] == [
        f"$aws/things/{thing}/shadow/get",
        f"$aws/things/{thing}/shadow/update",
    ]
    first, second = records
    assert first.payload == {"clientToken": "log-1"} and first.client_token == "log-1"
    assert second.payload is None and second.client_token is None
    assert before <= first.time <= second.time <= time.monotonic()
    with pytest.raises(TimeoutError):
        shadow.wait_for_requests(3, timeout=0.2)


def test_shadow_thing_names_restricts_subscriptions(
    broker: Mosquitto, probe: Callable[..., Probe], thing: str
) -> None:
    other = f"{thing}-other"
    with ShadowService(broker.host, broker.port, thing_names=[thing]) as service:
        p = probe(f"$aws/things/{thing}/shadow/#", f"$aws/things/{other}/shadow/#")
        ShadowClient(p, other).send("get")
        ShadowClient(p, thing, "n").send("get")
        assert ShadowClient(p, thing, "n").expect("get/rejected")["code"] == 404
        p.expect_none(f"$aws/things/{other}/shadow/get/rejected")
        assert [r.topic for r in service.requests] == [f"$aws/things/{thing}/shadow/name/n/get"]


# ---------------------------------------------------------------- shadow faults


def test_shadow_drop_next(shadow: ShadowService, shadow_client: ShadowClient, thing: str) -> None:
    shadow.drop_next(2)
    shadow_client.send("get", {"clientToken": "d1"})
    shadow_client.send("update", {"state": {"reported": {"a": 1}}, "clientToken": "d2"})
    shadow_client.send("get", {"clientToken": "d3"})
    assert shadow_client.expect("get/rejected")["clientToken"] == "d3"
    shadow_client.probe.expect_none(f"{shadow_client.prefix}/update/accepted")
    assert [r.client_token for r in shadow.dropped] == ["d1", "d2"]
    assert len(shadow.requests) == 3
    assert shadow.get_document(thing) is None  # the dropped update was not applied


def test_shadow_duplicate_responses(shadow: ShadowService, shadow_client: ShadowClient) -> None:
    shadow.duplicate_responses = True
    shadow_client.update({"desired": {"a": 1}}, token="dup")
    second = shadow_client.expect("update/accepted")
    assert second["clientToken"] == "dup" and second["version"] == 1
    shadow_client.probe.expect_none(f"{shadow_client.prefix}/update/accepted")
    # Only accepted/rejected are doubled, not the notifications.
    shadow_client.expect("update/delta")
    assert shadow_client.probe.count(f"{shadow_client.prefix}/update/delta") == 0


def test_shadow_wrong_token_first(shadow: ShadowService, shadow_client: ShadowClient) -> None:
    shadow.wrong_token_first = True
    shadow_client.send("get", {"clientToken": "mine"})
    stray = shadow_client.expect("get/rejected")
    real = shadow_client.expect("get/rejected")
    assert stray["clientToken"] != "mine" and stray["code"] == 404
    assert real["clientToken"] == "mine"
    shadow.wrong_token_first = False
    shadow_client.send("update", {"state": {"reported": {"a": 1}}, "clientToken": "x"})
    assert shadow_client.expect("update/accepted")["clientToken"] == "x"
    shadow_client.probe.expect_none(f"{shadow_client.prefix}/update/accepted")


def test_shadow_reject_next(shadow: ShadowService, shadow_client: ShadowClient, thing: str) -> None:
    shadow.reject_next(429, "Rate limit exceeded")
    shadow_client.send("update", {"state": {"reported": {"a": 1}}, "clientToken": "r1"})
    rejected = shadow_client.expect("update/rejected")
    assert rejected["code"] == 429
    assert rejected["message"] == "Rate limit exceeded"
    assert rejected["clientToken"] == "r1"
    assert shadow.get_document(thing) is None
    # Only the next request is rejected.
    assert shadow_client.update({"reported": {"a": 1}}, token="r2")["version"] == 1


def test_shadow_delay(shadow: ShadowService, shadow_client: ShadowClient) -> None:
    shadow.delay(0.6)
    assert shadow.response_delay == 0.6
    sent = shadow_client.probe.publish(f"{shadow_client.prefix}/get", {"clientToken": "slow"})
    _, arrived = shadow_client.probe.expect_timed(f"{shadow_client.prefix}/get/rejected")
    assert arrived - sent >= 0.55
    shadow.delay(0)
    sent = shadow_client.probe.publish(f"{shadow_client.prefix}/get", {"clientToken": "fast"})
    _, arrived = shadow_client.probe.expect_timed(f"{shadow_client.prefix}/get/rejected")
    assert arrived - sent < 0.5


def test_shadow_concurrent_updates_are_serialised(
    shadow: ShadowService, shadow_client: ShadowClient, thing: str
) -> None:
    for i in range(20):
        shadow_client.send("update", {"state": {"reported": {f"k{i}": i}}, "clientToken": f"c{i}"})
    versions = {}
    for _ in range(20):
        doc = shadow_client.expect("update/accepted")
        versions[doc["clientToken"]] = doc["version"]
    assert sorted(versions.values()) == list(range(1, 21))
    doc = shadow.get_document(thing)
    assert doc is not None and len(doc["state"]["reported"]) == 20 and doc["version"] == 20


# --------------------------------------------------------------------------
# Lifecycle
# --------------------------------------------------------------------------


def test_start_fails_cleanly_without_broker() -> None:
    (port,) = free_ports(1)
    service = ShadowService(HOST, port)
    with pytest.raises(FakeServiceError, match="cannot connect"):
        service.start(timeout=2)
    service.stop()  # idempotent, no error


def test_stop_is_idempotent_and_threads_end(broker: Mosquitto) -> None:
    before = set(threading.enumerate())
    service = JobsService(broker.host, broker.port)
    service.start()
    assert service.connected
    service.stop()
    service.stop()
    assert not service.connected
    assert set(threading.enumerate()) <= before


def test_handler_errors_surface_on_stop(broker: Mosquitto, thing: str) -> None:
    service = ShadowService(broker.host, broker.port, thing_names=[thing])
    service.start()
    service._handle = lambda *a: 1 / 0  # type: ignore[method-assign]
    p = Probe(broker.port, [])
    try:
        p.publish(f"$aws/things/{thing}/shadow/get")
        service.wait_for_requests(1)
        deadline = time.monotonic() + TIMEOUT
        while not service.errors and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        p.close()
    assert isinstance(service.errors[0], ZeroDivisionError)
    # A crash inside a handler is reported by stop(), not swallowed.
    with pytest.raises(FakeServiceError, match="ZeroDivisionError"):
        service.stop()


def test_fake_survives_broker_restart(pki: Pki, tmp_path: pathlib.Path, thing: str) -> None:
    server = Mosquitto(pki=pki, directory=tmp_path / "mosq")
    server.start()
    try:
        with ShadowService(server.host, server.port) as service:
            server.restart()
            assert service.wait_ready(10), "the fake did not resubscribe"
            p = Probe(server.port, [f"$aws/things/{thing}/shadow/#"])
            try:
                ShadowClient(p, thing).send("get", {"clientToken": "after"})
                assert ShadowClient(p, thing).expect("get/rejected")["clientToken"] == "after"
            finally:
                p.close()
    finally:
        server.stop()


# --------------------------------------------------------------------------
# Fleet provisioning
# --------------------------------------------------------------------------

CREATE = "$aws/certificates/create/json"
CREATE_CSR = "$aws/certificates/create-from-csr/json"


def provision_topic(template: str) -> str:
    return f"$aws/provisioning-templates/{template}/provision/json"


@pytest.fixture
def provisioning(broker: Mosquitto, pki: Pki) -> Iterator[ProvisioningService]:
    with ProvisioningService(
        broker.host, broker.port, ca_cert_path=pki.ca_cert, ca_key_path=pki.ca_key
    ) as service:
        yield service


@pytest.fixture
def prov_probe(probe: Callable[..., Probe]) -> Probe:
    return probe("$aws/certificates/#", "$aws/provisioning-templates/#")


def load_ca(pki: Pki) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())


def create_keys(p: Probe) -> dict[str, Any]:
    p.publish(CREATE)
    result: dict[str, Any] = p.expect(f"{CREATE}/accepted")
    return result


def test_create_keys_and_certificate(
    provisioning: ProvisioningService, prov_probe: Probe, pki: Pki
) -> None:
    created = create_keys(prov_probe)
    assert set(created) == {"certificateId", "certificatePem", "privateKey", "certificateOwnershipToken"}
    cert_id = created["certificateId"]
    assert len(cert_id) == 64 and all(c in "0123456789abcdef" for c in cert_id)
    assert isinstance(created["certificateOwnershipToken"], str)
    assert len(created["certificateOwnershipToken"]) >= 32

    cert = x509.load_pem_x509_certificate(created["certificatePem"].encode())
    cert.verify_directly_issued_by(load_ca(pki))  # raises if not signed by the CA
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cert_id
    key = serialization.load_pem_private_key(created["privateKey"].encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert created["privateKey"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.public_numbers() == key.public_key().public_numbers()

    record = provisioning.certificates[cert_id]
    assert record.status == "PENDING_ACTIVATION" and record.source == "create"
    # Two calls never return the same certificate or token.
    again = create_keys(prov_probe)
    assert again["certificateId"] != cert_id
    assert again["certificateOwnershipToken"] != created["certificateOwnershipToken"]


def make_csr(key: Any, cn: str = "my-device") -> str:
    return certs.make_csr(key, cn).decode()


@pytest.mark.parametrize("algorithm", ["rsa", "ec"])
def test_create_certificate_from_csr(
    provisioning: ProvisioningService, prov_probe: Probe, pki: Pki, algorithm: str
) -> None:
    key: Any = certs.rsa_key() if algorithm == "rsa" else certs.ec_key()
    prov_probe.publish(CREATE_CSR, {"certificateSigningRequest": make_csr(key)})
    created = prov_probe.expect(f"{CREATE_CSR}/accepted")
    assert set(created) == {"certificateId", "certificatePem", "certificateOwnershipToken"}
    cert = x509.load_pem_x509_certificate(created["certificatePem"].encode())
    cert.verify_directly_issued_by(load_ca(pki))
    assert cert.public_key() == key.public_key()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "my-device"
    assert provisioning.certificates[created["certificateId"]].source == "csr"


BAD_CSR = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"


@pytest.mark.parametrize(
    "payload",
    [
        {"certificateSigningRequest": BAD_CSR},
        {"certificateSigningRequest": ""},
        {},
        b"not json",
    ],
)
def test_create_from_bad_csr_is_rejected(
    provisioning: ProvisioningService, prov_probe: Probe, payload: Any
) -> None:
    prov_probe.publish(CREATE_CSR, payload)
    rejected = prov_probe.expect(f"{CREATE_CSR}/rejected")
    assert rejected["statusCode"] == 400
    assert rejected["errorCode"] == "InvalidCSR"
    assert isinstance(rejected["errorMessage"], str) and rejected["errorMessage"]
    assert set(rejected) == {"statusCode", "errorCode", "errorMessage"}
    assert not provisioning.certificates


def test_register_thing_default_template(
    provisioning: ProvisioningService, prov_probe: Probe
) -> None:
    created = create_keys(prov_probe)
    token = created["certificateOwnershipToken"]
    request = {"certificateOwnershipToken": token, "parameters": {"SerialNumber": "SN-1"}}
    prov_probe.publish(provision_topic("default"), request)
    accepted = prov_probe.expect(f"{provision_topic('default')}/accepted")
    assert accepted == {"deviceConfiguration": {}, "thingName": "thing-SN-1"}
    cert = provisioning.certificates[created["certificateId"]]
    assert cert.status == "ACTIVE" and cert.thing_name == "thing-SN-1"
    assert provisioning.registered_things == {"thing-SN-1": created["certificateId"]}

    # The token is single-use.
    prov_probe.publish(provision_topic("default"), request)
    rejected = prov_probe.expect(f"{provision_topic('default')}/rejected")
    assert rejected["statusCode"] == 400
    assert rejected["errorCode"] == "InvalidParameterException"
    assert "already used" in rejected["errorMessage"]


def test_register_thing_errors(provisioning: ProvisioningService, prov_probe: Probe) -> None:
    token = create_keys(prov_probe)["certificateOwnershipToken"]
    prov_probe.publish(provision_topic("missing"), {"certificateOwnershipToken": token})
    rejected = prov_probe.expect(f"{provision_topic('missing')}/rejected")
    assert rejected["statusCode"] == 404
    assert rejected["errorCode"] == "ResourceNotFoundException"

    prov_probe.publish(provision_topic("default"), {"certificateOwnershipToken": "bogus"})
    rejected = prov_probe.expect(f"{provision_topic('default')}/rejected")
    assert (rejected["statusCode"], rejected["errorCode"]) == (400, "InvalidParameterException")

    prov_probe.publish(provision_topic("default"), {"parameters": {}})
    rejected = prov_probe.expect(f"{provision_topic('default')}/rejected")
    assert rejected["statusCode"] == 400

    provisioning.expire_tokens()
    prov_probe.publish(provision_topic("default"), {"certificateOwnershipToken": token})
    rejected = prov_probe.expect(f"{provision_topic('default')}/rejected")
    assert rejected["statusCode"] == 400 and "expired" in rejected["errorMessage"]
    assert not provisioning.registered_things


def test_register_thing_custom_template(broker: Mosquitto, pki: Pki, prov_probe: Probe) -> None:
    def fleet(parameters: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if parameters.get("DeviceLocation") == "forbidden":
            raise ProvisioningRejection(403, "AccessDeniedException", "location not allowed")
        if "SerialNumber" not in parameters:
            raise KeyError("SerialNumber")
        return f"fleet-{parameters['SerialNumber']}", {"region": parameters.get("DeviceLocation")}

    with ProvisioningService(
        broker.host,
        broker.port,
        ca_cert_path=pki.ca_cert,
        ca_key_path=pki.ca_key,
        templates={"fleet": fleet},
    ) as service:
        topic = provision_topic("fleet")
        token = create_keys(prov_probe)["certificateOwnershipToken"]
        forbidden = {"DeviceLocation": "forbidden"}
        prov_probe.publish(topic, {"certificateOwnershipToken": token, "parameters": forbidden})
        rejected = prov_probe.expect(f"{topic}/rejected")
        assert rejected == {
            "statusCode": 403,
            "errorCode": "AccessDeniedException",
            "errorMessage": "location not allowed",
        }
        prov_probe.publish(topic, {"certificateOwnershipToken": token, "parameters": {}})
        rejected = prov_probe.expect(f"{topic}/rejected")
        assert (rejected["statusCode"], rejected["errorCode"]) == (400, "InvalidParameterException")
        # A rejection does not burn the token.
        prov_probe.publish(
            topic,
            {
                "certificateOwnershipToken": token,
                "parameters": {"SerialNumber": "7", "DeviceLocation": "eu"},
            },
        )
        assert prov_probe.expect(f"{topic}/accepted") == {
            "deviceConfiguration": {"region": "eu"},
            "thingName": "fleet-7",
        }
        # Only the given templates exist.
        prov_probe.publish(provision_topic("default"), {"certificateOwnershipToken": token})
        assert prov_probe.expect(f"{provision_topic('default')}/rejected")["statusCode"] == 404
        assert service.registered_things == {"fleet-7": service.registered_things["fleet-7"]}


def mtls_connect(
    broker: Mosquitto, pki: Pki, cert: pathlib.Path, key: pathlib.Path, *filters: str
) -> Probe:
    """Connect to the mTLS listener as ``localhost`` with the given client cert."""
    return Probe(
        broker.mtls_port,
        list(filters),
        host="localhost",
        tls={"ca_certs": str(pki.ca_cert), "certfile": str(cert), "keyfile": str(key)},
    )


def write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_issued_certificate_connects_over_mtls(
    provisioning: ProvisioningService,
    prov_probe: Probe,
    broker: Mosquitto,
    pki: Pki,
    tmp_path: pathlib.Path,
) -> None:
    created = create_keys(prov_probe)
    cert = write(tmp_path / "device.crt", created["certificatePem"])
    key = write(tmp_path / "device.key", created["privateKey"])
    topic = f"test/{uuid.uuid4().hex}"
    device = mtls_connect(broker, pki, cert, key, topic)
    try:
        # A full round trip over the mTLS connection with the new identity.
        device.publish(topic, {"hello": "mtls"})
        assert device.expect(topic) == {"hello": "mtls"}
    finally:
        device.close()
    # Control: the listener really refuses a client certificate from another CA.
    # (Plain ssl, not paho: paho leaks the socket when the handshake fails.)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        mqtt_connect_tls(broker, pki, pki.other_client_cert, pki.other_client_key)


def mqtt_connect_tls(broker: Mosquitto, pki: Pki, cert: pathlib.Path, key: pathlib.Path) -> int:
    """Send an MQTT 3.1.1 CONNECT over TLS; return the CONNACK return code."""
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(cert), str(key))
    with socket.create_connection((HOST, broker.mtls_port), timeout=TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(P.connect("probe-tls", keep_alive=30))
            connack = P.recv(tls)  # ConnectionError if closed before the CONNACK
            assert connack.type == P.CONNACK, connack
            return connack.body[1]


def test_csr_certificate_connects_over_mtls(
    provisioning: ProvisioningService,
    prov_probe: Probe,
    broker: Mosquitto,
    pki: Pki,
    tmp_path: pathlib.Path,
) -> None:
    key = certs.rsa_key()
    prov_probe.publish(CREATE_CSR, {"certificateSigningRequest": make_csr(key)})
    created = prov_probe.expect(f"{CREATE_CSR}/accepted")
    key_pem = certs.key_pem(key, certs.PKCS8).decode()
    cert_path = write(tmp_path / "csr.crt", created["certificatePem"])
    key_path = write(tmp_path / "csr.key", key_pem)
    assert mqtt_connect_tls(broker, pki, cert_path, key_path) == 0  # CONNACK accepted
    mtls_connect(broker, pki, cert_path, key_path).close()


def test_provisioning_faults(provisioning: ProvisioningService, prov_probe: Probe) -> None:
    provisioning.reject_next(503, "ServiceUnavailableException", "try later")
    prov_probe.publish(CREATE)
    assert prov_probe.expect(f"{CREATE}/rejected") == {
        "statusCode": 503,
        "errorCode": "ServiceUnavailableException",
        "errorMessage": "try later",
    }
    assert not provisioning.certificates

    provisioning.drop_next()
    prov_probe.publish(CREATE)
    prov_probe.expect_none(f"{CREATE}/accepted")
    assert len(provisioning.dropped) == 1 and provisioning.dropped[0].topic == CREATE

    provisioning.duplicate_responses = True
    provisioning.delay(0.5)
    sent = prov_probe.publish(CREATE)
    first, arrived = prov_probe.expect_timed(f"{CREATE}/accepted")
    second = prov_probe.expect(f"{CREATE}/accepted")
    assert arrived - sent >= 0.45
    assert first == second  # the very same response, twice
    assert len(provisioning.certificates) == 1
    assert [r.topic for r in provisioning.requests] == [CREATE, CREATE, CREATE]


def test_private_key_marker(provisioning: ProvisioningService, prov_probe: Probe) -> None:
    provisioning.private_key_marker = "S3NTINEL-KEY"
    created = create_keys(prov_probe)
    assert "S3NTINEL-KEY" in created["privateKey"]
    # Explanatory text before the PEM block is ignored by PEM parsers.
    key = serialization.load_pem_private_key(created["privateKey"].encode(), password=None)
    cert = x509.load_pem_x509_certificate(created["certificatePem"].encode())
    assert cert.public_key() == key.public_key()


# --------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------


@pytest.fixture
def jobs(broker: Mosquitto) -> Iterator[JobsService]:
    with JobsService(broker.host, broker.port) as service:
        yield service


class JobsClient:
    def __init__(self, probe: Probe, thing: str) -> None:
        self.probe = probe
        self.base = f"$aws/things/{thing}/jobs"

    def call(self, op: str, payload: dict[str, Any], outcome: str = "accepted") -> Any:
        self.probe.publish(f"{self.base}/{op}", payload)
        return self.probe.expect(f"{self.base}/{op}/{outcome}")

    def notify(self, kind: str = "notify", **kwargs: Any) -> Any:
        return self.probe.expect(f"{self.base}/{kind}", **kwargs)


@pytest.fixture
def jobs_client(probe: Callable[..., Probe], thing: str) -> JobsClient:
    return JobsClient(probe(f"$aws/things/{thing}/jobs/#"), thing)


def test_jobs_full_flow(jobs: JobsService, jobs_client: JobsClient, thing: str) -> None:
    document = {"operation": "install", "url": "https://example.invalid/fw.bin"}
    jobs.add_job(thing, "job-1", document)

    notify = jobs_client.notify()
    summary = notify["jobs"]["QUEUED"][0]
    assert list(notify["jobs"]) == ["QUEUED"]
    assert summary["jobId"] == "job-1"
    assert (summary["versionNumber"], summary["executionNumber"]) == (1, 1)
    assert "startedAt" not in summary
    nxt = jobs_client.notify("notify-next")
    execution = nxt["execution"]
    assert execution["jobId"] == "job-1" and execution["thingName"] == thing
    assert execution["jobDocument"] == document and execution["status"] == "QUEUED"
    assert_recent(nxt["timestamp"])

    started = jobs_client.call("start-next", {"clientToken": "s1", "statusDetails": {"step": "1"}})
    assert started["clientToken"] == "s1"
    execution = started["execution"]
    assert execution["status"] == "IN_PROGRESS"
    assert execution["versionNumber"] == 2 and execution["executionNumber"] == 1
    assert execution["jobDocument"] == document
    assert execution["statusDetails"] == {"step": "1"}
    for field in ("queuedAt", "startedAt", "lastUpdatedAt"):
        assert_recent(execution[field])
    # Starting it changes neither the pending list nor the next job.
    jobs_client.probe.expect_none(f"{jobs_client.base}/notify-next", within=0.2)

    pending = jobs_client.call("get", {"clientToken": "g1"})
    assert [j["jobId"] for j in pending["inProgressJobs"]] == ["job-1"]
    assert pending["queuedJobs"] == [] and pending["clientToken"] == "g1"

    updated = jobs_client.call(
        "job-1/update",
        {
            "status": "SUCCEEDED",
            "statusDetails": {"result": "ok"},
            "expectedVersion": 2,
            "includeJobExecutionState": True,
            "clientToken": "u1",
        },
    )
    assert updated["executionState"] == {
        "status": "SUCCEEDED",
        "statusDetails": {"result": "ok"},
        "versionNumber": 3,
    }
    assert updated["clientToken"] == "u1"
    assert_recent(updated["timestamp"])
    # It left the pending list: notify (empty) and notify-next (no execution).
    assert jobs_client.notify(where=lambda d: d["jobs"] == {})["jobs"] == {}
    assert "execution" not in jobs_client.notify("notify-next")

    pending = jobs_client.call("get", {"clientToken": "g2"})
    assert pending["inProgressJobs"] == [] and pending["queuedJobs"] == []
    nothing = jobs_client.call("start-next", {"clientToken": "s2"})
    assert "execution" not in nothing and nothing["clientToken"] == "s2"
    assert jobs.get_execution(thing, "job-1")["status"] == "SUCCEEDED"  # type: ignore[index]


def test_jobs_update_accepted_is_minimal_by_default(
    jobs: JobsService, jobs_client: JobsClient, thing: str
) -> None:
    jobs.add_job(thing, "j", {"a": 1})
    updated = jobs_client.call("j/update", {"status": "IN_PROGRESS", "clientToken": "t"})
    assert set(updated) == {"timestamp", "clientToken"}
    updated = jobs_client.call("j/update", {"status": "IN_PROGRESS", "includeJobDocument": True})
    assert updated["jobDocument"] == {"a": 1} and "executionState" not in updated


def test_jobs_expected_version_mismatch(
    jobs: JobsService, jobs_client: JobsClient, thing: str
) -> None:
    jobs.add_job(thing, "job-v", {"x": 1})
    rejected = jobs_client.call(
        "job-v/update",
        {"status": "IN_PROGRESS", "expectedVersion": 5, "clientToken": "v"},
        "rejected",
    )
    assert rejected["code"] == "VersionMismatch"
    assert rejected["clientToken"] == "v"
    assert rejected["executionState"] == {"status": "QUEUED", "versionNumber": 1}
    assert isinstance(rejected["message"], str)
    assert jobs.get_execution(thing, "job-v")["versionNumber"] == 1  # type: ignore[index]


def test_jobs_describe(jobs: JobsService, jobs_client: JobsClient, thing: str) -> None:
    rejected = jobs_client.call("nope/get", {"clientToken": "n"}, "rejected")
    assert rejected["code"] == "ResourceNotFound" and rejected["clientToken"] == "n"
    empty = jobs_client.call("$next/get", {"clientToken": "e"})
    assert "execution" not in empty and empty["clientToken"] == "e"

    jobs.add_job(thing, "d1", {"k": "v"})
    described = jobs_client.call("d1/get", {"clientToken": "d"})
    assert described["execution"]["jobId"] == "d1"
    assert described["execution"]["jobDocument"] == {"k": "v"}
    without = jobs_client.call("d1/get", {"includeJobDocument": False})
    assert "jobDocument" not in without["execution"]
    nxt = jobs_client.call("$next/get", {})
    assert nxt["execution"]["jobId"] == "d1"

    jobs_client.call("d1/update", {"status": "FAILED"})
    terminal = jobs_client.call("d1/get", {"clientToken": "t"}, "rejected")
    assert terminal["code"] == "TerminalStateReached"
    again = jobs_client.call("d1/update", {"status": "IN_PROGRESS"}, "rejected")
    assert again["code"] == "InvalidStateTransition"
    assert again["executionState"]["status"] == "FAILED"


def test_jobs_invalid_requests(jobs: JobsService, jobs_client: JobsClient, thing: str) -> None:
    jobs.add_job(thing, "bad", {})
    assert jobs_client.call("bad/update", {"status": "DONE"}, "rejected")["code"] == "InvalidRequest"
    assert jobs_client.call("bad/update", {"status": "QUEUED"}, "rejected")["code"] == "InvalidRequest"
    jobs_client.probe.publish(f"{jobs_client.base}/get", b"{oops")
    assert jobs_client.probe.expect(f"{jobs_client.base}/get/rejected")["code"] == "InvalidJson"
    assert jobs_client.call("missing/update", {"status": "SUCCEEDED"}, "rejected")["code"] == "ResourceNotFound"
    with pytest.raises(ValueError):
        jobs.add_job(thing, "bad", {})


def test_jobs_queue_order_and_notify_next(
    jobs: JobsService, jobs_client: JobsClient, thing: str
) -> None:
    jobs.add_job(thing, "first", {"n": 1})
    assert jobs_client.notify("notify-next")["execution"]["jobId"] == "first"
    jobs.add_job(thing, "second", {"n": 2})
    notify = jobs_client.notify(where=lambda d: len(d["jobs"].get("QUEUED", [])) == 2)
    assert [j["jobId"] for j in notify["jobs"]["QUEUED"]] == ["first", "second"]
    # The next job did not change, so no notify-next for "second".
    jobs_client.probe.expect_none(f"{jobs_client.base}/notify-next")

    pending = jobs_client.call("get", {})
    assert [j["jobId"] for j in pending["queuedJobs"]] == ["first", "second"]

    # An IN_PROGRESS job comes before QUEUED ones: starting "second" makes it next.
    jobs_client.call("second/update", {"status": "IN_PROGRESS"})
    assert jobs_client.notify("notify-next")["execution"]["jobId"] == "second"
    assert jobs_client.call("start-next", {})["execution"]["jobId"] == "second"

    jobs_client.call("second/update", {"status": "REJECTED"})
    nxt = jobs_client.notify("notify-next")
    assert nxt["execution"]["jobId"] == "first" and nxt["execution"]["status"] == "QUEUED"

    jobs.cancel_job(thing, "first")
    assert "execution" not in jobs_client.notify("notify-next")
    assert jobs.get_execution(thing, "first")["status"] == "CANCELED"  # type: ignore[index]


def test_jobs_faults(jobs: JobsService, jobs_client: JobsClient, thing: str) -> None:
    jobs.reject_next("RequestThrottled", "slow down")
    rejected = jobs_client.call("get", {"clientToken": "r"}, "rejected")
    assert (rejected["code"], rejected["message"], rejected["clientToken"]) == (
        "RequestThrottled",
        "slow down",
        "r",
    )

    jobs.wrong_token_first = True
    jobs.duplicate_responses = True
    jobs_client.probe.publish(f"{jobs_client.base}/get", {"clientToken": "w"})
    topic = f"{jobs_client.base}/get/accepted"
    tokens = [jobs_client.probe.expect(topic)["clientToken"] for _ in range(3)]
    assert tokens[0] != "w" and tokens[1:] == ["w", "w"]
    jobs_client.probe.expect_none(topic)

    jobs.clear_faults()
    jobs.drop_next()
    jobs_client.probe.publish(f"{jobs_client.base}/get", {"clientToken": "dropped"})
    jobs_client.probe.expect_none(topic)
    assert jobs_client.call("get", {"clientToken": "ok"})["clientToken"] == "ok"
    assert [r.client_token for r in jobs.requests] == ["r", "w", "dropped", "ok"]
