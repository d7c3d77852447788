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
the load for ``recv_qos0_*``.

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

    client = awsiot_rs.Client(
        HOST,
        port=ctx.port,
        tls=False,
        limits="mqtt",
        client_id=ctx.client_id,
        keep_alive=60,
        inflight=ctx.inflight,
    )
    await asyncio.wait_for(client.connect(), 10)
    return client


async def _awsiot_pub_qos0(ctx: Ctx, use_await: bool) -> dict[str, Any]:
    import awsiot_rs

    client = await _awsiot_connect(ctx)
    topic, payload, n = ctx.topic, ctx.payload, ctx.messages
    full_retries = 0
    queue_full = awsiot_rs.QueueFullError
    emit("ready")
    t0, c0 = now(), cpu()
    if use_await:
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


@worker("awsiot_rs", "pub_qos1")
async def awsiot_pub_qos1(ctx: Ctx) -> dict[str, Any]:
    """``await asyncio.gather(*[publish(qos=1)...])`` in chunks of ``--window``: every
    awaited publish completed at its PUBACK."""
    client = await _awsiot_connect(ctx)
    topic, payload, n, window = ctx.topic, ctx.payload, ctx.messages, ctx.window
    publish = client.publish
    acked = 0
    error = None
    emit("ready")
    t0, c0 = now(), cpu()

    async def run() -> None:
        nonlocal acked
        for start in range(0, n, window):
            k = min(window, n - start)
            await asyncio.gather(*[publish(topic, payload, qos=1) for _ in range(k)])
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
    await asyncio.wait_for(client.connect(HOST, ctx.port, keepalive=60, version=MQTTv311), 10)
    return client


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


@worker("raw", "pub_qos0")
async def raw_pub_qos0(ctx: Ctx) -> dict[str, Any]:
    """A pre-encoded PUBLISH appended per message to a buffer, written every 16 KiB."""
    import mqttraw

    proto = await mqttraw.connect(ctx.port, ctx.client_id)
    transport = proto.transport
    assert transport is not None
    packet = mqttraw.publish_packet(ctx.topic, ctx.payload)
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

    proto = await mqttraw.connect(ctx.port, ctx.client_id)
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

    proto = await mqttraw.connect(ctx.port, ctx.client_id, on_publish=on_publish)
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
    packet = mqttraw.publish_packet(ctx.topic, ctx.payload)
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
