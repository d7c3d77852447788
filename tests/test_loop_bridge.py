"""The event-loop bridge without ``add_reader`` (``Dispatcher.mode == "threadsafe"``).

Windows' default Proactor loop (and some third-party loops) cannot watch a file descriptor:
their ``add_reader`` raises ``NotImplementedError``. The dispatcher then wakes the loop with
``call_soon_threadsafe`` from a waiter thread instead. These tests run the client on a selector
loop whose ``add_reader`` raises ``NotImplementedError`` and check that everything the
``add_reader`` path guarantees still holds: results, callbacks, lifecycle events, order, no
item lost when a callback raises a ``BaseException``, one wake-up per idle→busy transition.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

import awsiot_rs
from awsiot_rs import _dispatch, _native
from support import compat
from support.clients import make_client
from support.fault_proxy import FaultProxy

pytestmark = pytest.mark.broker

_T = TypeVar("_T")

FAST = awsiot_rs.Reconnect(min_delay=0.05, max_delay=0.2, jitter=False)
WAITER_NAME = "awsiot-rs-loop-waker"


class NoReaderLoop(asyncio.SelectorEventLoop):
    """A loop that cannot watch file descriptors for others, like the Proactor loop. It counts
    the dispatcher's wake-ups (``call_soon_threadsafe`` of ``Dispatcher._on_wakeup``)."""

    def __init__(self) -> None:
        super().__init__()
        self.wakeups = 0

    def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:
        raise NotImplementedError("this loop cannot watch file descriptors")

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any, **kwargs: Any) -> asyncio.Handle:
        if getattr(callback, "__func__", None) is _dispatch.Dispatcher._on_wakeup:
            self.wakeups += 1
        return super().call_soon_threadsafe(callback, *args, **kwargs)


def run(main: Callable[[], Coroutine[Any, Any, _T]], loop_factory: Callable[[], asyncio.AbstractEventLoop] = NoReaderLoop) -> _T:
    return compat.run(main(), loop_factory=loop_factory)  # asyncio.Runner, on 3.9 too


class Boom(BaseException):
    """Neither KeyboardInterrupt nor SystemExit: the loop reports it and goes on."""


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time (a lost wake-up?)")
        await asyncio.sleep(0.01)


async def take(sub: awsiot_rs.Subscription, n: int, timeout: float = 10.0) -> list[bytes]:
    out: list[bytes] = []

    async def collect() -> None:
        async for m in sub:
            out.append(m.payload)
            if len(out) == n:
                return

    await asyncio.wait_for(collect(), timeout)
    return out


# -- the mode ---------------------------------------------------------------------------------


def test_a_loop_without_add_reader_selects_the_threadsafe_mode(plain_client):
    async def main() -> None:
        c = plain_client()
        async with c:
            d = c._dispatcher
            assert d is not None
            assert d.mode == "threadsafe"
            assert d.native.threadsafe
            assert d._waiter is not None and d._waiter.is_alive() and d._waiter.daemon
            assert d._waiter.name == WAITER_NAME
            assert _dispatch.dispatcher_for(asyncio.get_running_loop()) is d

    run(main)


def test_a_normal_loop_keeps_the_reader_mode(plain_client):
    async def main() -> None:
        c = plain_client()
        async with c:
            d = c._dispatcher
            assert d is not None
            assert d.mode == "reader"
            assert not d.native.threadsafe
            assert d._waiter is None
            assert isinstance(d.native.fileno(), int)

    run(main, asyncio.SelectorEventLoop)


def test_the_threadsafe_notifier_waits_without_the_gil_and_closes():
    n = _native.Notifier(threadsafe=True)
    assert n.threadsafe
    with pytest.raises(NotImplementedError):
        n.fileno()
    assert n.drain() == []
    woke: list[bool] = []
    t = threading.Thread(target=lambda: woke.append(n.wait()))
    t.start()
    time.sleep(0.1)  # this thread runs meanwhile: wait() released the GIL
    assert t.is_alive()
    n.close()
    t.join(5)
    assert woke == [False], "close() ends a blocked wait()"
    assert n.wait() is False, "and every later one"
    with pytest.raises(RuntimeError):
        _native.Notifier().wait()  # a reader notifier has no waiter: an error, not a hang


# -- results, callbacks, lifecycle --------------------------------------------------------------


def test_publish_subscribe_qos0_and_qos1_with_callbacks_and_iterators(plain_client, unique_topic):
    async def main() -> None:
        got: list[tuple[int, bytes]] = []
        c = plain_client()
        result = await asyncio.wait_for(c.connect(), 5)
        assert result.session_present is False
        try:
            for qos in (0, 1):
                topic = f"{unique_topic}/{qos}"
                await c.subscribe(topic, qos=qos, callback=lambda m: got.append((m.qos, m.payload)))
                it = await c.subscribe(topic, qos=qos)
                for i in range(3):
                    await asyncio.wait_for(c.publish(topic, f"{qos}-{i}".encode(), qos=qos), 5)
                expected = [f"{qos}-{i}".encode() for i in range(3)]
                assert await take(it, 3) == expected
                await wait_until(lambda: [p for q, p in got if q == qos] == expected)
                await c.unsubscribe(topic)
        finally:
            await asyncio.wait_for(c.disconnect(), 5)
        assert not c.is_connected

    run(main)


def test_thousands_of_messages_arrive_all_and_in_order(plain_client, unique_topic):
    n = 5000

    async def main() -> None:
        got: list[bytes] = []
        async with plain_client() as c, plain_client() as sender:
            await c.subscribe(unique_topic, qos=1, callback=lambda m: got.append(m.payload))
            it = await c.subscribe(unique_topic, qos=1)
            expected = [str(i).encode() for i in range(n)]
            # QoS 1 futures in flight together: thousands of results through the bridge too.
            await asyncio.wait_for(
                asyncio.gather(*(sender.publish(unique_topic, p, qos=1) for p in expected)), 60
            )
            for p in expected[:n // 2]:
                sender.publish_nowait(unique_topic, p, qos=0)
            assert await take(it, n + n // 2, timeout=60) == expected + expected[: n // 2]
            await wait_until(lambda: len(got) == n + n // 2, timeout=30)
            assert got == expected + expected[: n // 2]

    run(main)


def test_lifecycle_events_and_operation_errors_arrive(broker, unique_topic):
    async def main() -> None:
        events: list[object] = []
        async with FaultProxy(target_port=broker.port) as proxy:
            c = make_client(proxy.port, keep_alive=5, reconnect=FAST,
                            on_connect=events.append, on_disconnect=events.append)
            await asyncio.wait_for(c.connect(), 5)
            await wait_until(lambda: len(events) == 1)
            assert events[0] == awsiot_rs.ConnectEvent(session_present=False, reconnect=False)
            sub = await c.subscribe(unique_topic, qos=1)
            await proxy.cut()
            await wait_until(lambda: len(events) == 3)
            assert isinstance(events[1], awsiot_rs.DisconnectEvent)
            assert events[2] == awsiot_rs.ConnectEvent(session_present=False, reconnect=True)
            await asyncio.wait_for(c.publish(unique_topic, b"after", qos=1), 5)
            assert await take(sub, 1) == [b"after"]
            await asyncio.wait_for(c.disconnect(), 5)
            await wait_until(lambda: len(events) == 4)
            assert isinstance(events[3], awsiot_rs.DisconnectEvent)
            assert events[3].reason == "client"
        # A failed operation: its exception comes through the same way.
        refused = make_client(proxy.port, reconnect=None)
        with pytest.raises(awsiot_rs.ConnectError):
            await asyncio.wait_for(refused.connect(), 5)

    run(main)


# -- exception safety (as tests/test_dispatch.py checks for the add_reader path) ---------------


class CapturedLoopErrors:
    def __init__(self) -> None:
        self.exceptions: list[BaseException | None] = []
        self._loop = asyncio.get_running_loop()
        self._old = self._loop.get_exception_handler()

    def __enter__(self) -> CapturedLoopErrors:
        self._loop.set_exception_handler(lambda _l, ctx: self.exceptions.append(ctx.get("exception")))
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.set_exception_handler(self._old)


async def assert_loop_still_delivers(c: awsiot_rs.Client, topic: str, got: list[bytes]) -> None:
    it = await asyncio.wait_for(c.subscribe(topic, qos=1), 5)
    for i in range(3):
        await asyncio.wait_for(c.publish(topic, f"after-{i}".encode(), qos=1), 5)
    await wait_until(lambda: got[-3:] == [b"after-0", b"after-1", b"after-2"])
    assert await take(it, 3) == [b"after-0", b"after-1", b"after-2"]


@pytest.mark.parametrize("exc_type", [Boom, asyncio.CancelledError])
def test_a_base_exception_in_a_callback_loses_nothing(plain_client, unique_topic, exc_type):
    n = 300  # more than one batch, and the raise lands in the middle of one

    async def main() -> None:
        got: list[bytes] = []
        raised: list[bool] = []

        def callback(m: awsiot_rs.Message) -> None:
            if m.payload == b"boom" and not raised:
                raised.append(True)
                raise exc_type("from a subscription callback")
            got.append(m.payload)

        with CapturedLoopErrors() as errors:
            async with plain_client() as c, plain_client() as sender:
                await c.subscribe(unique_topic, qos=1, callback=callback)
                expected = [str(i).encode() for i in range(n)]
                payloads = expected[: n // 2] + [b"boom"] + expected[n // 2:]
                await asyncio.wait_for(
                    asyncio.gather(*(sender.publish(unique_topic, p, qos=1) for p in payloads)), 20
                )
                await wait_until(lambda: len(got) >= n, timeout=10)
                assert got[:n] == expected
                await assert_loop_still_delivers(c, unique_topic, got)
        assert raised
        assert any(isinstance(e, exc_type) for e in errors.exceptions), "it still propagates"

    run(main)


def test_a_base_exception_in_a_lifecycle_callback_loses_nothing(plain_client, unique_topic):
    async def main() -> None:
        raised: list[bool] = []

        def on_connect(_event: object) -> None:
            if not raised:
                raised.append(True)
                raise Boom("from on_connect")

        got: list[bytes] = []
        with CapturedLoopErrors() as errors:
            c = plain_client(on_connect=on_connect)
            await asyncio.wait_for(c.connect(), 5)  # its result travels with the raising event
            try:
                await wait_until(lambda: bool(raised))
                await c.subscribe(unique_topic, qos=1, callback=lambda m: got.append(m.payload))
                await assert_loop_still_delivers(c, unique_topic, got)
            finally:
                await asyncio.wait_for(c.disconnect(), 5)
        assert any(isinstance(e, Boom) for e in errors.exceptions)

    run(main)


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_in_a_callback_stops_the_loop_then_it_keeps_working(
    plain_client, unique_topic, exc_type
):
    loop = NoReaderLoop()
    got: list[bytes] = []
    interrupted: list[bool] = []

    def callback(m: awsiot_rs.Message) -> None:
        if m.payload == b"interrupt" and not interrupted:
            interrupted.append(True)
            raise exc_type
        got.append(m.payload)

    c = plain_client()

    async def first() -> None:
        await c.connect()
        await c.subscribe(unique_topic, qos=1, callback=callback)
        await c.publish(unique_topic, b"interrupt", qos=1)
        for i in range(5):  # queued behind the interrupt: must survive it
            await c.publish(unique_topic, f"queued-{i}".encode(), qos=1)
        await asyncio.sleep(30)  # interrupted long before

    async def second() -> None:
        try:
            await wait_until(lambda: got[:5] == [f"queued-{i}".encode() for i in range(5)])
            await assert_loop_still_delivers(c, unique_topic, got)
        finally:
            await asyncio.wait_for(c.disconnect(), 5)

    try:
        with pytest.raises(exc_type):
            loop.run_until_complete(first())
        assert interrupted
        loop.run_until_complete(second())
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


# -- batching: one wake-up per idle→busy transition, not per item -------------------------------


def test_a_busy_loop_is_woken_once_for_any_number_of_results(plain_client, unique_topic):
    n = 1000

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, NoReaderLoop)
        async with plain_client() as c:
            await c.subscribe(unique_topic, qos=0)
            before = loop.wakeups
            # QoS 1 publishes: n futures, completed by n PUBACKs while the loop thread is busy
            # (blocked here, as a CPU-bound callback would): every result queues up behind one
            # wake-up, delivered once the loop is free again.
            futures = [c.publish(unique_topic, b"x", qos=1) for _ in range(n)]
            time.sleep(1.0)
            results = await asyncio.wait_for(asyncio.gather(*futures), 10)
            assert len(results) == n
            assert loop.wakeups - before <= 3, f"{loop.wakeups - before} wake-ups for {n} results"

    run(main)


@pytest.mark.parametrize("loop_factory", [NoReaderLoop, asyncio.SelectorEventLoop])
def test_a_loop_its_dispatcher_and_its_waiter_thread_go_away_together(plain_client, unique_topic, loop_factory):
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []
    dispatchers: list[weakref.ref[_dispatch.Dispatcher]] = []
    threads: list[threading.Thread] = []

    async def main() -> None:
        async with plain_client() as c:
            await c.publish(unique_topic, b"x", qos=1)
            assert c._dispatcher is not None
            loops.append(weakref.ref(asyncio.get_running_loop()))
            dispatchers.append(weakref.ref(c._dispatcher))
            if c._dispatcher._waiter is not None:
                threads.append(c._dispatcher._waiter)

    for _ in range(3):
        run(main, loop_factory)
    deadline = time.monotonic() + 5
    assert len(threads) == (3 if loop_factory is NoReaderLoop else 0)
    while any(r() is not None for r in loops + dispatchers) or any(t.is_alive() for t in threads):
        gc.collect()
        if time.monotonic() > deadline:
            raise AssertionError(
                f"still alive: {[r() for r in loops + dispatchers]}, {[t for t in threads if t.is_alive()]}"
            )
        time.sleep(0.05)


# -- process level: interpreter exit, fork ---------------------------------------------------

NO_READER_LOOP = """
import asyncio, os, sys, awsiot_rs
from awsiot_rs import _dispatch

class NoReaderLoop(asyncio.SelectorEventLoop):
    def add_reader(self, fd, callback, *args):
        raise NotImplementedError
"""


def run_script(code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NO_READER_LOOP + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.mark.parametrize("close_loop", [True, False])
def test_interpreter_exit_with_a_connected_client_is_clean(broker, unique_topic, close_loop):
    """The waiter thread neither blocks nor breaks interpreter exit: with the loop closed, or
    left open (not running) with a connected client whose messages are still arriving and whose
    atexit DISCONNECT produces results for that loop. Repeated: exit-time races are rare."""
    code = f"""
        loop = NoReaderLoop()
        c = awsiot_rs.Client("127.0.0.1", port={broker.port}, tls=False, limits="mqtt", client_id="bridge-exit-%d")
        flood = awsiot_rs.Client("127.0.0.1", port={broker.port}, tls=False, limits="mqtt")
        got = []
        async def main():
            await c.connect()
            await flood.connect()
            await c.subscribe("{unique_topic}", callback=lambda m: got.append(m))
            for _ in range(2000):
                flood.publish_nowait("{unique_topic}", b"x" * 100)
            await c.publish("{unique_topic}", b"1", qos=1)
            assert c._dispatcher.mode == "threadsafe"
        loop.run_until_complete(main())
        if {close_loop}:
            loop.close()
        print("done", flush=True)
    """
    for i in range(6):
        start = len(broker.log_text())
        r = run_script(code % i, timeout=20)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "done"
        assert "Fatal Python error" not in r.stderr and "panicked" not in r.stderr, r.stderr
        assert "Traceback" not in r.stderr, r.stderr
        broker.wait_for_log(f"Client bridge-exit-{i} disconnected", timeout=5, start=start)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_its_own_waiter_thread(broker, unique_topic):
    """The child of a fork() has no copy of the waiter thread: a new client on the same loop
    object there starts one (instead of never being woken)."""
    code = f"""
        loop = NoReaderLoop()
        async def use():
            async with awsiot_rs.Client("127.0.0.1", port={broker.port}, tls=False, limits="mqtt") as c:
                await asyncio.wait_for(c.publish("{unique_topic}", b"1", qos=1), 5)
                return c._dispatcher
        parent = loop.run_until_complete(use())
        pid = os.fork()
        if pid == 0:
            try:
                d = loop.run_until_complete(use())
                assert d is parent and d._waiter.is_alive(), "the same dispatcher, a new waiter"
            except BaseException as e:
                print("child failed:", repr(e), flush=True)
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        loop.close()
    """
    r = run_script(code, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "child 0" in r.stdout, r.stdout + r.stderr
