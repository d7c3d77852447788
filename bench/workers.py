"""Benchmark worker processes: one client running one scenario, or a helper.

Run by ``bench/run.py``, one process per measurement::

    python bench/workers.py CLIENT SCENARIO --port P --topic T --messages N [...]

A worker pins itself to one CPU core (``--core``) before importing any client library, so
every thread it starts (paho's loop thread, awsiot_rs's Rust runtime) inherits the pin.

Protocol with the orchestrator (line based):

* stdout: one JSON object per line, each with an ``"event"`` key: ``"ready"`` (connected,
  and subscribed where relevant; the measured section starts after it), ``"sent"`` (for the
  ``pub_qos0*`` scenarios: every publish call returned) and finally ``"result"``. Nothing
  else may write to stdout (libraries log to stderr).
* stdin: for ``pub_qos0*`` the worker keeps its connection up after ``"sent"`` until the
  orchestrator writes a line (the independent subscriber has everything, or gave up), then
  reads its CPU counter and reports. EOF on stdin counts as that line.

Timing uses ``time.monotonic()`` (``CLOCK_MONOTONIC``, the same clock in every process), so
the orchestrator may subtract a time taken here from one taken in another process. CPU is
``getrusage(RUSAGE_SELF)`` user + system, which covers every thread of the process.

Clients: ``awsiot_rs``, ``paho`` (paho-mqtt 2.x, threaded ``loop_start()``), ``gmqtt``
(asyncio), ``raw`` (``mqttraw``: pre-encoded packets on a bare asyncio protocol). Helpers
(client name ``helper``): ``sub`` counts QoS 0 arrivals for ``pub_qos0*``; ``pub`` sends
the load for ``recv_qos0_*``; ``pub_each`` sends one message to each of the ``scale``
topics.

Worker scenarios: ``pub_qos0`` (also run over mTLS with ``--ca/--cert/--key`` and with 16 KiB
payloads), ``pub_qos0_await``, ``pub_qos1``, ``pub_qos1_nowait``, ``recv_qos0_iter``,
``recv_qos0_cb``, ``latency`` / ``latency_iter`` (``--messages`` round trips after
``--warmup``; the result carries percentiles in µs) and ``scale`` (``--count`` connections,
``--concurrency`` at a time; ``ready`` comes after all are connected and subscribed, then a
line on stdin says the helper has published, and the result counts deliveries).

Adding a scenario: write a function ``f(ctx) -> dict`` (or ``async def``) that emits
``ready`` and returns the result fields, and register it with ``@worker(client, scenario)``.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import resource
import select
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

HOST = "127.0.0.1"  # loopback only, always


# -- plumbing -------------------------------------------------------------------------------


def emit(event: str, **fields: Any) -> None:
    """Writes one JSON event line to stdout (the orchestrator reads it)."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def now() -> float:
    return time.monotonic()


def cpu() -> float:
    """CPU seconds (user + system) used so far by every thread of this process."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def loop_thread_cpu() -> float:
    """CPU seconds (user + system) used so far by this process's main thread (the asyncio
    loop's, in every worker); ``cpu() - loop_thread_cpu()`` is the other threads' (awsiot_rs's
    tokio threads). From ``schedstat`` (nanoseconds on the CPU), 0.0 where ``/proc`` has no
    per-thread figures."""
    try:
        with open(f"/proc/self/task/{os.getpid()}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def switches() -> int:
    """Context switches (voluntary + involuntary) so far, all threads of this process."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_nvcsw + r.ru_nivcsw


def pin(core: int | None) -> None:
    """Pins the calling thread, and so every thread started after, to ``core``."""
    if core is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {core})
        except OSError as e:  # not fatal: the orchestrator records the affinity it got
            print(f"worker: cannot pin to core {core}: {e}", file=sys.stderr)


def wait_line_sync(timeout: float) -> bool:
    """Blocks until a line (or EOF) arrives on stdin; False on timeout."""
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if ready:
        os.read(sys.stdin.fileno(), 4096)
    return bool(ready)


async def wait_line(timeout: float) -> bool:
    """``wait_line_sync`` for asyncio: waits on stdin without blocking the loop or starting
    a thread."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    fd = sys.stdin.fileno()

    def on_readable() -> None:
        try:
            os.read(fd, 4096)
        except OSError:
            pass
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await asyncio.wait_for(fut, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)


@dataclass
class Ctx:
    """What every worker gets from the command line."""

    client: str
    scenario: str
    port: int
    topic: str
    messages: int
    payload: bytes
    timeout: float  # the measured section gives up after this many seconds
    window: int  # QoS 1: publishes awaited together (chunk size)
    inflight: int  # QoS 1: un-acked publishes a client keeps on the wire, where settable
    client_id: str
    rate: float  # helper ``pub``: messages per second, 0 = as fast as possible
    idle: float  # helper ``sub``: stop after this long without a message (once started)
    #: Mutual TLS (all three set) or plain TCP (all None). PEM file paths.
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    warmup: int = 100  # ``latency``: round trips before the measured ones
    count: int = 1000  # ``scale``, ``fleet``: connections
    duration: int = 15  # ``fleet``: seconds of publishing
    concurrency: int = 100  # ``scale``: connection attempts in progress at once

    def ssl_context(self) -> Any:
        """A client ``ssl.SSLContext`` for the mTLS listener (for gmqtt and raw)."""
        import ssl

        assert self.ca and self.cert and self.key
        sc = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        sc.load_cert_chain(self.cert, self.key)
        return sc


def resolve(fut: asyncio.Future[None]) -> None:
    """Completes ``fut`` unless it is already done."""
    if not fut.done():
        fut.set_result(None)


def make_payload(size: int) -> bytes:
    """A printable payload without newlines (``mosquitto_pub -l`` sends lines)."""
    return bytes(65 + i % 26 for i in range(size))


WORKERS: dict[tuple[str, str], Callable[[Ctx], Any]] = {}


def worker(client: str, scenario: str) -> Callable[[Callable[[Ctx], Any]], Callable[[Ctx], Any]]:
    """Registers a function as the implementation of ``scenario`` for ``client``."""

    def register(fn: Callable[[Ctx], Any]) -> Callable[[Ctx], Any]:
        WORKERS[(client, scenario)] = fn
        return fn

    return register


class Recorder:
    """Counts received messages for the ``recv_*`` scenarios and marks first/last times.

    ``on_message(payload)`` is the "user code" every client runs per message: count it and
    touch its payload."""

    def __init__(self, expected: int, on_done: Callable[[], None]) -> None:
        self.expected = expected
        self.count = 0
        self.nbytes = 0
        self.t_first = 0.0
        self.t_last = 0.0
        self.cpu_last = 0.0
        self._on_done = on_done

    def on_message(self, payload: bytes) -> None:
        if not self.count:
            self.t_first = now()
        self.count += 1
        self.nbytes += len(payload)
        if self.count >= self.expected:
            self.t_last = now()
            self.cpu_last = cpu()
            self._on_done()

    def result(self, cpu0: float) -> dict[str, Any]:
        if self.count < self.expected:  # gave up: the last message is the last one counted
            self.t_last = self.t_last or now()
            self.cpu_last = cpu()
        return {
            "received": self.count,
            "bytes": self.nbytes,
            "t_first": self.t_first,
            "t_last": self.t_last,
            "cpu_s": self.cpu_last - cpu0,
        }


def pub_qos0_result(t0: float, c0: float, t_sent: float, c_sent: float, got_stop: bool,
                    **extra: Any) -> dict[str, Any]:
    """Fields of a ``pub_qos0*`` result. ``cpu_s`` runs to the orchestrator's stop line,
    i.e. until the independent subscriber had every message."""
    return {
        "t0": t0,
        "t_sent": t_sent,
        "cpu_sent_s": c_sent - c0,
        "cpu_s": cpu() - c0,
        "stopped_by_orchestrator": got_stop,
        **extra,
    }


# -- awsiot_rs --------------------------------------------------------------------------------


async def _awsiot_connect(ctx: Ctx) -> Any:
    import awsiot_rs

    if ctx.ca and ctx.cert and ctx.key:
        security: dict[str, Any] = {"ca": ctx.ca, "auth": awsiot_rs.MtlsAuth(ctx.cert, ctx.key)}
    else:
        security = {"tls": False}
    client = awsiot_rs.Client(
        HOST,
        port=ctx.port,
        limits="mqtt",
        client_id=ctx.client_id,
        keep_alive=60,
        inflight=ctx.inflight,
        **security,
    )
    await asyncio.wait_for(client.connect(), 10)
    return client


async def _awsiot_pub_qos0(ctx: Ctx, use_await: bool, use_many: bool = False) -> dict[str, Any]:
    import awsiot_rs

    client = await _awsiot_connect(ctx)
    topic, payload, n = ctx.topic, ctx.payload, ctx.messages
    full_retries = 0
    queue_full = awsiot_rs.QueueFullError
    emit("ready")
    t0, c0 = now(), cpu()
    if use_many:
        batch = [(topic, payload)] * 1000
        for start in range(0, n, 1000):
            await client.publish_many(batch[: min(1000, n - start)], qos=0)
    elif use_await:
        publish = client.publish
        for _ in range(n):
            while True:
                try:
                    await publish(topic, payload, qos=0)
                    break
                except queue_full:
                    full_retries += 1
                    await asyncio.sleep(0)
    else:
        publish_nowait = client.publish_nowait
        for _ in range(n):
            while True:
                try:
                    publish_nowait(topic, payload, qos=0)
                    break
                except queue_full:
                    full_retries += 1
                    await asyncio.sleep(0)
    t_sent, c_sent = now(), cpu()
    emit("sent")
    got_stop = await wait_line(ctx.timeout + 10)
    result = pub_qos0_result(t0, c0, t_sent, c_sent, got_stop,
                             queue_full_retries=full_retries, stats=client.stats())
    await asyncio.wait_for(client.disconnect(), 10)
    return result


@worker("awsiot_rs", "pub_qos0")
async def awsiot_pub_qos0(ctx: Ctx) -> dict[str, Any]:
    """``publish_nowait`` in a loop; on ``QueueFullError`` yield once and retry."""
    return await _awsiot_pub_qos0(ctx, use_await=False)


@worker("awsiot_rs", "pub_qos0_await")
async def awsiot_pub_qos0_await(ctx: Ctx) -> dict[str, Any]:
    """``await publish(qos=0)`` in a loop (same retry on ``QueueFullError``)."""
    return await _awsiot_pub_qos0(ctx, use_await=True)


@worker("awsiot_rs", "pub_qos0_many")
async def awsiot_pub_qos0_many(ctx: Ctx) -> dict[str, Any]:
    """``await publish_many(batch, qos=0)`` in batches of 1000."""
    return await _awsiot_pub_qos0(ctx, use_await=False, use_many=True)


async def _awsiot_pub_qos1_windows(ctx: Ctx, send_window: Any) -> dict[str, Any]:
    """Publishes N QoS 1 in windows of ``--window``; ``send_window(client, k)`` sends k and
    returns once all k are acknowledged. Times the whole run."""
    client = await _awsiot_connect(ctx)
    n, window = ctx.messages, ctx.window
    acked = 0
    error = None
    emit("ready")
    t0, c0 = now(), cpu()

    async def run() -> None:
        nonlocal acked
        for start in range(0, n, window):
            k = min(window, n - start)
            await send_window(client, k)
            acked += k

    try:
        await asyncio.wait_for(run(), ctx.timeout)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        error = f"{type(e).__name__}: {e}"
    t1, c1 = now(), cpu()
    stats = client.stats()
    await asyncio.wait_for(client.disconnect(), 10)
    return {"completed": acked, "seconds": t1 - t0, "cpu_s": c1 - c0, "stats": stats,
            "error": error}


@worker("awsiot_rs", "pub_qos1")
async def awsiot_pub_qos1(ctx: Ctx) -> dict[str, Any]:
    """``await asyncio.gather(*[publish(qos=1)...])`` in chunks of ``--window``: every
    awaited publish completed at its PUBACK."""
    topic, payload = ctx.topic, ctx.payload

    async def send(client: Any, k: int) -> None:
        publish = client.publish
        await asyncio.gather(*[publish(topic, payload, qos=1) for _ in range(k)])

    return await _awsiot_pub_qos1_windows(ctx, send)


@worker("awsiot_rs", "pub_qos1_many")
async def awsiot_pub_qos1_many(ctx: Ctx) -> dict[str, Any]:
    """``await publish_many([...], qos=1)`` in batches of ``--window``: one crossing into
    the core per batch; each batch completes when all its PUBACKs are in."""
    batch = [(ctx.topic, ctx.payload)] * ctx.window

    async def send(client: Any, k: int) -> None:
        await client.publish_many(batch[:k], qos=1)

    return await _awsiot_pub_qos1_windows(ctx, send)


@worker("awsiot_rs", "pub_qos1_nowait")
async def awsiot_pub_qos1_nowait(ctx: Ctx) -> dict[str, Any]:
    """``publish_nowait(qos=1)`` in a loop, then polls ``stats()`` every millisecond until
    nothing is queued or in flight (every PUBACK is in)."""
    import awsiot_rs

    client = await _awsiot_connect(ctx)
    topic, payload, n = ctx.topic, ctx.payload, ctx.messages
    publish_nowait = client.publish_nowait
    queue_full = awsiot_rs.QueueFullError
    full_retries = 0
    error = None
    emit("ready")
    t0, c0 = now(), cpu()

    async def run() -> None:
        nonlocal full_retries
        for _ in range(n):
            while True:
                try:
                    publish_nowait(topic, payload, qos=1)
                    break
                except queue_full:
                    full_retries += 1
                    await asyncio.sleep(0)
        while True:
            s = client.stats()
            if s["inflight"] == 0 and s["queued"] == 0:
                return
            await asyncio.sleep(0.001)

    try:
        await asyncio.wait_for(run(), ctx.timeout)
    except Exception as e:  # noqa: BLE001
        error = f"{type(e).__name__}: {e}"
    t1, c1 = now(), cpu()
    stats = client.stats()
    await asyncio.wait_for(client.disconnect(), 10)
    completed = n if error is None and stats.get("dropped", 0) == 0 else None
    return {"completed": completed, "seconds": t1 - t0, "cpu_s": c1 - c0, "stats": stats,
            "queue_full_retries": full_retries, "error": error}


async def _awsiot_recv(ctx: Ctx, use_callback: bool) -> dict[str, Any]:
    client = await _awsiot_connect(ctx)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    rec = Recorder(ctx.messages, lambda: resolve(done))
    on_message = rec.on_message
    queue_size = max(ctx.messages, 10000)
    if use_callback:
        await client.subscribe(ctx.topic, qos=0, queue_size=queue_size,
                               callback=lambda m: on_message(m.payload))
    else:
        sub = await client.subscribe(ctx.topic, qos=0, queue_size=queue_size)

        async def iterate() -> None:
            async for m in sub:
                on_message(m.payload)
                if done.done():
                    return

        task = asyncio.ensure_future(iterate())
    emit("ready")
    c0 = cpu()
    try:
        await asyncio.wait_for(asyncio.shield(done), ctx.timeout)
    except TimeoutError:
        pass
    result = rec.result(c0)
    if not use_callback:
        task.cancel()
    result["stats"] = client.stats()
    await asyncio.wait_for(client.disconnect(), 10)
    return result


@worker("awsiot_rs", "recv_qos0_iter")
async def awsiot_recv_iter(ctx: Ctx) -> dict[str, Any]:
    """``async for msg in subscription``."""
    return await _awsiot_recv(ctx, use_callback=False)


@worker("awsiot_rs", "recv_qos0_cb")
async def awsiot_recv_cb(ctx: Ctx) -> dict[str, Any]:
    """``subscribe(..., callback=fn)``."""
    return await _awsiot_recv(ctx, use_callback=True)


# -- paho-mqtt 2.x (threaded loop) ----------------------------------------------------------


def _paho_connect(ctx: Ctx) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion  # = mqtt.CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=ctx.client_id,
                         protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(ctx.inflight)  # same window as awsiot_rs
    client.max_queued_messages_set(0)  # unlimited
    connected = threading.Event()
    client.on_connect = lambda c, userdata, flags, rc, props: connected.set()
    if ctx.ca:
        client.tls_set(ca_certs=ctx.ca, certfile=ctx.cert, keyfile=ctx.key)
    client.connect(HOST, ctx.port, keepalive=60)
    client.loop_start()
    if not connected.wait(10):
        raise TimeoutError("paho: no CONNACK within 10 s")
    return client


def _paho_close(client: Any) -> None:
    client.disconnect()
    client.loop_stop()


@worker("paho", "pub_qos0")
def paho_pub_qos0(ctx: Ctx) -> dict[str, Any]:
    """``client.publish(qos=0)`` in a loop from the main thread; ``loop_start()`` thread
    writes."""
    client = _paho_connect(ctx)
    publish, topic, payload = client.publish, ctx.topic, ctx.payload
    emit("ready")
    t0, c0 = now(), cpu()
    for _ in range(ctx.messages):
        publish(topic, payload, 0)
    t_sent, c_sent = now(), cpu()
    emit("sent")
    got_stop = wait_line_sync(ctx.timeout + 10)
    result = pub_qos0_result(t0, c0, t_sent, c_sent, got_stop)
    _paho_close(client)
    return result


@worker("paho", "pub_qos1")
def paho_pub_qos1(ctx: Ctx) -> dict[str, Any]:
    """``client.publish(qos=1)`` in chunks of ``--window``; ``on_publish`` counts PUBACKs and
    the main thread waits for each chunk's acks."""
    client = _paho_connect(ctx)
    publish, topic, payload, n = client.publish, ctx.topic, ctx.payload, ctx.messages
    acked = [0]
    target = [0]
    chunk_done = threading.Event()

    def on_publish(c: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        acked[0] += 1  # only the loop thread writes it
        if acked[0] >= target[0]:
            chunk_done.set()

    client.on_publish = on_publish
    error = None
    emit("ready")
    t0, c0 = now(), cpu()
    deadline = t0 + ctx.timeout
    for start in range(0, n, ctx.window):
        end = min(n, start + ctx.window)
        chunk_done.clear()
        target[0] = end
        for _ in range(end - start):
            publish(topic, payload, 1)
        if not chunk_done.wait(max(0.0, deadline - now())):
            error = f"timeout: {acked[0]} of {end} PUBACKs after {ctx.timeout} s"
            break
    t1, c1 = now(), cpu()
    _paho_close(client)
    return {"completed": acked[0], "seconds": t1 - t0, "cpu_s": c1 - c0, "error": error}


@worker("paho", "recv_qos0_cb")
def paho_recv(ctx: Ctx) -> dict[str, Any]:
    """``on_message`` callback (paho's only delivery API)."""
    client = _paho_connect(ctx)
    done = threading.Event()
    rec = Recorder(ctx.messages, done.set)
    on_message = rec.on_message
    client.on_message = lambda c, userdata, msg: on_message(msg.payload)
    subscribed = threading.Event()
    client.on_subscribe = lambda c, userdata, mid, rcs, props: subscribed.set()
    client.subscribe(ctx.topic, 0)
    if not subscribed.wait(10):
        raise TimeoutError("paho: no SUBACK within 10 s")
    emit("ready")
    c0 = cpu()
    done.wait(ctx.timeout)
    result = rec.result(c0)
    _paho_close(client)
    return result


# -- gmqtt (asyncio) ------------------------------------------------------------------------


async def _gmqtt_connect(ctx: Ctx, on_message: Callable[..., Any] | None = None) -> Any:
    import gmqtt
    from gmqtt.mqtt.constants import MQTTv311
    from gmqtt.storage import PersistentStorage

    storage = PersistentStorage()  # kept to wait for QoS 1 acks (wait_empty)
    client = gmqtt.Client(ctx.client_id, persistent_storage=storage)
    client.bench_storage = storage
    if on_message is not None:
        client.on_message = on_message
    ssl = ctx.ssl_context() if ctx.ca else False
    await asyncio.wait_for(
        client.connect(HOST, ctx.port, keepalive=60, version=MQTTv311, ssl=ssl), 10)
    return client


async def _gmqtt_connect_subscribed(ctx: Ctx, client: Any, topic: str, qos: int) -> None:
    """Connects ``client`` (plain TCP, MQTT 3.1.1, keep-alive 60) and subscribes it to
    ``topic``, returning at the SUBACK (the ``scale`` and ``fleet`` connections)."""
    from gmqtt.mqtt.constants import MQTTv311

    await client.connect(HOST, ctx.port, keepalive=60, version=MQTTv311)
    subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    client.on_subscribe = lambda c, mid, granted, props: resolve(subscribed)
    client.subscribe(topic, qos=qos)
    await subscribed


@worker("gmqtt", "pub_qos0")
async def gmqtt_pub_qos0(ctx: Ctx) -> dict[str, Any]:
    """``client.publish(qos=0)`` (synchronous, writes to the transport) in a loop."""
    client = await _gmqtt_connect(ctx)
    publish, topic, payload = client.publish, ctx.topic, ctx.payload
    emit("ready")
    t0, c0 = now(), cpu()
    for _ in range(ctx.messages):
        publish(topic, payload, qos=0)
    t_sent, c_sent = now(), cpu()
    emit("sent")
    got_stop = await wait_line(ctx.timeout + 10)
    result = pub_qos0_result(t0, c0, t_sent, c_sent, got_stop)
    await asyncio.wait_for(client.disconnect(), 10)
    return result


@worker("gmqtt", "pub_qos1")
async def gmqtt_pub_qos1(ctx: Ctx) -> dict[str, Any]:
    """``client.publish(qos=1)`` in chunks of ``--window``, then waits until gmqtt's
    persistent storage of un-acked messages is empty."""
    client = await _gmqtt_connect(ctx)
    publish, topic, payload, n = client.publish, ctx.topic, ctx.payload, ctx.messages
    storage = client.bench_storage
    acked = 0
    error = None
    emit("ready")
    t0, c0 = now(), cpu()

    async def run() -> None:
        nonlocal acked
        for start in range(0, n, ctx.window):
            k = min(ctx.window, n - start)
            for _ in range(k):
                publish(topic, payload, qos=1)
            await storage.wait_empty()
            acked += k

    try:
        await asyncio.wait_for(run(), ctx.timeout)
    except Exception as e:  # noqa: BLE001
        error = f"{type(e).__name__}: {e}"
    t1, c1 = now(), cpu()
    await asyncio.wait_for(client.disconnect(), 10)
    return {"completed": acked, "seconds": t1 - t0, "cpu_s": c1 - c0, "error": error}


@worker("gmqtt", "recv_qos0_cb")
async def gmqtt_recv(ctx: Ctx) -> dict[str, Any]:
    """``client.on_message`` callback (gmqtt's only delivery API)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    rec = Recorder(ctx.messages, lambda: resolve(done))
    on_message = rec.on_message

    def handler(client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        on_message(payload)
        return 0

    client = await _gmqtt_connect(ctx, handler)
    subscribed: asyncio.Future[None] = loop.create_future()
    client.on_subscribe = lambda c, mid, qos, props: resolve(subscribed)
    client.subscribe(ctx.topic, qos=0)
    await asyncio.wait_for(subscribed, 10)
    emit("ready")
    c0 = cpu()
    try:
        await asyncio.wait_for(asyncio.shield(done), ctx.timeout)
    except TimeoutError:
        pass
    result = rec.result(c0)
    await asyncio.wait_for(client.disconnect(), 10)
    return result


# -- raw asyncio (the pure-Python ceiling) --------------------------------------------------


_RAW_FLUSH = 16 * 1024  # bytes gathered before one transport.write()


def _raw_ssl(ctx: Ctx) -> Any:
    return ctx.ssl_context() if ctx.ca else None


@worker("raw", "pub_qos0")
async def raw_pub_qos0(ctx: Ctx) -> dict[str, Any]:
    """A pre-encoded PUBLISH appended per message to a buffer, written every 16 KiB."""
    import mqttraw

    proto = await mqttraw.connect(ctx.port, ctx.client_id, ssl=_raw_ssl(ctx))
    transport = proto.transport
    assert transport is not None
    packet = mqttraw.packets.publish(ctx.topic, ctx.payload)
    emit("ready")
    t0, c0 = now(), cpu()
    buf = bytearray()
    for _ in range(ctx.messages):
        buf += packet
        if len(buf) >= _RAW_FLUSH:
            transport.write(bytes(buf))
            buf.clear()
            if proto._paused:
                await proto.wait_writable()
    if buf:
        transport.write(bytes(buf))
    t_sent, c_sent = now(), cpu()
    emit("sent")
    got_stop = await wait_line(ctx.timeout + 10)
    result = pub_qos0_result(t0, c0, t_sent, c_sent, got_stop)
    await proto.disconnect()
    return result


@worker("raw", "pub_qos1")
async def raw_pub_qos1(ctx: Ctx) -> dict[str, Any]:
    """Chunks of ``--window`` PUBLISHes (pre-encoded but for the packet id), then waits for
    as many PUBACKs (counted by fixed header, ids not checked)."""
    import mqttraw

    proto = await mqttraw.connect(ctx.port, ctx.client_id, ssl=_raw_ssl(ctx))
    transport = proto.transport
    assert transport is not None
    head, payload = mqttraw.publish_qos1_parts(ctx.topic, ctx.payload)
    ids = mqttraw.PACKET_IDS
    n = ctx.messages
    error = None
    emit("ready")
    t0, c0 = now(), cpu()

    async def run() -> None:
        pid = 0
        for start in range(0, n, ctx.window):
            end = min(n, start + ctx.window)
            buf = bytearray()
            for _ in range(end - start):
                pid = pid % 65535 + 1
                buf += head
                buf += ids[pid]
                buf += payload
            transport.write(bytes(buf))
            await proto.wait_pubacks(end)

    try:
        await asyncio.wait_for(run(), ctx.timeout)
    except Exception as e:  # noqa: BLE001
        error = f"{type(e).__name__}: {e}"
    t1, c1 = now(), cpu()
    await proto.disconnect()
    return {"completed": proto.pubacks, "seconds": t1 - t0, "cpu_s": c1 - c0, "error": error}


@worker("raw", "recv_qos0_cb")
async def raw_recv(ctx: Ctx) -> dict[str, Any]:
    """``data_received`` parses fixed headers; each PUBLISH's topic and payload are sliced
    out as bytes and handed to the same per-message code as the other clients."""
    import mqttraw

    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    rec = Recorder(ctx.messages, lambda: resolve(done))
    on_message = rec.on_message

    def on_publish(buf: bytearray, header: int, start: int, end: int) -> None:
        tlen = (buf[start] << 8) | buf[start + 1]
        pstart = start + 2 + tlen + (2 if header & 0x06 else 0)
        _topic = bytes(buf[start + 2 : start + 2 + tlen])
        on_message(bytes(buf[pstart:end]))

    proto = await mqttraw.connect(ctx.port, ctx.client_id, ssl=_raw_ssl(ctx),
                                  on_publish=on_publish)
    await mqttraw.subscribe(proto, ctx.topic, 0)
    emit("ready")
    c0 = cpu()
    try:
        await asyncio.wait_for(asyncio.shield(done), ctx.timeout)
    except TimeoutError:
        pass
    result = rec.result(c0)
    await proto.disconnect()
    return result


# -- latency: one QoS 0 message at a time to a topic the client itself subscribes to ----------


def latency_result(samples_ns: list[int], seconds: float, cpu_s: float,
                   ctx_switches: int) -> dict[str, Any]:
    """Percentiles (nearest rank) of round-trip times in µs, plus the section's totals."""
    xs = sorted(samples_ns)
    n = len(xs)

    def pct(q: float) -> float:
        return xs[min(n - 1, max(0, int(q * n + 0.5) - 1))] / 1000 if n else 0.0

    return {
        "round_trips": n,
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "max_us": xs[-1] / 1000 if n else 0.0,
        "mean_us": sum(xs) / n / 1000 if n else 0.0,
        "seconds": seconds,
        "cpu_s": cpu_s,
        "switches_per_rt": ctx_switches / n if n else None,
    }


async def run_latency(ctx: Ctx, round_trip: Callable[[], Any]) -> dict[str, Any]:
    """``--warmup`` unmeasured round trips, then ``--messages`` timed ones
    (``time.perf_counter_ns`` around each ``await round_trip()``)."""
    clock = time.perf_counter_ns
    samples: list[int] = []
    t0, c0, s0 = now(), cpu(), switches()

    async def run() -> None:
        nonlocal t0, c0, s0
        for _ in range(ctx.warmup):
            await round_trip()
        append = samples.append
        t0, c0, s0 = now(), cpu(), switches()
        for _ in range(ctx.messages):
            t = clock()
            await round_trip()
            append(clock() - t)

    error = None
    try:
        await asyncio.wait_for(run(), ctx.timeout)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        error = f"{type(e).__name__}: {e}"
    result = latency_result(samples, now() - t0, cpu() - c0, switches() - s0)
    result["error"] = error
    return result


def run_latency_sync(ctx: Ctx, round_trip: Callable[[], bool]) -> dict[str, Any]:
    """``run_latency`` for a blocking client; ``round_trip()`` returns False on timeout."""
    clock = time.perf_counter_ns
    samples: list[int] = []
    error = None
    t0, c0, s0 = now(), cpu(), switches()
    for i in range(ctx.warmup + ctx.messages):
        if i == ctx.warmup:
            t0, c0, s0 = now(), cpu(), switches()
        t = clock()
        if not round_trip():
            error = f"timeout: round trip {i} did not come back within 5 s"
            break
        if i >= ctx.warmup:
            samples.append(clock() - t)
    result = latency_result(samples, now() - t0, cpu() - c0, switches() - s0)
    result["error"] = error
    return result


@worker("awsiot_rs", "latency")
async def awsiot_latency(ctx: Ctx) -> dict[str, Any]:
    """``await publish(qos=0)``, then awaits a future that the subscription's callback
    resolves."""
    client = await _awsiot_connect(ctx)
    loop = asyncio.get_running_loop()
    waiter: list[asyncio.Future[None] | None] = [None]

    def on_message(msg: Any) -> None:
        fut = waiter[0]
        if fut is not None and not fut.done():
            fut.set_result(None)

    await client.subscribe(ctx.topic, qos=0, callback=on_message)
    publish, topic, payload = client.publish, ctx.topic, ctx.payload
    emit("ready")

    async def round_trip() -> None:
        fut = waiter[0] = loop.create_future()
        await publish(topic, payload, qos=0)
        await fut

    result = await run_latency(ctx, round_trip)
    result["stats"] = client.stats()
    await asyncio.wait_for(client.disconnect(), 10)
    return result


@worker("awsiot_rs", "latency_iter")
async def awsiot_latency_iter(ctx: Ctx) -> dict[str, Any]:
    """``await publish(qos=0)``, then the next message of ``async for`` (``__anext__``)."""
    client = await _awsiot_connect(ctx)
    sub = await client.subscribe(ctx.topic, qos=0)
    publish, topic, payload = client.publish, ctx.topic, ctx.payload
    next_message = sub.__anext__
    emit("ready")

    async def round_trip() -> None:
        await publish(topic, payload, qos=0)
        await next_message()

    result = await run_latency(ctx, round_trip)
    result["stats"] = client.stats()
    await asyncio.wait_for(client.disconnect(), 10)
    return result


@worker("paho", "latency")
def paho_latency(ctx: Ctx) -> dict[str, Any]:
    """``publish(qos=0)`` from the main thread, which then waits on a ``threading.Event``
    that ``on_message`` (loop thread) sets."""
    client = _paho_connect(ctx)
    arrived = threading.Event()
    client.on_message = lambda c, userdata, msg: arrived.set()
    subscribed = threading.Event()
    client.on_subscribe = lambda c, userdata, mid, rcs, props: subscribed.set()
    client.subscribe(ctx.topic, 0)
    if not subscribed.wait(10):
        raise TimeoutError("paho: no SUBACK within 10 s")
    publish, topic, payload = client.publish, ctx.topic, ctx.payload
    emit("ready")

    def round_trip() -> bool:
        arrived.clear()
        publish(topic, payload, 0)
        return arrived.wait(5)

    result = run_latency_sync(ctx, round_trip)
    _paho_close(client)
    return result


@worker("gmqtt", "latency")
async def gmqtt_latency(ctx: Ctx) -> dict[str, Any]:
    """``publish(qos=0)``, then awaits a future that ``on_message`` resolves."""
    loop = asyncio.get_running_loop()
    waiter: list[asyncio.Future[None] | None] = [None]

    def handler(client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        fut = waiter[0]
        if fut is not None and not fut.done():
            fut.set_result(None)
        return 0

    client = await _gmqtt_connect(ctx, handler)
    subscribed: asyncio.Future[None] = loop.create_future()
    client.on_subscribe = lambda c, mid, qos, props: resolve(subscribed)
    client.subscribe(ctx.topic, qos=0)
    await asyncio.wait_for(subscribed, 10)
    publish, topic, payload = client.publish, ctx.topic, ctx.payload
    emit("ready")

    async def round_trip() -> None:
        fut = waiter[0] = loop.create_future()
        publish(topic, payload, qos=0)
        await fut

    result = await run_latency(ctx, round_trip)
    await asyncio.wait_for(client.disconnect(), 10)
    return result


@worker("raw", "latency")
async def raw_latency(ctx: Ctx) -> dict[str, Any]:
    """A pre-encoded PUBLISH per ``transport.write()``; ``data_received`` resolves the
    future."""
    import mqttraw

    loop = asyncio.get_running_loop()
    waiter: list[asyncio.Future[None] | None] = [None]

    def on_publish(buf: bytearray, header: int, start: int, end: int) -> None:
        fut = waiter[0]
        if fut is not None and not fut.done():
            fut.set_result(None)

    proto = await mqttraw.connect(ctx.port, ctx.client_id, ssl=_raw_ssl(ctx),
                                  on_publish=on_publish)
    await mqttraw.subscribe(proto, ctx.topic, 0)
    transport = proto.transport
    assert transport is not None
    packet = mqttraw.packets.publish(ctx.topic, ctx.payload)
    emit("ready")

    async def round_trip() -> None:
        fut = waiter[0] = loop.create_future()
        transport.write(packet)
        await fut

    result = await run_latency(ctx, round_trip)
    await proto.disconnect()
    return result


# -- scale: many connections in one process ---------------------------------------------------


def rss_kib() -> int:
    """This process's resident set size (``VmRSS`` of ``/proc/self/status``) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def raise_nofile() -> tuple[int, int]:
    """Raises the soft ``RLIMIT_NOFILE`` to the hard limit; returns the limits now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            print(f"worker: cannot raise RLIMIT_NOFILE: {e}", file=sys.stderr)
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class Deliveries:
    """Counts, per connection, the one message the ``scale`` helper publishes to it."""

    def __init__(self, count: int) -> None:
        self.got = bytearray(count)
        self.delivered = 0
        self.duplicates = 0
        self.t_last = 0.0
        self.all_in: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_message(self, index: int) -> None:
        if self.got[index]:
            self.duplicates += 1
            return
        self.got[index] = 1
        self.delivered += 1
        self.t_last = now()
        if self.delivered == len(self.got):
            resolve(self.all_in)


async def run_scale(
    ctx: Ctx,
    open_one: Callable[[int, Deliveries], Any],
    close_all: Callable[[], Any],
    arrived: Callable[[], int] | None = None,
) -> dict[str, Any]:
    """Opens one warm-up connection (index ``--count``, to a topic nothing is published to),
    so that what a library allocates once per process (runtime threads, dispatchers, first
    imports) is not charged to the connections; then ``--count`` connections
    (``await open_one(i, deliveries)``: connect and subscribe to ``<topic>/<i>``), at most
    ``--concurrency`` at a time; reports time, CPU and RSS growth; emits ``ready``; then counts the message the helper publishes to each topic
    until all are in, or ``--idle`` s after the orchestrator's "published" line without
    progress, or ``--timeout``. ``arrived()`` (optional) counts messages that reached the
    client library but not (yet) the application."""
    limits = raise_nofile()
    k = ctx.count
    deliveries = Deliveries(k)
    sem = asyncio.Semaphore(max(1, ctx.concurrency))
    opened = 0

    async def one(i: int) -> None:
        nonlocal opened
        async with sem:
            await open_one(i, deliveries)
            opened += 1

    error = None
    try:
        await asyncio.wait_for(open_one(k, deliveries), ctx.timeout)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        error = f"warm-up connection: {type(e).__name__}: {e}"
    await asyncio.sleep(0.2)
    rss0 = rss_kib()
    t0, c0 = now(), cpu()
    tasks = [asyncio.ensure_future(one(i)) for i in range(k)] if error is None else []
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), ctx.timeout)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        error = f"after {opened} of {k} connections: {type(e).__name__}: {e}"
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    t1, c1 = now(), cpu()
    rss1 = rss_kib()
    result: dict[str, Any] = {
        "count": k,
        "opened": opened,
        "connect_s": t1 - t0,
        "connect_cpu_s": c1 - c0,
        "rss0_kib": rss0,
        "rss1_kib": rss1,
        "kib_per_conn": (rss1 - rss0) / max(opened, 1),
        "threads": len(os.listdir("/proc/self/task")),
        "fds": len(os.listdir("/proc/self/fd")),
        "nofile": list(limits),
        "error": error,
    }
    emit("ready", opened=opened)
    # Delivery check: the helper publishes one message to each of the K topics.
    loop_t0 = now()
    published_at = 0.0
    stdin_line = asyncio.ensure_future(wait_line(ctx.timeout))
    while not deliveries.all_in.done() and error is None:
        if stdin_line.done() and not published_at:
            published_at = now()
        if published_at and now() - max(published_at, deliveries.t_last) > ctx.idle:
            break
        if now() - loop_t0 > ctx.timeout:
            break
        try:
            await asyncio.wait_for(asyncio.shield(deliveries.all_in), 0.05)
        except TimeoutError:
            pass
    stdin_line.cancel()
    result.update(
        delivered=deliveries.delivered,
        duplicates=deliveries.duplicates,
        deliver_s=(deliveries.t_last - loop_t0) if deliveries.delivered else None,
        arrived=arrived() if arrived is not None else None,
        rss2_kib=rss_kib(),
    )
    t2 = now()
    try:
        await asyncio.wait_for(close_all(), 60)
        result["close_s"] = now() - t2
    except Exception as e:  # noqa: BLE001
        result["close_error"] = f"{type(e).__name__}: {e}"
    return result


@worker("awsiot_rs", "scale")
async def awsiot_scale(ctx: Ctx) -> dict[str, Any]:
    """``Client(...)``, ``await connect()``, ``await subscribe(topic_i, qos=0,
    callback=...)`` per connection; ``disconnect()`` all at the end."""
    import awsiot_rs

    clients: list[Any] = []
    subs: list[Any] = []

    async def open_one(i: int, deliveries: Deliveries) -> None:
        client = awsiot_rs.Client(HOST, port=ctx.port, tls=False, limits="mqtt",
                                  client_id=f"{ctx.client_id}-{i}", keep_alive=60,
                                  inflight=ctx.inflight)
        clients.append(client)
        await client.connect()
        on_message = deliveries.on_message
        subs.append(await client.subscribe(f"{ctx.topic}/{i}", qos=0,
                                           callback=lambda m: on_message(i)))

    async def close_all() -> None:
        await asyncio.gather(*(c.disconnect() for c in clients))

    def received() -> int:
        # What the library received (its counters), whether or not a callback ran.
        return sum(c.stats().get("messages_received", 0) for c in clients)

    return await run_scale(ctx, open_one, close_all, received)


@worker("raw", "scale")
async def raw_scale(ctx: Ctx) -> dict[str, Any]:
    """``mqttraw.connect()`` (CONNECT/CONNACK) + ``mqttraw.subscribe()`` (SUBSCRIBE/SUBACK) on
    one asyncio socket per connection; ``data_received`` counts the PUBLISH."""
    import mqttraw

    protos: list[Any] = []

    async def open_one(i: int, deliveries: Deliveries) -> None:
        on_message = deliveries.on_message

        def on_publish(buf: bytearray, header: int, start: int, end: int) -> None:
            on_message(i)

        # Default asyncio write-buffer limits: a scale client writes a few bytes.
        proto = await mqttraw.connect(ctx.port, f"{ctx.client_id}-{i}", on_publish=on_publish,
                                      write_buffer_high=64 * 1024)
        protos.append(proto)
        await mqttraw.subscribe(proto, f"{ctx.topic}/{i}", 0)

    async def close_all() -> None:
        await asyncio.gather(*(p.disconnect() for p in protos))

    return await run_scale(ctx, open_one, close_all)


@worker("gmqtt", "scale")
async def gmqtt_scale(ctx: Ctx) -> dict[str, Any]:
    """``gmqtt.Client``, ``await connect()``, ``subscribe()`` + wait for ``on_subscribe``
    per connection; ``on_message`` counts."""
    import gmqtt

    clients: list[Any] = []

    async def open_one(i: int, deliveries: Deliveries) -> None:
        on_message = deliveries.on_message

        def handler(client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
            on_message(i)
            return 0

        client = gmqtt.Client(f"{ctx.client_id}-{i}")
        client.on_message = handler
        clients.append(client)
        await _gmqtt_connect_subscribed(ctx, client, f"{ctx.topic}/{i}", 0)

    async def close_all() -> None:
        await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)

    return await run_scale(ctx, open_one, close_all)


# -- fleet: many connections publishing QoS 1 once per second ---------------------------------


class FleetAcks:
    """PUBACK latencies of the ``fleet`` scenario (seconds from the publish call to its
    acknowledgement reaching the application)."""

    def __init__(self) -> None:
        import array

        self.sent = 0
        self.acked = 0
        self.failed = 0
        self.samples = array.array("d")

    def ack(self, t_sent: float) -> None:
        self.acked += 1
        self.samples.append(now() - t_sent)


async def run_fleet(
    ctx: Ctx,
    open_one: Callable[[int], Any],
    fire: Callable[[int, FleetAcks], None],
    close_all: Callable[[], Any],
) -> dict[str, Any]:
    """Opens ``--count`` connections (``await open_one(i)``: connect, subscribe to
    ``<topic>/cmd/<i>``), at most ``--concurrency`` at a time; then, for ``--duration`` s,
    connection i publishes one QoS 1 message (``fire(i, acks)``: starts it without waiting)
    at i/K of every second (staggered); then waits up to 10 s for the last PUBACKs. CPU
    covers the publishing phase and that wait."""
    raise_nofile()
    k = ctx.count
    sem = asyncio.Semaphore(max(1, ctx.concurrency))

    async def one(i: int) -> None:
        async with sem:
            await open_one(i)

    rss0 = rss_kib()
    t0 = now()
    error = None
    try:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(k))), ctx.timeout)
    except Exception as e:  # noqa: BLE001
        error = f"connect: {type(e).__name__}: {e}"
    connect_s = now() - t0
    rss1 = rss_kib()
    emit("ready")
    acks = FleetAcks()
    late_max = 0.0
    if error is None:
        await asyncio.sleep(0.5)
        start, c0, l0, s0 = now(), cpu(), loop_thread_cpu(), switches()
        duration = ctx.duration
        total = k * duration
        step = 1.0 / k
        n = 0
        while n < total:
            t = now()
            due = start + (n // k) + (n % k) * step
            if due > t:
                await asyncio.sleep(due - t)
                continue
            # Everything due now (a scheduler tick serves several connections).
            while n < total:
                due = start + (n // k) + (n % k) * step
                if due > t:
                    break
                late_max = max(late_max, t - due)
                fire(n % k, acks)
                acks.sent += 1
                n += 1
        t_sent = now()
        while acks.acked + acks.failed < acks.sent and now() - t_sent < 10:
            await asyncio.sleep(0.01)
        t1, c1, l1, s1 = now(), cpu(), loop_thread_cpu(), switches()
    else:
        start = t1 = c0 = c1 = l0 = l1 = 0.0
        s0 = s1 = 0
    samples = sorted(acks.samples)

    def pct(q: float) -> float | None:
        if not samples:
            return None
        return samples[min(len(samples) - 1, int(q * len(samples)))] * 1e3

    result: dict[str, Any] = {
        "count": k, "duration": ctx.duration, "sent": acks.sent, "acked": acks.acked,
        "failed": acks.failed, "seconds": t1 - start, "cpu_s": c1 - c0,
        # Where the CPU goes: the loop thread and the others, and the context switches.
        "loop_cpu_s": l1 - l0, "switches_per_msg": (s1 - s0) / acks.sent if acks.sent else None,
        "connect_s": connect_s, "rss0_kib": rss0, "rss1_kib": rss1, "rss2_kib": rss_kib(),
        "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1.0),
        "schedule_late_max_ms": late_max * 1e3, "error": error,
    }
    try:
        await asyncio.wait_for(close_all(), 60)
    except Exception as e:  # noqa: BLE001
        result["close_error"] = f"{type(e).__name__}: {e}"
    return result


@worker("awsiot_rs", "fleet")
async def awsiot_fleet(ctx: Ctx) -> dict[str, Any]:
    """``Client`` per device; ``subscribe(cmd_i, qos=1, callback=...)``; each second
    ``client.publish(tele_i, qos=1)`` (the returned future, completed at PUBACK, gets a done
    callback: no task per publish)."""
    import awsiot_rs

    clients: list[Any] = []
    payload = ctx.payload
    topics = [f"{ctx.topic}/tele/{i}" for i in range(ctx.count)]

    def on_command(m: Any) -> None:
        pass

    async def open_one(i: int) -> None:
        c = awsiot_rs.Client(HOST, port=ctx.port, tls=False, limits="mqtt",
                             client_id=f"{ctx.client_id}-{i}", keep_alive=60)
        clients.append(c)
        await c.connect()
        await c.subscribe(f"{ctx.topic}/cmd/{i}", qos=1, callback=on_command)

    def fire(i: int, acks: FleetAcks) -> None:
        t = now()

        def done(f: Any) -> None:
            if f.cancelled() or f.exception() is not None:
                acks.failed += 1
            else:
                acks.ack(t)

        fut = asyncio.ensure_future(clients[i].publish(topics[i], payload, qos=1))
        fut.add_done_callback(done)

    async def close_all() -> None:
        await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)

    return await run_fleet(ctx, open_one, fire, close_all)


@worker("gmqtt", "fleet")
async def gmqtt_fleet(ctx: Ctx) -> dict[str, Any]:
    """``gmqtt.Client`` per device; ``subscribe(cmd_i, qos=1)``; each second
    ``publish(tele_i, qos=1)``; the PUBACK is seen where gmqtt drops the message from its
    in-flight storage (``remove_message_by_mid``)."""
    import gmqtt
    from gmqtt.storage import PersistentStorage

    clients: list[Any] = []
    payload = ctx.payload
    topics = [f"{ctx.topic}/tele/{i}" for i in range(ctx.count)]
    acks_ref: list[FleetAcks] = []

    class Timed(PersistentStorage):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.sent_at: dict[int, float] = {}

        def push_message(self, mid: Any, raw_package: Any) -> None:
            self.sent_at[mid] = now()
            super().push_message(mid, raw_package)

        def remove_message_by_mid(self, mid: Any) -> None:
            t = self.sent_at.pop(mid, None)
            super().remove_message_by_mid(mid)
            if t is not None and acks_ref:
                acks_ref[0].ack(t)

    def handler(client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        return 0

    async def open_one(i: int) -> None:
        c = gmqtt.Client(f"{ctx.client_id}-{i}", persistent_storage=Timed())
        c.on_message = handler
        clients.append(c)
        await _gmqtt_connect_subscribed(ctx, c, f"{ctx.topic}/cmd/{i}", 1)

    def fire(i: int, acks: FleetAcks) -> None:
        if not acks_ref:
            acks_ref.append(acks)
        clients[i].publish(topics[i], payload, qos=1)

    async def close_all() -> None:
        await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)

    return await run_fleet(ctx, open_one, fire, close_all)


@worker("raw", "fleet")
async def raw_fleet(ctx: Ctx) -> dict[str, Any]:
    """``mqttraw`` per device (CONNECT with keep-alive 60 and a PINGREQ timer, SUBSCRIBE
    QoS 1); each second one pre-encoded QoS 1 PUBLISH; PUBACKs matched in order."""
    import collections

    import mqttraw
    from support import packets

    protos: list[Any] = []
    acks_ref: list[FleetAcks] = []
    loop = asyncio.get_running_loop()
    payload = ctx.payload
    pingreq = packets.pingreq()

    class Fleet(mqttraw.RawProtocol):
        def __init__(self, on_publish: Any = None) -> None:
            super().__init__(on_publish)
            self.pending: collections.deque[float] = collections.deque()
            self.pkid = 0

        def data_received(self, data: bytes) -> None:
            before = self.pubacks
            super().data_received(data)
            for _ in range(self.pubacks - before):
                if self.pending and acks_ref:
                    acks_ref[0].ack(self.pending.popleft())

    heads: list[bytes] = []

    def keep_alive() -> None:
        for p in protos:
            if p.transport is not None and not p.transport.is_closing():
                p.transport.write(pingreq)
        loop.call_later(60, keep_alive)

    async def open_one(i: int) -> None:
        proto = await mqttraw.connect(ctx.port, f"{ctx.client_id}-{i}", factory=Fleet,
                                      write_buffer_high=64 * 1024, keep_alive=60)
        protos.append(proto)
        head, _ = mqttraw.publish_qos1_parts(f"{ctx.topic}/tele/{i}", payload)
        heads.append(head)
        await mqttraw.subscribe(proto, f"{ctx.topic}/cmd/{i}", 1)

    ids = mqttraw.PACKET_IDS

    def fire(i: int, acks: FleetAcks) -> None:
        if not acks_ref:
            acks_ref.append(acks)
            loop.call_later(60, keep_alive)
        p = protos[i]
        p.pkid = p.pkid % 65535 + 1
        p.pending.append(now())
        p.transport.write(heads[i] + ids[p.pkid] + payload)

    async def close_all() -> None:
        await asyncio.gather(*(p.disconnect() for p in protos))

    return await run_fleet(ctx, open_one, fire, close_all)


# -- helpers (not measured clients) ---------------------------------------------------------


@worker("helper", "sub")
async def helper_sub(ctx: Ctx) -> dict[str, Any]:
    """The independent subscriber of ``pub_qos0*``: counts QoS 0 PUBLISH packets until it
    has ``--messages``, or ``--timeout`` passed, or ``--idle`` seconds went by without one
    after the first."""
    import mqttraw

    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    state = {"count": 0, "bytes": 0, "t_first": 0.0, "t_last": 0.0}
    n = ctx.messages

    def on_publish(buf: bytearray, header: int, start: int, end: int) -> None:
        t = now()
        if not state["count"]:
            state["t_first"] = t
        state["count"] += 1
        state["bytes"] += end - start
        state["t_last"] = t
        if state["count"] >= n and not done.done():
            done.set_result(None)

    proto = await mqttraw.connect(ctx.port, ctx.client_id, on_publish=on_publish)
    await mqttraw.subscribe(proto, ctx.topic, 0)
    emit("ready")
    deadline = now() + ctx.timeout
    reason = "complete"
    while not done.done():
        if now() >= deadline:
            reason = "timeout"
            break
        if state["count"] and now() - state["t_last"] > ctx.idle:
            reason = "idle"
            break
        try:
            await asyncio.wait_for(asyncio.shield(done), 0.25)
        except TimeoutError:
            pass
    await proto.disconnect()
    return {"received": state["count"], "bytes": state["bytes"], "t_first": state["t_first"],
            "t_last": state["t_last"], "end_reason": reason}


@worker("helper", "pub")
async def helper_pub(ctx: Ctx) -> dict[str, Any]:
    """The load of ``recv_qos0_*``: ``--messages`` QoS 0 PUBLISHes, in 100-message writes,
    at ``--rate`` messages/s (0 = as fast as the socket takes them)."""
    import mqttraw

    proto = await mqttraw.connect(ctx.port, ctx.client_id)
    transport = proto.transport
    assert transport is not None
    packet = mqttraw.packets.publish(ctx.topic, ctx.payload)
    batch = 100
    emit("ready")
    t0 = now()
    sent = 0
    while sent < ctx.messages:
        k = min(batch, ctx.messages - sent)
        transport.write(packet * k)
        sent += k
        if ctx.rate > 0:
            ahead = sent / ctx.rate - (now() - t0)
            if ahead > 0:
                await asyncio.sleep(ahead)
        if proto._paused:
            await proto.wait_writable()
    await proto.drain()
    t1 = now()
    await proto.disconnect()
    return {"sent": sent, "t0": t0, "t_sent": t1}


@worker("helper", "pub_each")
async def helper_pub_each(ctx: Ctx) -> dict[str, Any]:
    """The load of ``scale``: one QoS 0 PUBLISH to each of ``<topic>/0`` .. ``<topic>/<count-1>``,
    1000 per write."""
    import mqttraw

    proto = await mqttraw.connect(ctx.port, ctx.client_id)
    transport = proto.transport
    assert transport is not None
    emit("ready")
    t0 = now()
    for start in range(0, ctx.count, 1000):
        transport.write(b"".join(mqttraw.packets.publish(f"{ctx.topic}/{i}", ctx.payload)
                                 for i in range(start, min(ctx.count, start + 1000))))
        if proto._paused:
            await proto.wait_writable()
    await proto.drain()
    t1 = now()
    await proto.disconnect()
    return {"sent": ctx.count, "t0": t0, "t_sent": t1}


# -- entry point ----------------------------------------------------------------------------


def parse_args(argv: list[str]) -> tuple[Ctx, int | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("client")
    p.add_argument("scenario")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--messages", type=int, required=True)
    p.add_argument("--payload", type=int, default=64, help="payload size in bytes")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--window", type=int, default=1000)
    p.add_argument("--inflight", type=int, default=100)
    p.add_argument("--client-id", default=None)
    p.add_argument("--rate", type=float, default=0.0)
    p.add_argument("--idle", type=float, default=5.0)
    p.add_argument("--core", type=int, default=None, help="CPU core to pin this process to")
    p.add_argument("--ca", default=None, help="mTLS: CA certificate (PEM)")
    p.add_argument("--cert", default=None, help="mTLS: client certificate (PEM)")
    p.add_argument("--key", default=None, help="mTLS: client key (PEM)")
    p.add_argument("--warmup", type=int, default=100, help="latency: unmeasured round trips")
    p.add_argument("--count", type=int, default=1000, help="scale, fleet: connections")
    p.add_argument("--duration", type=int, default=15, help="fleet: seconds of publishing")
    p.add_argument("--concurrency", type=int, default=100,
                   help="scale: connection attempts in progress at once")
    a = p.parse_args(argv)
    ctx = Ctx(
        client=a.client,
        scenario=a.scenario,
        port=a.port,
        topic=a.topic,
        messages=a.messages,
        payload=make_payload(a.payload),
        timeout=a.timeout,
        window=a.window,
        inflight=a.inflight,
        client_id=a.client_id or f"bench-{a.client}-{a.scenario}-{os.getpid()}",
        rate=a.rate,
        idle=a.idle,
        ca=a.ca,
        cert=a.cert,
        key=a.key,
        warmup=a.warmup,
        count=a.count,
        duration=a.duration,
        concurrency=a.concurrency,
    )
    return ctx, a.core


def main(argv: list[str]) -> int:
    ctx, core = parse_args(argv)
    pin(core)  # before any client library is imported or any thread started
    fn = WORKERS.get((ctx.client, ctx.scenario))
    if fn is None:
        emit("result", error=f"no worker for client {ctx.client!r} scenario {ctx.scenario!r}")
        return 2
    try:
        if inspect.iscoroutinefunction(fn):
            result = asyncio.run(fn(ctx))
        else:
            result = fn(ctx)
    except BaseException as e:  # noqa: BLE001 - every failure becomes a result line
        traceback.print_exc()
        emit("result", error=f"{type(e).__name__}: {e}")
        return 1
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    emit("result", affinity=affinity, **result)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Don't let a stuck library thread keep the process alive after the result is out.
    os._exit(code)
