"""The per-loop dispatcher (``awsiot_rs._dispatch``): exception safety, fairness and
bookkeeping, checked end to end against the session mosquitto."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest

import awsiot_rs
from awsiot_rs import _dispatch

pytestmark = pytest.mark.broker


class Boom(BaseException):
    """A BaseException that is neither KeyboardInterrupt nor SystemExit: asyncio reports it
    through the loop's exception handler instead of stopping the loop."""


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time (the loop's dispatcher hangs?)")
        await asyncio.sleep(0.01)


class CapturedLoopErrors:
    """Records what reaches the running loop's exception handler (restored on exit)."""

    def __init__(self) -> None:
        self.exceptions: list[BaseException | None] = []
        self._loop = asyncio.get_running_loop()
        self._old = self._loop.get_exception_handler()

    def __enter__(self) -> CapturedLoopErrors:
        def record(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            self.exceptions.append(context.get("exception"))

        self._loop.set_exception_handler(record)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.set_exception_handler(self._old)


async def assert_loop_still_delivers(c: awsiot_rs.Client, topic: str, got: list[bytes]) -> None:
    """QoS 1 futures complete, callback and iterator subscriptions keep receiving."""
    it = await asyncio.wait_for(c.subscribe(topic, qos=1), 5)
    for i in range(3):
        await asyncio.wait_for(c.publish(topic, f"after-{i}".encode(), qos=1), 5)
    await wait_until(lambda: got[-3:] == [b"after-0", b"after-1", b"after-2"])

    async def take(n: int) -> list[bytes]:
        out = []
        async for m in it:
            out.append(m.payload)
            if len(out) == n:
                break
        return out

    assert await asyncio.wait_for(take(3), 5) == [b"after-0", b"after-1", b"after-2"]


# (9) exception safety --------------------------------------------------------------------------


@pytest.mark.parametrize("exc_type", [Boom, asyncio.CancelledError])
async def test_base_exception_from_a_subscription_callback_loses_nothing(
    plain_client, unique_topic, exc_type
):
    got: list[bytes] = []
    raised = []

    def callback(m: awsiot_rs.Message) -> None:
        if m.payload == b"boom" and not raised:
            raised.append(True)
            raise exc_type("from a subscription callback")
        got.append(m.payload)

    with CapturedLoopErrors() as errors:
        c = plain_client()
        await asyncio.wait_for(c.connect(), 5)
        try:
            await c.subscribe(unique_topic, qos=1, callback=callback)
            await asyncio.wait_for(c.publish(unique_topic, b"boom", qos=1), 5)
            await wait_until(lambda: bool(raised))
            await assert_loop_still_delivers(c, unique_topic, got)
        finally:
            await asyncio.wait_for(c.disconnect(), 5)
    assert any(isinstance(e, exc_type) for e in errors.exceptions), "it still propagates"


async def test_base_exception_from_a_lifecycle_callback_loses_nothing(plain_client, unique_topic):
    raised = []

    def on_connect(_event: object) -> None:
        if not raised:
            raised.append(True)
            raise Boom("from on_connect")

    got: list[bytes] = []
    with CapturedLoopErrors() as errors:
        c = plain_client(on_connect=on_connect)
        # The connect result and the "connected" event travel together: the event raising must
        # not lose the result (nor anything after it).
        await asyncio.wait_for(c.connect(), 5)
        try:
            await wait_until(lambda: bool(raised))
            await c.subscribe(unique_topic, qos=1, callback=lambda m: got.append(m.payload))
            await assert_loop_still_delivers(c, unique_topic, got)
        finally:
            await asyncio.wait_for(c.disconnect(), 5)
    assert any(isinstance(e, Boom) for e in errors.exceptions)


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_in_a_callback_interrupts_then_the_loop_keeps_working(
    plain_client, unique_topic, exc_type
):
    """Jupyter style: Ctrl-C lands in a callback, run_until_complete raises KeyboardInterrupt,
    the next cell reuses the same loop and client."""
    loop = asyncio.new_event_loop()
    got: list[bytes] = []
    interrupted = []

    def callback(m: awsiot_rs.Message) -> None:
        if m.payload == b"interrupt" and not interrupted:
            interrupted.append(True)
            raise exc_type
        got.append(m.payload)

    c = plain_client()

    async def first_cell() -> None:
        await c.connect()
        await c.subscribe(unique_topic, qos=1, callback=callback)
        await c.publish(unique_topic, b"interrupt", qos=1)
        await asyncio.sleep(30)  # interrupted long before

    async def second_cell() -> None:
        try:
            await assert_loop_still_delivers(c, unique_topic, got)
        finally:
            await asyncio.wait_for(c.disconnect(), 5)

    try:
        task = loop.create_task(first_cell())
        with pytest.raises(exc_type):
            loop.run_until_complete(task)
        assert interrupted
        task.cancel()
        loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
        loop.run_until_complete(second_cell())
    finally:
        loop.close()


# (9) fairness ----------------------------------------------------------------------------------


async def test_a_flood_of_wake_ups_lets_other_tasks_run(plain_client, unique_topic):
    """Many subscriptions become ready at once: the dispatcher works through them in bounded
    slices, so an unrelated task keeps running while the callbacks are delivered."""
    n = 3 * _dispatch.MAX_ITEMS_PER_WAKEUP
    ticks = 0
    seen: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    async with plain_client() as c:
        subs = [
            await c.subscribe(unique_topic, qos=0, callback=lambda _m: seen.append(ticks))
            for _ in range(n)
        ]
        background = asyncio.create_task(ticker())
        try:
            await asyncio.sleep(0)
            await c.publish(unique_topic, b"x", qos=0)
            # Hold the loop (synchronously) until every subscription has its message queued, so
            # all n wake-ups are waiting for the dispatcher when the loop gets control back.
            deadline = time.monotonic() + 10
            while not all(s.pending() for s in subs):
                assert time.monotonic() < deadline, "the broker did not deliver"
                time.sleep(0.001)
            await wait_until(lambda: len(seen) == n)
        finally:
            background.cancel()
    assert max(seen) > min(seen), "the ticker task never ran while the wake-ups were dispatched"


# (15b) bookkeeping -----------------------------------------------------------------------------


async def test_dropped_subscriptions_leave_the_dispatcher_source_table(plain_client, unique_topic):
    d = _dispatch.dispatcher_for(asyncio.get_running_loop())
    async with plain_client() as c:
        await c.subscribe(unique_topic, qos=1)  # warm up, dropped at once
        gc.collect()
        baseline = len(d._sources)
        for _ in range(50):
            c.messages()  # never read, never closed
            await c.subscribe(unique_topic, qos=1)
        # Pending messages for sources that are gone must not matter either.
        await asyncio.wait_for(c.publish(unique_topic, b"late", qos=1), 5)
        gc.collect()
        await asyncio.sleep(0.1)
        gc.collect()
        assert len(d._sources) <= baseline
        live = await c.subscribe(unique_topic, qos=1)
        assert len(d._sources) == baseline + 1
        await c.publish(unique_topic, b"still", qos=1)
        assert (await asyncio.wait_for(live.__anext__(), 5)).payload == b"still"


# (15c) runs of completions -------------------------------------------------------------------


class RecordingNative:
    """Stands in for the dispatcher's native notifier and records what ``drain()`` returns."""

    def __init__(self, native: Any) -> None:
        self.native = native
        self.items: list[tuple[Any, ...]] = []

    def drain(self) -> list[tuple[Any, ...]]:
        items: list[tuple[Any, ...]] = self.native.drain()
        self.items.extend(items)
        return items


class RaisingFuture:
    """In the futures table in place of a real future: completing it raises ``Boom``."""

    def done(self) -> bool:
        return False

    def set_result(self, _value: object) -> None:
        raise Boom("set_result")


async def test_qos1_completions_come_as_bounded_runs_and_a_base_exception_loses_nothing(
    plain_client, unique_topic
):
    """PUBACKs that queue up while the loop is busy reach the dispatcher as ``("ops", tokens)``
    runs (no tuple per publish, at most 256 tokens each). Should something escape while a run
    is handled, only that one future is lost: the rest of the run completes on the next turn."""
    n = 600
    d = _dispatch.dispatcher_for(asyncio.get_running_loop())
    async with plain_client() as c:
        real = d.native
        recorder = RecordingNative(real)
        d.native = recorder  # type: ignore[assignment]
        try:
            with CapturedLoopErrors() as errors:
                futures = [c.publish(unique_topic, b"x", qos=1) for _ in range(n)]
                tokens = {id(f): t for t, f in d._futures.items()}
                mine = [tokens[id(f)] for f in futures]
                victim = mine[n // 2]
                d._futures[victim] = RaisingFuture()  # type: ignore[assignment]
                time.sleep(1.0)  # every PUBACK queues up behind one wake-up
                others = [f for f in futures if tokens[id(f)] != victim]
                await asyncio.wait_for(asyncio.gather(*others), 10)
                await wait_until(lambda: errors.exceptions)
        finally:
            d.native = real
        assert any(isinstance(e, Boom) for e in errors.exceptions)
    runs = [item[1] for item in recorder.items if item[0] == "ops"]
    completed = [t for run in runs for t in run]
    assert set(mine) <= set(completed), "every publish completed through an ops run"
    assert max(len(run) for run in runs) <= 256
    assert len(runs) < n // 10, "completions were not batched into runs"
    assert not any(item[0] == "op" and item[1] in set(mine) for item in recorder.items)


class CountingRef:
    """Stands in for a subscription's native queue and counts the batches taken from it."""

    def __init__(self, ref: Any) -> None:
        self.ref = ref
        self.pops = 0

    def pop_batch(self, n: int) -> Any:
        self.pops += 1
        return self.ref.pop_batch(n)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ref, name)

    def __len__(self) -> int:
        return len(self.ref)


@pytest.mark.parametrize("mode", ["iterator", "callback"])
async def test_an_idle_subscription_takes_no_empty_batches(plain_client, unique_topic, mode):
    """One message at a time: once a batch has emptied the native queue, the subscription waits
    for the notifier instead of taking an empty batch first (one native call per message, not
    two), and still sees every message, then the end of the iteration at disconnect."""
    n = 30
    got: list[bytes] = []
    arrived = asyncio.Event()

    def on_message(m: Any) -> None:
        got.append(m.payload)
        arrived.set()

    async with plain_client() as c:
        sub = await c.subscribe(unique_topic, qos=1, callback=on_message if mode == "callback" else None)
        counting = CountingRef(sub._ref)
        sub._ref = counting  # type: ignore[assignment]
        for i in range(n):
            arrived.clear()
            if mode == "iterator":
                # Waiting before the message is sent: the path of a consumer that keeps up.
                next_message = asyncio.ensure_future(sub.__anext__())
                await asyncio.sleep(0)
                await c.publish(unique_topic, str(i).encode(), qos=1)
                got.append((await asyncio.wait_for(next_message, 5)).payload)
            else:
                await c.publish(unique_topic, str(i).encode(), qos=1)
                await asyncio.wait_for(arrived.wait(), 5)
        assert got == [str(i).encode() for i in range(n)]
        assert counting.pops <= n + 2, f"{counting.pops} batches taken for {n} messages"
        if mode == "iterator":
            await c.disconnect()
            rest = [m async for m in sub]  # the pause ends the iteration: it must not hang
            assert rest == []
