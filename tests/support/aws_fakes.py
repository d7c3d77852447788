"""Fake AWS IoT services (Device Shadow, Fleet Provisioning, Jobs) for the test-suite.

The service behaviour itself is tested against the embedded AWS IoT Core
(``awsiot_rs.local.LocalIoTCore``: tests/test_services.py and the service tests of
test_sync.py, test_cli.py, test_notebook.py and test_docs.py). These fakes remain for what a
correct service never does: their fault knobs (below) drive the client's request engine
through duplicate, foreign, late, rejected and missing answers (tests/test_services_faults.py,
tests/test_request_engine.py); tests/selfcheck/test_aws_fakes.py checks the fakes themselves.

Each fake is an ordinary MQTT client (paho-mqtt 2.x, threaded ``loop_start()``)
attached to a broker, normally the session mosquitto from ``tests/conftest.py``.
It subscribes to the AWS request topics and answers on the AWS response
topics with the payload shapes of the AWS IoT Developer Guide (Device Shadow
service documents, fleet provisioning MQTT API, jobs MQTT API), so it is completely
independent of the client under test::

    with ShadowService(broker.host, broker.port) as shadow:
        ...  # drive awsiot_rs against $aws/things/<thing>/shadow/...

Common to every fake:

* ``start()`` returns only once the SUBACK for every request topic has been
  received, so a request published afterwards cannot be missed. ``stop()``
  disconnects and joins every thread; both are idempotent and the objects are
  context managers. After a broker restart the fake reconnects and
  resubscribes by itself (``wait_ready()`` waits for that).
* Requests are handled, in arrival order, on one worker thread of the fake
  (never on paho's network thread), so ``delay()`` does not stall the
  connection.
* Logs: ``requests`` (every request received, dropped or not), ``dropped``,
  ``responses`` (everything the fake published), as :class:`RequestRecord` /
  :class:`ResponseRecord` tuples whose ``time`` is ``time.monotonic()``.
  ``wait_for_requests(n)`` blocks until ``n`` requests have arrived.
* Fault knobs (thread-safe): ``drop_next(n)``, ``delay(seconds)``,
  ``duplicate_responses``, ``reject_next(...)``; the shadow and jobs fakes also
  have ``wrong_token_first``.
* An exception inside a handler is recorded in ``errors`` and makes ``stop()``
  raise :class:`FakeServiceError`, so a broken fake cannot go unnoticed.

Timestamps in payloads are integer epoch seconds, as AWS sends them.
"""

from __future__ import annotations

import copy
import datetime
import heapq
import itertools
import json
import logging
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from . import certs

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+

__all__ = [
    "FakeServiceError",
    "IssuedCertificate",
    "JobsService",
    "ProvisioningRejection",
    "ProvisioningService",
    "RequestRecord",
    "ResponseRecord",
    "ShadowService",
    "default_template",
]

_log = logging.getLogger(__name__)

JsonDict = dict[str, Any]

#: Stand-in for "the payload was not valid JSON".
_INVALID = object()


class FakeServiceError(RuntimeError):
    """A fake could not start, or one of its handlers raised."""


class RequestRecord(NamedTuple):
    """One request received by a fake."""

    #: ``time.monotonic()`` when the fake received it.
    time: float
    topic: str
    #: The decoded JSON payload; ``{}`` for an empty payload, ``None`` when it
    #: was not JSON at all. (Non-object JSON is kept as decoded.)
    payload: Any
    #: ``payload["clientToken"]`` when present, else ``None``.
    client_token: str | None


class ResponseRecord(NamedTuple):
    """One message published by a fake (responses and notifications)."""

    time: float
    topic: str
    payload: JsonDict


def _now() -> int:
    """Epoch seconds, as used in every AWS IoT payload here."""
    return int(time.time())


def _decode(raw: bytes) -> Any:
    """Decode a request payload: ``{}`` if empty, ``_INVALID`` if not JSON (or CBOR, for the
    fleet provisioning ``/cbor`` topics: anything that does not start like JSON)."""
    if not raw.strip():
        return {}
    if raw.lstrip()[:1] not in (b"{", b"["):
        try:
            import cbor2

            return cbor2.loads(raw)
        except Exception:  # noqa: BLE001 - any decoding failure is an invalid payload
            return _INVALID
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _INVALID


def _encode(topic: str, payload: Any) -> bytes | str:
    """JSON, or CBOR on the fleet provisioning ``/cbor`` topics."""
    if "/cbor/" in topic or topic.endswith("/cbor"):
        import cbor2

        return bytes(cbor2.dumps(payload))
    return json.dumps(payload, separators=(",", ":"))


def _token_of(payload: Any) -> Any:
    if isinstance(payload, dict):
        return payload.get("clientToken")
    return None


def _with_token(doc: JsonDict, token: Any) -> JsonDict:
    if token is not None:
        doc["clientToken"] = token
    return doc


# --------------------------------------------------------------------------
# the common MQTT plumbing
# --------------------------------------------------------------------------


class _FakeService:
    """paho-mqtt client + worker thread + logs + fault knobs.

    Subclasses implement :meth:`_subscriptions` and :meth:`_handle`.
    """

    _client_id_prefix = "fake-aws"
    #: Whether responses carry a clientToken (so ``wrong_token_first`` applies).
    _has_client_tokens = True

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.client_id = f"{self._client_id_prefix}-{uuid.uuid4().hex[:12]}"
        #: Every request received (including dropped ones), in arrival order.
        self.requests: list[RequestRecord] = []
        #: The requests ignored because of :meth:`drop_next`.
        self.dropped: list[RequestRecord] = []
        #: Everything this fake published, in publish order.
        self.responses: list[ResponseRecord] = []
        #: Exceptions raised inside handlers (also re-raised by :meth:`stop`).
        self.errors: list[BaseException] = []
        #: Send every accepted/rejected response twice.
        self.duplicate_responses = False
        #: Before each accepted/rejected response, send a copy carrying a
        #: different clientToken on the same topic.
        self.wrong_token_first = False

        self._knob_lock = threading.Lock()
        self._drop = 0
        self._delay = 0.0
        self._rejects: deque[Any] = deque()

        self._log_cond = threading.Condition()
        self._sched_cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._stopping = False
        self._worker: threading.Thread | None = None

        self._client: mqtt.Client | None = None
        self._ready = threading.Event()
        self._failed: str | None = None
        self._sub_mid: int | None = None
        self._started = False
        self._stopped = False

    # ----------------------------------------------------------- subclasses

    def _subscriptions(self) -> list[str]:
        raise NotImplementedError

    def _handle(self, topic: str, payload: Any, reject: Any) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------- knobs

    def drop_next(self, n: int = 1) -> None:
        """Ignore (log but never answer) the next ``n`` requests."""
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._knob_lock:
            self._drop += n

    def delay(self, seconds: float) -> None:
        """Handle every following request ``seconds`` after it arrived (0 resets)."""
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        with self._knob_lock:
            self._delay = float(seconds)

    @property
    def response_delay(self) -> float:
        """The delay currently set by :meth:`delay`."""
        with self._knob_lock:
            return self._delay

    def _push_reject(self, reject: Any) -> None:
        with self._knob_lock:
            self._rejects.append(reject)

    def clear_faults(self) -> None:
        """Reset every fault knob (pending drops, delay, rejections, flags)."""
        with self._knob_lock:
            self._drop = 0
            self._delay = 0.0
            self._rejects.clear()
        self.duplicate_responses = False
        self.wrong_token_first = False

    # ------------------------------------------------------------- lifecycle

    @property
    def connected(self) -> bool:
        """True while connected to the broker and subscribed."""
        return self._ready.is_set()

    def start(self, timeout: float = 10.0) -> None:
        """Connect, subscribe and wait for every SUBACK (raises FakeServiceError)."""
        if self._started:
            raise FakeServiceError(f"{type(self).__name__} was already started")
        self._started = True
        self._worker = threading.Thread(
            target=self._run_worker, name=f"{self.client_id}-worker", daemon=True
        )
        self._worker.start()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.max_inflight_messages_set(100)
        client.reconnect_delay_set(min_delay=0.2, max_delay=1)  # type: ignore[arg-type]
        self._client = client
        try:
            client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            self._shutdown()
            raise FakeServiceError(
                f"{type(self).__name__} cannot connect to {self.host}:{self.port}: {exc}"
            ) from exc
        client.loop_start()
        if not self.wait_ready(timeout):
            reason = self._failed or f"no SUBACK within {timeout}s"
            self._shutdown()
            raise FakeServiceError(f"{type(self).__name__} did not start: {reason}")

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Wait until connected and subscribed (e.g. after a broker restart)."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self._failed is not None or time.monotonic() > deadline:
                return False
        return True

    def stop(self, *, check: bool = True) -> None:
        """Disconnect, join every thread; raise if a handler failed (``check``)."""
        if self._stopped or not self._started:
            return
        self._stopped = True
        self._shutdown()
        if check and self.errors:
            raise FakeServiceError(
                f"{type(self).__name__} handler failed: {self.errors[0]!r}"
            ) from self.errors[0]

    def _shutdown(self) -> None:
        with self._sched_cond:
            self._stopping = True
            self._heap.clear()
            self._sched_cond.notify_all()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout=5)
        client = self._client
        if client is not None:
            self._client = None
            client.disconnect()
            client.loop_stop()
        self._ready.clear()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(check=exc is None)

    def __repr__(self) -> str:
        state = "ready" if self.connected else "not ready"
        return f"<{type(self).__name__} {self.client_id} {self.host}:{self.port} {state}>"

    # ------------------------------------------------------------------ logs

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RequestRecord]:
        """Block until at least ``count`` requests were received; return the log.

        Raises ``TimeoutError`` when they do not arrive in time.
        """
        return self._wait_for_log(self.requests, count, timeout, "requests")

    def wait_for_responses(
        self,
        count: int,
        timeout: float = 5.0,
    ) -> list[ResponseRecord]:
        """Block until at least ``count`` messages were published by the fake."""
        return self._wait_for_log(self.responses, count, timeout, "responses")

    def _wait_for_log(self, log: list[Any], count: int, timeout: float, what: str) -> list[Any]:
        """Waits (on the log condition) until ``log`` holds ``count`` entries; a copy of it."""
        deadline = time.monotonic() + timeout
        with self._log_cond:
            while len(log) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{type(self).__name__}: {len(log)} of {count} {what} after {timeout}s"
                    )
                self._log_cond.wait(left)
            return list(log)

    # ------------------------------------------------------- paho callbacks

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: Any,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            self._failed = f"CONNACK refused: {reason_code}"
            return
        self._failed = None
        topics = [(t, 1) for t in self._subscriptions()]
        result, mid = client.subscribe(topics)
        if result != mqtt.MQTT_ERR_SUCCESS:
            self._failed = f"SUBSCRIBE failed: {mqtt.error_string(result)}"
            return
        self._sub_mid = mid

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code_list: list[Any],
        properties: Any,
    ) -> None:
        if mid != self._sub_mid:
            return
        bad = [rc for rc in reason_code_list if rc.is_failure]
        if bad:
            self._failed = f"SUBACK refused: {bad}"
            return
        self._ready.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # Runs on paho's network thread: record, apply knobs, hand over.
        try:
            topic = msg.topic
            payload = _decode(bytes(msg.payload))
            token = _token_of(payload)
            record = RequestRecord(
                time.monotonic(),
                topic,
                None if payload is _INVALID else payload,
                token if isinstance(token, str) else None,
            )
            with self._knob_lock:
                drop = self._drop > 0
                if drop:
                    self._drop -= 1
                    reject = None
                else:
                    reject = self._rejects.popleft() if self._rejects else None
                delay = self._delay
            with self._log_cond:
                self.requests.append(record)
                if drop:
                    self.dropped.append(record)
                self._log_cond.notify_all()
            if not drop:
                self._schedule(delay, lambda: self._handle(topic, payload, reject))
        except Exception as exc:  # never kill paho's thread
            self._record_error(exc)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: Any,
        properties: Any,
    ) -> None:
        # paho reconnects by itself; on_connect then resubscribes.
        self._ready.clear()

    # -------------------------------------------------------------- worker

    def _schedule(self, delay: float, fn: Callable[[], None]) -> None:
        with self._sched_cond:
            if self._stopping:
                return
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), fn))
            self._sched_cond.notify_all()

    def _run_worker(self) -> None:
        while True:
            with self._sched_cond:
                while not self._stopping:
                    if self._heap:
                        wait = self._heap[0][0] - time.monotonic()
                        if wait <= 0:
                            break
                        self._sched_cond.wait(wait)
                    else:
                        self._sched_cond.wait()
                if self._stopping:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception as exc:
                self._record_error(exc)

    def _record_error(self, exc: BaseException) -> None:
        _log.exception("%s: handler error", self.client_id, exc_info=exc)
        self.errors.append(exc)

    # ------------------------------------------------------------ publishing

    def _publish(self, topic: str, payload: JsonDict) -> None:
        """Publish one message (QoS 1) and log it."""
        client = self._client
        if client is None:
            return
        with self._log_cond:
            self.responses.append(ResponseRecord(time.monotonic(), topic, copy.deepcopy(payload)))
            self._log_cond.notify_all()
        client.publish(topic, _encode(topic, payload), qos=1)

    def _respond(self, topic: str, payload: JsonDict) -> None:
        """Publish an accepted/rejected response, applying the response knobs."""
        if self.wrong_token_first and self._has_client_tokens:
            stray = dict(payload)
            stray["clientToken"] = f"wrong-{uuid.uuid4().hex}"
            self._publish(topic, stray)
        for _ in range(2 if self.duplicate_responses else 1):
            self._publish(topic, payload)


# --------------------------------------------------------------------------
# JSON helpers for the shadow
# --------------------------------------------------------------------------


def _json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values (``true`` is not ``1``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _meta_of(value: Any, ts: int) -> Any:
    """AWS metadata for a value: objects recurse, arrays hold per-element metadata."""
    if isinstance(value, dict):
        return {k: _meta_of(v, ts) for k, v in value.items()}
    if isinstance(value, list):
        return [_meta_of(v, ts) for v in value]
    return {"timestamp": ts}


def _merge(state: JsonDict, meta: JsonDict, patch: JsonDict, ts: int) -> None:
    """Deep-merge ``patch`` into ``state`` (and its metadata); ``None`` deletes."""
    for key, value in patch.items():
        if value is None:
            state.pop(key, None)
            meta.pop(key, None)
        elif isinstance(value, dict):
            if not isinstance(state.get(key), dict):
                state[key] = {}
                meta[key] = {}
            sub_meta = meta.get(key)
            if not isinstance(sub_meta, dict):
                sub_meta = meta[key] = {}
            _merge(state[key], sub_meta, value, ts)
        else:  # scalars and arrays replace wholesale
            state[key] = copy.deepcopy(value)
            meta[key] = _meta_of(value, ts)


def _delta(desired: JsonDict, reported: JsonDict) -> JsonDict:
    """Keys of ``desired`` that differ from ``reported`` (nested objects recurse)."""
    out: JsonDict = {}
    for key, want in desired.items():
        if key not in reported:
            out[key] = copy.deepcopy(want)
            continue
        have = reported[key]
        if isinstance(want, dict) and isinstance(have, dict):
            sub = _delta(want, have)
            if sub:
                out[key] = sub
        elif not _json_equal(want, have):
            out[key] = copy.deepcopy(want)
    return out


def _restrict(meta: Any, shape: Any) -> Any:
    """The part of ``meta`` covering the keys of ``shape`` (a delta)."""
    if isinstance(shape, dict) and isinstance(meta, dict):
        return {k: _restrict(meta.get(k), v) for k, v in shape.items() if k in meta}
    return copy.deepcopy(meta)


def _array_has_null(value: Any) -> bool:
    if isinstance(value, list):
        return any(v is None or _array_has_null(v) for v in value)
    if isinstance(value, dict):
        return any(_array_has_null(v) for v in value.values())
    return False


class _ShadowError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------
# Device Shadow
# --------------------------------------------------------------------------

_SHADOW_OPS = ("get", "update", "delete")
_SECTIONS = ("desired", "reported")


class ShadowService(_FakeService):
    """Fake Device Shadow service for classic and named shadows (AWS E3).

    Requests: ``$aws/things/<thing>/shadow[/name/<name>]/{get,update,delete}``.
    Responses (QoS 1): ``…/get/accepted|rejected``, ``…/update/accepted|rejected``,
    ``…/update/delta``, ``…/update/documents``, ``…/delete/accepted|rejected``.

    ``thing_names`` restricts the fake to those things (several fakes can then
    share a broker); ``None`` answers for every thing (``+``).

    Knobs: ``drop_next(n)``, ``delay(s)``, ``duplicate_responses``,
    ``wrong_token_first``, ``reject_next(code, message)``; preload with
    ``set_document()``, inspect with ``get_document()``, play a cloud-side
    update (publishes accepted/delta/documents) with ``cloud_update()``.
    """

    _client_id_prefix = "fake-shadow"
    #: AWS limit on the state document (metadata excluded), in bytes.
    max_state_bytes = 8 * 1024

    def __init__(
        self,
        host: str,
        port: int,
        *,
        thing_names: Iterable[str] | None = None,
    ) -> None:
        super().__init__(host, port)
        self.thing_names = None if thing_names is None else list(thing_names)
        self._state_lock = threading.RLock()
        self._docs: dict[tuple[str, str | None], JsonDict] = {}
        self._versions: dict[tuple[str, str | None], int] = {}

    def _subscriptions(self) -> list[str]:
        things = self.thing_names if self.thing_names is not None else ["+"]
        topics = []
        for thing in things:
            for op in _SHADOW_OPS:
                topics.append(f"$aws/things/{thing}/shadow/{op}")
                topics.append(f"$aws/things/{thing}/shadow/name/+/{op}")
        return topics

    # ------------------------------------------------------------- knobs/API

    def reject_next(self, code: int = 500, message: str = "Internal service failure") -> None:
        """Answer the next (non-dropped) request with ``…/rejected`` ``{code, message}``."""
        self._push_reject((int(code), str(message)))

    @staticmethod
    def topic_prefix(thing: str, name: str | None = None) -> str:
        """``$aws/things/<thing>/shadow`` or ``…/shadow/name/<name>``."""
        base = f"$aws/things/{thing}/shadow"
        return base if name is None else f"{base}/name/{name}"

    def set_document(self, thing: str, doc: Mapping[str, Any], name: str | None = None) -> None:
        """Preload a shadow: ``doc`` is ``{"state": {"desired"?, "reported"?}, "version"?}``.

        Metadata timestamps are set to now. Without ``version`` the next
        version number is used. Nothing is published.
        """
        state = doc.get("state", {})
        ts = _now()
        new_state: JsonDict = {}
        new_meta: JsonDict = {}
        for section in _SECTIONS:
            value = state.get(section)
            if value:
                new_state[section] = copy.deepcopy(value)
                new_meta[section] = _meta_of(value, ts)
        key = (thing, name)
        with self._state_lock:
            version = doc.get("version", self._versions.get(key, 0) + 1)
            self._docs[key] = {
                "state": new_state,
                "metadata": new_meta,
                "version": int(version),
                "timestamp": ts,
            }
            self._versions[key] = int(version)

    def get_document(self, thing: str, name: str | None = None) -> JsonDict | None:
        """A copy of the stored ``{"state", "metadata", "version", "timestamp"}`` or None."""
        with self._state_lock:
            doc = self._docs.get((thing, name))
            return copy.deepcopy(doc) if doc is not None else None

    def version_of(self, thing: str, name: str | None = None) -> int:
        """The last version number used (survives delete); 0 if never updated."""
        with self._state_lock:
            return self._versions.get((thing, name), 0)

    def cloud_update(
        self,
        thing: str,
        state: Mapping[str, Any],
        *,
        name: str | None = None,
        client_token: str | None = None,
    ) -> JsonDict:
        """Apply an update as if another AWS client sent it (publishes the
        ``/update/accepted``, ``/update/delta`` and ``/update/documents``
        messages) and return the accepted document. Raises ``ValueError`` if
        AWS would reject it."""
        request: JsonDict = {"state": copy.deepcopy(dict(state))}
        if client_token is not None:
            request["clientToken"] = client_token
        try:
            return self._update(thing, name, request, notify_rejected=False)
        except _ShadowError as exc:
            raise ValueError(f"{exc.code}: {exc.message}") from None

    # -------------------------------------------------------------- handling

    def _error_doc(self, code: int, message: str, token: Any) -> JsonDict:
        return _with_token({"code": code, "message": message, "timestamp": _now()}, token)

    def _handle(self, topic: str, payload: Any, reject: Any) -> None:
        parts = topic.split("/")
        if len(parts) == 5 and parts[3] == "shadow":
            thing, name, op = parts[2], None, parts[4]
        elif len(parts) == 7 and parts[3] == "shadow" and parts[4] == "name":
            thing, name, op = parts[2], parts[5], parts[6]
        else:  # pragma: no cover - not one of our subscriptions
            return
        prefix = self.topic_prefix(thing, name)
        token = _token_of(payload)
        if reject is not None:
            code, message = reject
            self._respond(f"{prefix}/{op}/rejected", self._error_doc(code, message, token))
            return
        try:
            if payload is _INVALID or not isinstance(payload, dict):
                raise _ShadowError(400, "Invalid JSON")
            if op == "get":
                self._get(thing, name, payload)
            elif op == "delete":
                self._delete(thing, name, payload)
            elif op == "update":
                self._update(thing, name, payload, notify_rejected=True)
        except _ShadowError as exc:
            self._respond(f"{prefix}/{op}/rejected", self._error_doc(exc.code, exc.message, token))

    @staticmethod
    def _missing_message(thing: str, name: str | None) -> str:
        shown = thing if name is None else f"{thing}~{name}"
        return f"No shadow exists with name: '{shown}'"

    def _get(self, thing: str, name: str | None, payload: JsonDict) -> None:
        prefix = self.topic_prefix(thing, name)
        token = payload.get("clientToken")
        with self._state_lock:
            doc = self._docs.get((thing, name))
            if doc is None:
                raise _ShadowError(404, self._missing_message(thing, name))
            state = copy.deepcopy(doc["state"])
            delta = _delta(state.get("desired", {}), state.get("reported", {}))
            if delta:
                state["delta"] = delta
            response = _with_token(
                {
                    "state": state,
                    "metadata": copy.deepcopy(doc["metadata"]),
                    "version": doc["version"],
                    "timestamp": _now(),
                },
                token,
            )
            self._respond(f"{prefix}/get/accepted", response)

    def _delete(self, thing: str, name: str | None, payload: JsonDict) -> None:
        prefix = self.topic_prefix(thing, name)
        token = payload.get("clientToken")
        with self._state_lock:
            doc = self._docs.pop((thing, name), None)
            if doc is None:
                raise _ShadowError(404, self._missing_message(thing, name))
            response = _with_token({"version": doc["version"], "timestamp": _now()}, token)
            self._respond(f"{prefix}/delete/accepted", response)

    def _update(
        self, thing: str, name: str | None, payload: JsonDict, *, notify_rejected: bool
    ) -> JsonDict:
        prefix = self.topic_prefix(thing, name)
        token = payload.get("clientToken")
        if "state" not in payload or payload["state"] is None:
            raise _ShadowError(400, "Missing required node: state")
        state = payload["state"]
        if not isinstance(state, dict):
            raise _ShadowError(400, "Invalid JSON")
        for section, value in state.items():
            if section not in _SECTIONS:
                raise _ShadowError(400, f"State contains an invalid node: '{section}'")
            if value is not None and not isinstance(value, dict):
                raise _ShadowError(400, "Invalid JSON")
        if _array_has_null(state):
            raise _ShadowError(400, "Invalid JSON")
        version = payload.get("version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise _ShadowError(400, "Invalid JSON")
        key = (thing, name)
        with self._state_lock:
            current = self._versions.get(key, 0)
            if version is not None and version != current:
                raise _ShadowError(409, "Version conflict")
            old = self._docs.get(key)
            ts = _now()
            new_state = copy.deepcopy(old["state"]) if old else {}
            new_meta = copy.deepcopy(old["metadata"]) if old else {}
            for section, patch in state.items():
                if patch is None:
                    new_state.pop(section, None)
                    new_meta.pop(section, None)
                    continue
                sec_state = new_state.setdefault(section, {})
                sec_meta = new_meta.setdefault(section, {})
                _merge(sec_state, sec_meta, patch, ts)
                if not sec_state:  # an emptied section disappears
                    new_state.pop(section)
                    new_meta.pop(section, None)
            if len(json.dumps(new_state, separators=(",", ":"))) > self.max_state_bytes:
                raise _ShadowError(413, "The payload exceeds the maximum size allowed")
            new_version = current + 1
            self._versions[key] = new_version
            self._docs[key] = {
                "state": new_state,
                "metadata": new_meta,
                "version": new_version,
                "timestamp": ts,
            }

            accepted = _with_token(
                {
                    "state": copy.deepcopy(state),
                    "metadata": {s: _meta_of(p, ts) for s, p in state.items()},
                    "version": new_version,
                    "timestamp": ts,
                },
                token,
            )
            self._respond(f"{prefix}/update/accepted", accepted)

            delta = _delta(new_state.get("desired", {}), new_state.get("reported", {}))
            if delta:
                delta_doc = _with_token(
                    {
                        "version": new_version,
                        "timestamp": ts,
                        "state": delta,
                        "metadata": _restrict(new_meta.get("desired", {}), delta),
                    },
                    token,
                )
                self._publish(f"{prefix}/update/delta", delta_doc)

            documents: JsonDict = {}
            if old is not None:
                documents["previous"] = {
                    "state": copy.deepcopy(old["state"]),
                    "metadata": copy.deepcopy(old["metadata"]),
                    "version": old["version"],
                }
            documents["current"] = {
                "state": copy.deepcopy(new_state),
                "metadata": copy.deepcopy(new_meta),
                "version": new_version,
            }
            documents["timestamp"] = ts
            self._publish(f"{prefix}/update/documents", _with_token(documents, token))
            return accepted


# --------------------------------------------------------------------------
# Fleet provisioning
# --------------------------------------------------------------------------


class ProvisioningRejection(Exception):
    """Raise from a template callable to reject RegisterThing with this error."""

    def __init__(self, status_code: int, error_code: str, error_message: str) -> None:
        super().__init__(status_code, error_code, error_message)
        self.status_code = status_code
        self.error_code = error_code
        self.error_message = error_message


Template = Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]


def default_template(parameters: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The ``"default"`` template: thing ``"thing-" + SerialNumber``, no configuration."""
    return "thing-" + str(parameters.get("SerialNumber", "x")), {}


@dataclass
class IssuedCertificate:
    """A certificate created by :class:`ProvisioningService`."""

    certificate_id: str
    certificate_pem: str
    #: ``"create"`` (CreateKeysAndCertificate) or ``"csr"``.
    source: str
    #: ``PENDING_ACTIVATION`` until RegisterThing succeeds, then ``ACTIVE``.
    status: str = "PENDING_ACTIVATION"
    thing_name: str | None = None


@dataclass
class _Ownership:
    certificate_id: str
    issued_at: float
    used: bool = False


class ProvisioningService(_FakeService):
    """Fake fleet-provisioning MQTT API (AWS E5), JSON format only.

    Requests: ``$aws/certificates/create/json`` (CreateKeysAndCertificate),
    ``$aws/certificates/create-from-csr/json`` (CreateCertificateFromCsr),
    ``$aws/provisioning-templates/<template>/provision/json`` (RegisterThing);
    responses on ``<request topic>/accepted|rejected``, errors as
    ``{statusCode, errorCode, errorMessage}``.

    Certificates are signed by the CA given as PEM paths (the test PKI), so a
    device can connect to mosquitto's mTLS listener with them. ``templates``
    maps a template name to ``callable(parameters) -> (thing_name,
    device_configuration)``; the callable may raise :class:`ProvisioningRejection`
    (or any exception → 400 ``InvalidParameterException``). ``None`` means
    ``{"default": default_template}``.

    Knobs: ``drop_next(n)``, ``delay(s)``, ``duplicate_responses``,
    ``reject_next(status_code, error_code, message)``, ``token_ttl`` (seconds,
    default 3600), ``private_key_marker`` (a line of explanatory text put in
    front of every ``privateKey`` PEM, e.g. a secret-leak sentinel).
    State: ``certificates`` (id → :class:`IssuedCertificate`) and
    ``registered_things`` (thing name → certificate id).
    """

    _client_id_prefix = "fake-provisioning"
    _has_client_tokens = False  # provisioning responses carry no clientToken

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ca_cert_path: Any,
        ca_key_path: Any,
        templates: Mapping[str, Template] | None = None,
    ) -> None:
        super().__init__(host, port)
        self._ca_cert, self._ca_key = certs.load_ca(ca_cert_path, ca_key_path)
        self.templates: dict[str, Template] = (
            {"default": default_template} if templates is None else dict(templates)
        )
        self.token_ttl = 3600.0
        self.private_key_marker: str | None = None
        self.certificates: dict[str, IssuedCertificate] = {}
        self.registered_things: dict[str, str] = {}
        self._tokens: dict[str, _Ownership] = {}
        self._state_lock = threading.RLock()

    def _subscriptions(self) -> list[str]:
        return [
            f"$aws/certificates/create/{fmt}" for fmt in ("json", "cbor")
        ] + [
            f"$aws/certificates/create-from-csr/{fmt}" for fmt in ("json", "cbor")
        ] + [
            f"$aws/provisioning-templates/+/provision/{fmt}" for fmt in ("json", "cbor")
        ]

    def reject_next(
        self,
        status_code: int = 500,
        error_code: str = "InternalFailure",
        message: str = "Internal failure",
    ) -> None:
        """Answer the next (non-dropped) request on ``…/rejected`` with this error."""
        self._push_reject((int(status_code), str(error_code), str(message)))

    def add_template(self, name: str, template: Template) -> None:
        """Register (or replace) a provisioning template."""
        with self._state_lock:
            self.templates[name] = template

    def expire_tokens(self) -> None:
        """Make every issued ownership token expired (as after one hour)."""
        with self._state_lock:
            for info in self._tokens.values():
                info.issued_at = -float("inf")

    # -------------------------------------------------------------- handling

    @staticmethod
    def _error(status_code: int, error_code: str, message: str) -> JsonDict:
        return {"statusCode": status_code, "errorCode": error_code, "errorMessage": message}

    def _handle(self, topic: str, payload: Any, reject: Any) -> None:
        if reject is not None:
            self._respond(f"{topic}/rejected", self._error(*reject))
            return
        parts = topic.split("/")
        # The same operations on the /json and /cbor topics; answers go back in the same format.
        base = topic.rsplit("/", 1)[0]
        if base == "$aws/certificates/create":
            self._respond(f"{topic}/accepted", self._create_keys())
        elif base == "$aws/certificates/create-from-csr":
            ok, doc = self._create_from_csr(payload)
            self._respond(f"{topic}/{'accepted' if ok else 'rejected'}", doc)
        elif len(parts) == 5 and parts[1] == "provisioning-templates":
            ok, doc = self._register_thing(parts[2], payload)
            self._respond(f"{topic}/{'accepted' if ok else 'rejected'}", doc)

    def _issue(
        self,
        public_key: Any,
        subject: x509.Name | None,
        source: str,
    ) -> tuple[str, str, str]:
        """Sign a client certificate; return (certificateId, PEM, ownership token)."""
        certificate_id = secrets.token_hex(32)
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = certs.make_leaf(
            subject=certificate_id if subject is None or len(subject) == 0 else subject,
            public_key=public_key,
            ca_cert=self._ca_cert,
            ca_key=self._ca_key,
            eku=ExtendedKeyUsageOID.CLIENT_AUTH,
            not_before=now - datetime.timedelta(minutes=5),
            not_after=min(now + datetime.timedelta(days=365), self._ca_cert.not_valid_after_utc),
        )
        pem = certs.cert_pem(cert).decode()
        token = secrets.token_urlsafe(96)
        with self._state_lock:
            self.certificates[certificate_id] = IssuedCertificate(certificate_id, pem, source)
            self._tokens[token] = _Ownership(certificate_id, time.monotonic())
        return certificate_id, pem, token

    def _create_keys(self) -> JsonDict:
        key = certs.rsa_key()
        certificate_id, pem, token = self._issue(key.public_key(), None, "create")
        private_pem = certs.key_pem(key).decode()  # PKCS#1, as AWS returns
        marker = self.private_key_marker
        if marker:
            private_pem = f"{marker}\n{private_pem}"
        return {
            "certificateId": certificate_id,
            "certificatePem": pem,
            "privateKey": private_pem,
            "certificateOwnershipToken": token,
        }

    def _create_from_csr(self, payload: Any) -> tuple[bool, JsonDict]:
        def invalid(message: str) -> tuple[bool, JsonDict]:
            return False, self._error(400, "InvalidCSR", message)

        if payload is _INVALID or not isinstance(payload, dict):
            return invalid("Invalid JSON payload")
        csr_pem = payload.get("certificateSigningRequest")
        if not isinstance(csr_pem, str) or not csr_pem.strip():
            return invalid("certificateSigningRequest is missing")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
            public_key = csr.public_key()
        except ValueError:
            return invalid("The certificate signing request could not be parsed")
        if not csr.is_signature_valid:
            return invalid("The certificate signing request signature is invalid")
        if isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < 2048:
                return invalid("RSA keys must be at least 2048 bits")
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            if public_key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
                return invalid("Unsupported elliptic curve")
        else:
            return invalid("Unsupported key algorithm")
        certificate_id, pem, token = self._issue(public_key, csr.subject, "csr")
        return True, {
            "certificateId": certificate_id,
            "certificatePem": pem,
            "certificateOwnershipToken": token,
        }

    def _register_thing(self, template_name: str, payload: Any) -> tuple[bool, JsonDict]:
        def fail(status: int, code: str, message: str) -> tuple[bool, JsonDict]:
            return False, self._error(status, code, message)

        if payload is _INVALID or not isinstance(payload, dict):
            return fail(400, "InvalidPayload", "The payload is not a valid JSON object")
        with self._state_lock:
            template = self.templates.get(template_name)
            if template is None:
                return fail(
                    404,
                    "ResourceNotFoundException",
                    f"Template {template_name} not found",
                )
            token = payload.get("certificateOwnershipToken")
            if not isinstance(token, str) or not token:
                return fail(
                    400,
                    "InvalidParameterException",
                    "certificateOwnershipToken is missing",
                )
            info = self._tokens.get(token)
            if info is None:
                return fail(400, "InvalidParameterException", "Invalid certificateOwnershipToken")
            if info.used:
                return fail(
                    400,
                    "InvalidParameterException",
                    "certificateOwnershipToken was already used",
                )
            if time.monotonic() - info.issued_at > self.token_ttl:
                return fail(
                    400,
                    "InvalidParameterException",
                    "certificateOwnershipToken has expired",
                )
            parameters = payload.get("parameters", {})
            if parameters is None:
                parameters = {}
            if not isinstance(parameters, dict):
                return fail(400, "InvalidParameterException", "parameters must be an object")
            try:
                thing_name, configuration = template(copy.deepcopy(parameters))
            except ProvisioningRejection as exc:
                return fail(exc.status_code, exc.error_code, exc.error_message)
            except Exception as exc:
                return fail(400, "InvalidParameterException", str(exc) or type(exc).__name__)
            info.used = True
            cert = self.certificates[info.certificate_id]
            cert.status = "ACTIVE"
            cert.thing_name = thing_name
            self.registered_things[thing_name] = info.certificate_id
        return True, {"deviceConfiguration": dict(configuration), "thingName": thing_name}


# --------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------

_PENDING = ("QUEUED", "IN_PROGRESS")
_DEVICE_STATUSES = ("IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED")
_TERMINAL = ("SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "REMOVED", "CANCELED")


@dataclass
class _Execution:
    job_id: str
    thing: str
    document: JsonDict
    seq: int
    status: str = "QUEUED"
    status_details: dict[str, Any] | None = None
    queued_at: int = 0
    started_at: int | None = None
    last_updated_at: int = 0
    version: int = 1
    execution_number: int = 1

    def summary(self) -> JsonDict:
        out: JsonDict = {"jobId": self.job_id, "queuedAt": self.queued_at}
        if self.started_at is not None:
            out["startedAt"] = self.started_at
        out.update(
            lastUpdatedAt=self.last_updated_at,
            versionNumber=self.version,
            executionNumber=self.execution_number,
        )
        return out

    def state(self) -> JsonDict:
        out: JsonDict = {"status": self.status}
        if self.status_details is not None:
            out["statusDetails"] = copy.deepcopy(self.status_details)
        out["versionNumber"] = self.version
        return out

    def full(self, *, include_document: bool = True) -> JsonDict:
        out: JsonDict = {"jobId": self.job_id, "thingName": self.thing}
        if include_document:
            out["jobDocument"] = copy.deepcopy(self.document)
        out["status"] = self.status
        if self.status_details is not None:
            out["statusDetails"] = copy.deepcopy(self.status_details)
        out["queuedAt"] = self.queued_at
        if self.started_at is not None:
            out["startedAt"] = self.started_at
        out.update(
            lastUpdatedAt=self.last_updated_at,
            versionNumber=self.version,
            executionNumber=self.execution_number,
        )
        return out


class _JobsError(Exception):
    def __init__(self, code: str, message: str, state: JsonDict | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.state = state


class JobsService(_FakeService):
    """Fake AWS IoT Jobs device MQTT API (AWS E6).

    Requests under ``$aws/things/<thing>/jobs/``: ``get``
    (GetPendingJobExecutions), ``start-next`` (StartNextPendingJobExecution),
    ``<jobId>/get`` (DescribeJobExecution; ``$next`` allowed) and
    ``<jobId>/update`` (UpdateJobExecution), each answered on
    ``…/accepted|rejected``. Notifications: ``…/jobs/notify`` (the pending list
    changed: a job was added or left the pending list) and ``…/jobs/notify-next``
    (the next pending job changed).

    Test-side API: ``add_job(thing, job_id, document)``, ``cancel_job()``,
    ``get_execution()``. Knobs: ``drop_next``, ``delay``,
    ``duplicate_responses``, ``wrong_token_first``, ``reject_next(code, message)``.
    """

    _client_id_prefix = "fake-jobs"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        thing_names: Iterable[str] | None = None,
    ) -> None:
        super().__init__(host, port)
        self.thing_names = None if thing_names is None else list(thing_names)
        self._state_lock = threading.RLock()
        self._jobs: dict[str, dict[str, _Execution]] = {}
        self._order = itertools.count()

    def _subscriptions(self) -> list[str]:
        things = self.thing_names if self.thing_names is not None else ["+"]
        topics = []
        for thing in things:
            base = f"$aws/things/{thing}/jobs"
            topics += [f"{base}/get", f"{base}/start-next", f"{base}/+/get", f"{base}/+/update"]
        return topics

    # ------------------------------------------------------------- knobs/API

    def reject_next(self, code: str = "InternalError", message: str = "Internal error") -> None:
        """Answer the next (non-dropped) request on ``…/rejected`` with ``{code, message}``."""
        self._push_reject((str(code), str(message)))

    def add_job(self, thing: str, job_id: str, document: Mapping[str, Any]) -> None:
        """Queue a job execution (versionNumber 1, executionNumber 1) and publish
        ``notify`` and, when the next pending job changes, ``notify-next``."""
        if job_id == "$next":
            raise ValueError("'$next' is not a valid job id")
        with self._state_lock:
            jobs = self._jobs.setdefault(thing, {})
            if job_id in jobs:
                raise ValueError(f"job {job_id!r} already exists for thing {thing!r}")
            before = self._next(thing)
            now = _now()
            jobs[job_id] = _Execution(
                job_id=job_id,
                thing=thing,
                document=copy.deepcopy(dict(document)),
                seq=next(self._order),
                queued_at=now,
                last_updated_at=now,
            )
            self._notify(thing, before, list_changed=True)

    def cancel_job(self, thing: str, job_id: str) -> None:
        """Cancel a pending execution (status CANCELED) and publish the notifications."""
        with self._state_lock:
            execution = self._jobs.get(thing, {}).get(job_id)
            if execution is None or execution.status not in _PENDING:
                raise ValueError(f"no pending job {job_id!r} for thing {thing!r}")
            before = self._next(thing)
            execution.status = "CANCELED"
            execution.last_updated_at = _now()
            execution.version += 1
            self._notify(thing, before, list_changed=True)

    def get_execution(self, thing: str, job_id: str) -> JsonDict | None:
        """The full execution (any status) as AWS would describe it, or None."""
        with self._state_lock:
            execution = self._jobs.get(thing, {}).get(job_id)
            return execution.full() if execution is not None else None

    # -------------------------------------------------------------- internals

    def _pending(self, thing: str) -> list[_Execution]:
        jobs = self._jobs.get(thing, {}).values()
        return sorted((e for e in jobs if e.status in _PENDING), key=lambda e: e.seq)

    def _next(self, thing: str) -> _Execution | None:
        pending = self._pending(thing)
        for execution in pending:
            if execution.status == "IN_PROGRESS":
                return execution
        return pending[0] if pending else None

    def _notify(self, thing: str, before: _Execution | None, *, list_changed: bool) -> None:
        base = f"$aws/things/{thing}/jobs"
        now = _now()
        if list_changed:
            groups: dict[str, list[JsonDict]] = {}
            for execution in self._pending(thing):
                groups.setdefault(execution.status, []).append(execution.summary())
            self._publish(f"{base}/notify", {"timestamp": now, "jobs": groups})
        after = self._next(thing)
        if (before.job_id if before else None) != (after.job_id if after else None):
            doc: JsonDict = {"timestamp": now}
            if after is not None:
                doc["execution"] = after.full()
            self._publish(f"{base}/notify-next", doc)

    def _handle(self, topic: str, payload: Any, reject: Any) -> None:
        parts = topic.split("/")
        if len(parts) not in (5, 6) or parts[3] != "jobs":  # pragma: no cover
            return
        thing = parts[2]
        op_topic = topic
        token = _token_of(payload)
        if reject is not None:
            code, message = reject
            self._respond(f"{op_topic}/rejected", self._error(code, message, token))
            return
        try:
            if payload is _INVALID or not isinstance(payload, dict):
                raise _JobsError("InvalidJson", "The request payload is not valid JSON")
            with self._state_lock:
                notify: tuple[_Execution | None, bool] | None = None
                if len(parts) == 5 and parts[4] == "get":
                    doc = self._get_pending(thing)
                elif len(parts) == 5 and parts[4] == "start-next":
                    doc = self._start_next(thing, payload)
                elif len(parts) == 6 and parts[5] == "get":
                    doc = self._describe(thing, parts[4], payload)
                elif len(parts) == 6 and parts[5] == "update":
                    doc, notify = self._update(thing, parts[4], payload)
                else:  # pragma: no cover - not one of our subscriptions
                    raise _JobsError("InvalidTopic", f"Unknown jobs topic: {topic}")
                doc["timestamp"] = _now()
                self._respond(f"{op_topic}/accepted", _with_token(doc, token))
                if notify is not None:
                    self._notify(thing, notify[0], list_changed=notify[1])
        except _JobsError as exc:
            self._respond(
                f"{op_topic}/rejected", self._error(exc.code, exc.message, token, exc.state)
            )

    @staticmethod
    def _error(code: str, message: str, token: Any, state: JsonDict | None = None) -> JsonDict:
        doc: JsonDict = {"code": code, "message": message, "timestamp": _now()}
        _with_token(doc, token)
        if state is not None:
            doc["executionState"] = state
        return doc

    def _get_pending(self, thing: str) -> JsonDict:
        pending = self._pending(thing)
        return {
            "inProgressJobs": [e.summary() for e in pending if e.status == "IN_PROGRESS"],
            "queuedJobs": [e.summary() for e in pending if e.status == "QUEUED"],
        }

    def _start_next(self, thing: str, payload: JsonDict) -> JsonDict:
        execution = self._next(thing)
        if execution is None:
            return {}
        if execution.status == "QUEUED":
            details = payload.get("statusDetails")
            if details is not None and not isinstance(details, dict):
                raise _JobsError("InvalidRequest", "statusDetails must be an object")
            now = _now()
            execution.status = "IN_PROGRESS"
            execution.started_at = now
            execution.last_updated_at = now
            execution.version += 1
            if details is not None:
                execution.status_details = copy.deepcopy(details)
            # Still pending and still next: no notify / notify-next (AWS).
        return {"execution": execution.full()}

    def _describe(self, thing: str, job_id: str, payload: JsonDict) -> JsonDict:
        include_document = payload.get("includeJobDocument", True) is not False
        if job_id == "$next":
            execution = self._next(thing)
            if execution is None:
                return {}
        else:
            execution = self._jobs.get(thing, {}).get(job_id)
            if execution is None:
                raise _JobsError(
                    "ResourceNotFound",
                    f"Job execution for job {job_id} and thing {thing} not found",
                )
            number = payload.get("executionNumber")
            if number is not None and number != execution.execution_number:
                raise _JobsError(
                    "ResourceNotFound",
                    f"Job execution {number} for job {job_id} and thing {thing} not found",
                )
            if execution.status in _TERMINAL:
                raise _JobsError(
                    "TerminalStateReached",
                    f"Job execution for job {job_id} is in terminal state {execution.status}",
                )
        return {"execution": execution.full(include_document=include_document)}

    def _update(
        self, thing: str, job_id: str, payload: JsonDict
    ) -> tuple[JsonDict, tuple[_Execution | None, bool]]:
        if job_id == "$next":
            raise _JobsError("InvalidTopic", "$next is only valid for DescribeJobExecution")
        execution = self._jobs.get(thing, {}).get(job_id)
        if execution is None:
            raise _JobsError(
                "ResourceNotFound",
                f"Job execution for job {job_id} and thing {thing} not found",
            )
        status = payload.get("status")
        if status not in _DEVICE_STATUSES:
            raise _JobsError(
                "InvalidRequest",
                f"status must be one of {', '.join(_DEVICE_STATUSES)}, got {status!r}",
            )
        details = payload.get("statusDetails")
        if details is not None and not isinstance(details, dict):
            raise _JobsError("InvalidRequest", "statusDetails must be an object")
        number = payload.get("executionNumber")
        if number is not None and number != execution.execution_number:
            raise _JobsError(
                "ResourceNotFound",
                f"Job execution {number} for job {job_id} and thing {thing} not found",
            )
        expected = payload.get("expectedVersion")
        if expected is not None and expected != execution.version:
            raise _JobsError(
                "VersionMismatch",
                f"expectedVersion {expected} does not match the current version "
                f"{execution.version}",
                execution.state(),
            )
        if execution.status in _TERMINAL:
            raise _JobsError(
                "InvalidStateTransition",
                f"Cannot update job execution from {execution.status} to {status}",
                execution.state(),
            )
        before = self._next(thing)
        now = _now()
        was_pending = execution.status in _PENDING
        if status == "IN_PROGRESS" and execution.started_at is None:
            execution.started_at = now
        execution.status = status
        if details is not None:
            execution.status_details = copy.deepcopy(details)
        execution.last_updated_at = now
        execution.version += 1
        left_pending = was_pending and status not in _PENDING
        doc: JsonDict = {}
        if payload.get("includeJobExecutionState") is True:
            doc["executionState"] = execution.state()
        if payload.get("includeJobDocument") is True:
            doc["jobDocument"] = copy.deepcopy(execution.document)
        return doc, (before, left_pending)
