"""Reliability against a real mosquitto: broker restarts, persistent sessions, slow consumers,
cancellation and lifecycle hygiene (reliability-cases.md 1, 4, 6, 10, 11, 12)."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import signal
import threading
import uuid
import weakref

import paho.mqtt.client as paho
import pytest

import awsiot_rs
from support import packets as P
from support.clients import make_client
from support.fake_broker import FakeBroker
from support.mosquitto import Mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.reliability]

FAST = awsiot_rs.Reconnect(min_delay=0.2, max_delay=1.0, jitter=False, reset_after=30)


class Verifier:
    """An independent paho-mqtt subscriber with a persistent session that records payloads."""

    def __init__(self, port: int, topic: str) -> None:
        self.received: list[str] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"verifier-{uuid.uuid4().hex[:8]}", clean_session=False)
        self.c.reconnect_delay_set(0.1, 0.5)
        self.c.on_connect = lambda c, u, f, rc, p: (c.subscribe(topic, qos=1), self.connected.set())
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=5)
        self.c.loop_start()
        assert self.connected.wait(5)

    def _on_message(self, c, u, m) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.received.append(m.payload.decode())

    def seen(self) -> set[str]:
        with self.lock:
            return set(self.received)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


async def test_qos1_publisher_loses_no_acknowledged_message_across_a_broker_restart(pki, tmp_path):
    broker = Mosquitto(pki, tmp_path / "broker", persistence=True)
    broker.start()
    topic = f"restart/{uuid.uuid4().hex}"
    verifier = Verifier(broker.port, topic)
    events: list[object] = []
    pub = make_client(
        broker.port, client_id=f"pub-{uuid.uuid4().hex[:8]}",
        clean_session=False, keep_alive=5, reconnect=FAST, operation_timeout=20,
        offline_queue=awsiot_rs.OfflineQueue(limit=10_000), on_disconnect=events.append, on_connect=events.append,
    )
    await pub.connect()
    outcome: dict[int, object] = {}

    async def send(i: int) -> None:
        try:
            await pub.publish(topic, str(i), qos=1)
            outcome[i] = True
        except awsiot_rs.AwsIotError as e:
            outcome[i] = e

    n = 2000
    tasks = []
    try:
        for i in range(n):
            tasks.append(asyncio.ensure_future(send(i)))
            if i % 50 == 49:
                await asyncio.sleep(0.1)  # ~500 msg/s
            if i == n // 2:
                await asyncio.to_thread(broker.stop, signal.SIGTERM)
                restart = asyncio.get_running_loop().call_later(2.0, broker.start)
        await asyncio.wait_for(asyncio.gather(*tasks), 40)
        acked = {str(i) for i, ok in outcome.items() if ok is True}
        for _ in range(200):
            if acked <= verifier.seen():
                break
            await asyncio.sleep(0.1)
        lost = acked - verifier.seen()
        assert not lost, f"{len(lost)} acknowledged messages never reached the subscriber"
        assert len(outcome) == n, "every publish completed (success or typed error)"
        assert len(acked) == n, f"with a large offline queue every publish succeeds: {n - len(acked)} failed"
        assert any(isinstance(e, awsiot_rs.DisconnectEvent) for e in events)
        assert any(isinstance(e, awsiot_rs.ConnectEvent) and e.reconnect for e in events)
        assert pub.stats()["reconnects"] >= 1
    finally:
        restart.cancel()
        await pub.disconnect()
        verifier.close()
        broker.stop()


async def test_a_lost_session_is_resubscribed_and_delivery_resumes(pki, tmp_path, unique_topic):
    broker = Mosquitto(pki, tmp_path / "broker")  # no persistence: the session is lost
    broker.start()
    connects: list[awsiot_rs.ConnectEvent] = []
    c = make_client(broker.port, keep_alive=5, reconnect=FAST, on_connect=connects.append)
    try:
        async with c:
            sub = await c.subscribe(unique_topic, qos=1)
            await asyncio.to_thread(broker.restart)
            for _ in range(100):
                if len(connects) == 2:
                    break
                await asyncio.sleep(0.05)
            assert connects[-1] == awsiot_rs.ConnectEvent(session_present=False, reconnect=True)
            await asyncio.sleep(0.3)  # let the re-subscription reach the broker
            await c.publish(unique_topic, b"after restart", qos=1)
            m = await asyncio.wait_for(sub.__anext__(), 5)
            assert m.payload == b"after restart"
    finally:
        broker.stop()


async def test_offline_qos0_fails_fast_and_qos1_waits_then_flows(pki, tmp_path, unique_topic):
    broker = Mosquitto(pki, tmp_path / "broker")
    broker.start()
    c = make_client(broker.port, keep_alive=5, reconnect=FAST, offline_queue=awsiot_rs.OfflineQueue(limit=3))
    try:
        async with c:
            sub = await c.subscribe(unique_topic, qos=1)
            await asyncio.to_thread(broker.stop)
            for _ in range(100):
                if not c.is_connected:
                    break
                await asyncio.sleep(0.02)
            with pytest.raises(awsiot_rs.DisconnectedError):
                await c.publish(unique_topic, b"qos0", qos=0)
            waiting = [asyncio.ensure_future(c.publish(unique_topic, str(i), qos=1)) for i in range(3)]
            await asyncio.sleep(0.05)
            with pytest.raises(awsiot_rs.QueueFullError):
                await c.publish(unique_topic, b"one too many", qos=1)
            assert c.stats()["queued"] == 3
            broker.start()
            await asyncio.wait_for(asyncio.gather(*waiting), 10)
            got = [(await asyncio.wait_for(sub.__anext__(), 5)).payload for _ in range(3)]
            assert got == [b"0", b"1", b"2"], "queued operations are sent in submission order"
    finally:
        broker.stop()


async def test_slow_consumer_backpressure_loses_no_qos1_message(broker, unique_topic):
    n = 300
    async with make_client(broker.port) as c:
        sub = await c.subscribe(unique_topic, qos=1, queue_size=10)
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        try:
            for i in range(n):
                pub.publish(unique_topic, str(i), qos=1)
            got = []
            async for m in sub:
                got.append(int(m.payload))
                if len(got) % 10 == 0:
                    await asyncio.sleep(0.01)  # a slow consumer
                if len(got) == n:
                    break
        finally:
            pub.loop_stop()
            pub.disconnect()
        assert sorted(got) == list(range(n))
        assert c.stats()["dropped"] == 0


async def test_acknowledgements_wait_while_the_queue_is_over_capacity():
    # A broker that ignores in-flight windows floods 300 QoS 1 messages at once; the client
    # acknowledges only what fits in the queue (plus one batch taken by the iterator), so a
    # compliant broker (AWS: 100 un-acked per client) must stop: memory stays bounded.
    async with FakeBroker() as fb:
        async with make_client(fb.port) as c:
            sub = await c.subscribe("flood", qos=1, queue_size=10)
            for i in range(1, 301):
                fb.send(P.publish("flood", str(i).encode(), qos=1, pkid=i))
            await asyncio.sleep(0.2)
            assert len(fb.of_type(P.PUBACK)) == 10, "only the messages within capacity are acknowledged"
            consumed = 0
            async for m in sub:
                consumed += 1
                assert len(fb.of_type(P.PUBACK)) <= consumed + 10 + 10
                if consumed % 25 == 0:
                    await asyncio.sleep(0.01)
                if consumed == 300:
                    break
            await fb.wait_for(lambda: len(fb.of_type(P.PUBACK)) == 300)
            acked = [p.pkid for p in fb.of_type(P.PUBACK)]
            assert acked == list(range(1, 301)), "acknowledgements go out in arrival order"


async def test_slow_consumer_drops_qos0_and_counts_it(broker, unique_topic):
    async with make_client(broker.port) as c:
        sub = await c.subscribe(unique_topic, qos=0, queue_size=5)
        sender = make_client(broker.port)
        async with sender:
            for i in range(200):
                await sender.publish(unique_topic, str(i), qos=1)
        await asyncio.sleep(0.3)
        got = []
        while sub.pending():
            got.append(await sub.__anext__())
        assert len(got) == 5
        assert c.stats()["dropped"] == 200 - 5


async def test_timeouts_and_cancellation_leave_the_client_healthy():
    async with FakeBroker() as fb:
        fb.hold_pubacks = True
        c = make_client(fb.port, inflight=100)
        async with c:
            rng = random.Random(11)
            outcomes = []
            for i in range(300):
                try:
                    await asyncio.wait_for(c.publish("t", str(i), qos=1), rng.uniform(0, 0.002))
                    outcomes.append("ok")
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    outcomes.append("timeout")
            assert outcomes.count("timeout") == 300, "nothing can complete while acks are held"
            await fb.wait_for(lambda: len(fb.held) == 100)
            assert c.stats()["inflight"] == 100
            for pkid in list(fb.held):
                fb.release(pkid)
            fb.hold_pubacks = False
            for _ in range(200):
                if c.stats()["inflight"] == 0 and c.stats()["queued"] == 0:
                    break
                await asyncio.sleep(0.02)
            assert c.stats()["inflight"] == 0, "no packet id leaks"
            assert len(fb.of_type(P.PUBLISH)) == 300, "cancelled awaiters never cancel the publish"
            await asyncio.wait_for(asyncio.gather(*(c.publish("t", b"x", qos=1) for _ in range(1000))), 10)


async def test_operation_timeout_raises_operation_timeout():
    async with FakeBroker() as fb:
        fb.hold_pubacks = True
        async with make_client(fb.port, operation_timeout=0.3) as c:
            with pytest.raises(awsiot_rs.OperationTimeout, match="not acknowledged within"):
                await c.publish("t", b"x", qos=1)
            with pytest.raises(TimeoutError):
                await c.publish("t", b"y", qos=1)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


async def test_many_async_with_cycles_leak_nothing_and_send_one_disconnect_each():
    async with FakeBroker() as fb:
        async def cycle() -> None:
            c = make_client(fb.port)
            async with c:
                await c.subscribe("t", callback=lambda m: c.stats())  # a cycle through the callback
                await c.publish("t", b"x", qos=1)

        await cycle()
        gc.collect()
        fds, threads, tasks = _fds(), _threads(), len(asyncio.all_tasks())
        for _ in range(200):
            await cycle()
        gc.collect()
        await asyncio.sleep(0.1)
        assert len(fb.of_type(P.DISCONNECT)) == 201
        assert len(fb.of_type(P.CONNECT)) == 201
        assert _fds() <= fds + 1
        assert _threads() <= threads + 1
        assert len(asyncio.all_tasks()) <= tasks


async def test_a_client_holding_callbacks_is_garbage_collected(broker, unique_topic):
    c = make_client(broker.port)
    async with c:
        await c.subscribe(unique_topic, callback=lambda m: print(c))
    ref = weakref.ref(c)
    del c
    gc.collect()
    assert ref() is None


# --- through the fault proxy -------------------------------------------------------------

from support.fault_proxy import FaultProxy  # noqa: E402


async def test_half_open_connection_is_detected_within_the_keep_alive_bound_and_reconnects(broker, unique_topic):
    async with FaultProxy(target_port=broker.port) as proxy:
        lost: list[tuple[float, awsiot_rs.DisconnectEvent]] = []
        loop = asyncio.get_running_loop()
        c = make_client(proxy.port, keep_alive=2, reconnect=FAST,
                        on_disconnect=lambda e: lost.append((loop.time(), e)))
        async with c:
            sub = await c.subscribe(unique_topic, qos=1)
            await asyncio.sleep(0.5)
            proxy.blackhole(True)
            t0 = loop.time()
            for _ in range(100):
                if lost:
                    break
                await asyncio.sleep(0.05)
            assert lost, "the half-open link was never detected"
            detected_after = lost[0][0] - t0
            assert detected_after <= 2 * 1.5 + 1.0, f"detected after {detected_after:.2f} s"
            assert lost[0][1].reason == "keepalive"
            await proxy.cut()
            proxy.blackhole(False)
            for _ in range(100):
                if c.is_connected:
                    break
                await asyncio.sleep(0.05)
            assert c.is_connected
            await asyncio.sleep(0.3)
            await c.publish(unique_topic, b"after", qos=1)
            assert (await asyncio.wait_for(sub.__anext__(), 5)).payload == b"after"


async def test_pings_still_go_out_during_an_inbound_flood(broker, unique_topic):
    async with FaultProxy(target_port=broker.port) as proxy:
        async with make_client(proxy.port, keep_alive=1, reconnect=None) as c:
            await c.subscribe(unique_topic, qos=0)
            async with make_client(broker.port) as flood:
                end = asyncio.get_running_loop().time() + 3.5
                while asyncio.get_running_loop().time() < end:
                    for _ in range(200):
                        flood.publish_nowait(unique_topic, b"x" * 100)
                    await asyncio.sleep(0.01)
            pings = proxy.packets("c2b", P.PINGREQ)
            assert len(pings) >= 2, "PINGREQ keeps its schedule while messages pour in"
            assert c.is_connected


async def test_inbound_qos1_is_redelivered_after_a_cut_before_our_puback(broker, unique_topic):
    async with FaultProxy(target_port=broker.port) as proxy:
        c = make_client(proxy.port, keep_alive=5,
                        client_id=f"redeliver-{uuid.uuid4().hex[:8]}", clean_session=False, reconnect=FAST)
        async with c:
            sub = await c.subscribe(unique_topic, qos=1)
            proxy.cut_after("b2c", P.PUBLISH)
            async with make_client(broker.port) as sender:
                await sender.publish(unique_topic, b"once", qos=1)
            got = [await asyncio.wait_for(sub.__anext__(), 10) for _ in range(2)]
            assert [m.payload for m in got] == [b"once", b"once"], "at least once: delivered again after the cut"
            assert got[1].dup, "the redelivery carries DUP"
            await proxy.wait_for_packet("c2b", P.PUBACK)
            await c.unsubscribe(unique_topic)


async def test_reconnect_attempts_follow_the_backoff(broker):
    async with FaultProxy(target_port=broker.port) as proxy:
        c = make_client(proxy.port, keep_alive=5,
                        reconnect=awsiot_rs.Reconnect(min_delay=0.2, max_delay=0.8, jitter=False))
        async with c:
            proxy.refuse(True)
            await proxy.cut()
            await asyncio.sleep(3.2)
            gaps = proxy.accept_intervals()[1:]
            assert len(gaps) >= 4
            for gap, expected in zip(gaps[:4], [0.4, 0.8, 0.8, 0.8]):
                # the delay itself, plus the attempt's own time (scheduling noise allowed)
                assert expected - 0.05 <= gap <= expected + 0.3, gaps
            proxy.refuse(False)
            for _ in range(40):
                if c.is_connected:
                    break
                await asyncio.sleep(0.05)
            assert c.is_connected


async def test_duplicate_client_ids_do_not_cause_a_reconnect_storm(broker):
    cid = f"dup-{uuid.uuid4().hex[:8]}"
    async with FaultProxy(target_port=broker.port) as proxy:
        backoff = awsiot_rs.Reconnect(min_delay=0.5, max_delay=4, jitter=False, reset_after=30)
        a = make_client(proxy.port, client_id=cid, reconnect=backoff)
        b = make_client(proxy.port, client_id=cid, reconnect=backoff)
        await a.connect()
        await b.connect()
        await asyncio.sleep(6)
        connects = len(proxy.packets("c2b", P.CONNECT))
        await a.disconnect()
        await b.disconnect()
        # Each client's delays double (0.5, 1, 2, 4): in 6 s each can reconnect at most ~4 times.
        assert connects <= 2 + 2 * 4, f"{connects} CONNECTs in 6 s"
