"""Byte-level cases against the scripted fake broker: ack correlation, refusals."""

from __future__ import annotations

import asyncio
import functools
import random

import pytest

import awsiot_rs
from support import packets as P
from support.clients import make_client
from support.fake_broker import FakeBroker

client = functools.partial(make_client, keep_alive=30)


async def test_each_publish_completes_at_its_own_puback_under_shuffled_acks():
    async with FakeBroker() as fb:
        fb.hold_pubacks = True
        async with client(fb.port) as c:
            n = 64
            tasks = [asyncio.ensure_future(c.publish("t", f"m{i}", qos=1)) for i in range(n)]
            await fb.wait_for(lambda: len(fb.held) == n)
            by_pkid = {p.pkid: p.payload.decode() for p in fb.of_type(P.PUBLISH)}
            assert len(by_pkid) == n, "64 concurrent publishes use 64 distinct packet ids"
            order = list(fb.held)
            random.Random(5).shuffle(order)
            done_payloads: list[str] = []
            for pkid in order:
                fb.release(pkid)
                expected = by_pkid[pkid]
                task = tasks[int(expected[1:])]
                await asyncio.wait_for(asyncio.shield(task), 2)
                done_payloads.append(expected)
                still_pending = [i for i, t in enumerate(tasks) if not t.done()]
                assert len(still_pending) == n - len(done_payloads), "one ack resolves exactly one publish"
            assert all(t.result() is None for t in tasks)
            assert c.stats()["inflight"] == 0


async def test_packet_ids_are_reused_only_after_their_ack():
    async with FakeBroker() as fb:
        async with client(fb.port, inflight=8) as c:
            await asyncio.gather(*(c.publish("t", str(i), qos=1) for i in range(200)))
            pubs = fb.of_type(P.PUBLISH)
            assert len(pubs) == 200
            assert {p.pkid for p in pubs} <= set(range(1, 9)), "ids stay within the inflight window"


async def test_unsolicited_and_duplicate_pubacks_are_ignored():
    async with FakeBroker() as fb:
        fb.hold_pubacks = True
        async with client(fb.port) as c:
            t = asyncio.ensure_future(c.publish("t", b"x", qos=1))
            await fb.wait_for(lambda: len(fb.held) == 1)
            pkid = fb.held[0]
            fb.send(P.puback(pkid + 17))  # unknown id
            await asyncio.sleep(0.1)
            assert not t.done()
            fb.release(pkid)
            await asyncio.wait_for(t, 2)
            fb.send(P.puback(pkid))  # duplicate
            await asyncio.sleep(0.1)
            assert c.is_connected
            fb.hold_pubacks = False
            await asyncio.wait_for(c.publish("t", b"after", qos=1), 2)


async def test_suback_failure_raises_subscribe_error():
    async with FakeBroker() as fb:
        fb.suback_codes = lambda fs: [0x80 if f.startswith("forbidden") else q for f, q in fs]
        async with client(fb.port) as c:
            with pytest.raises(awsiot_rs.SubscribeError, match="forbidden/x") as info:
                await c.subscribe(["ok/x", "forbidden/x"])
            assert info.value.filters == ["forbidden/x"]
            sub = await c.subscribe("ok/y", qos=1)
            assert sub.granted_qos == [1]


@pytest.mark.parametrize(
    ("code", "exc", "text"),
    [
        (4, awsiot_rs.AuthError, "user name or password"),
        (5, awsiot_rs.AuthError, "not authorized"),
        (3, awsiot_rs.ConnectError, "server unavailable"),
        (2, awsiot_rs.ConnectError, "identifier rejected"),
    ],
)
async def test_connack_refusals_are_typed(code, exc, text):
    async with FakeBroker() as fb:
        fb.connack_code = code
        c = client(fb.port, username="u", password="S3NTINEL-PW")
        with pytest.raises(exc, match=text) as info:
            await c.connect()
        assert info.value.return_code == code
        assert "S3NTINEL-PW" not in str(info.value)
        assert not c.is_connected
        # The client is reusable after a failed first connect.
        fb.connack_code = 0
        async with c:
            assert c.is_connected


async def test_connect_refused_network_error_is_connect_error():
    fb = await FakeBroker().start()
    port = fb.port
    await fb.close()
    with pytest.raises(awsiot_rs.ConnectError, match="TCP connect"):
        await client(port).connect()


async def test_connect_sends_client_id_keepalive_and_credentials():
    async with FakeBroker() as fb:
        async with client(fb.port, client_id="dev-7", keep_alive=45, username="user", password="pw", clean_session=False):
            pass
        (connect,) = fb.of_type(P.CONNECT)
        assert (connect.client_id, connect.keep_alive, connect.username, connect.password) == ("dev-7", 45, "user", b"pw")
        assert connect.clean_session is False
        assert fb.of_type(P.DISCONNECT), "exiting sends DISCONNECT"


async def test_a_broker_that_never_sends_connack_fails_the_attempt_after_connect_timeout():
    accepted: list[float] = []
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(asyncio.get_running_loop().time())
        held.append(writer)
        await reader.read(65536)  # takes the CONNECT, never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        c = client(port, connect_timeout=0.5)
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(awsiot_rs.ConnectError, match="no CONNACK"):
            await c.connect()
        waited = asyncio.get_running_loop().time() - t0
        assert 0.4 <= waited < 3, waited
        assert len(accepted) == 1, "the first attempt is not retried"
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


async def test_publish_waits_for_room_instead_of_failing_when_the_queue_is_full():
    reading = asyncio.Event()
    received = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await reader.read(1024)  # CONNECT
        writer.write(P.connack())
        await writer.drain()
        await reading.wait()  # stop reading: TCP buffers, the driver and the queue fill up
        while data := await reader.read(1 << 20):
            received += len(data)
        writer.close()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with client(port) as c:
            payload = b"x" * 200
            full = 0
            for _ in range(400_000):
                try:
                    c.publish_nowait("t", payload)
                except awsiot_rs.QueueFullError:
                    full += 1
                    break
                if _ % 10_000 == 0:
                    await asyncio.sleep(0)
            assert full == 1, "publish_nowait reports a full queue instead of waiting"
            # Same loop turn, queue still full: publish() returns a waiting awaitable.
            waiting = c.publish("t", b"after", qos=0)
            assert asyncio.iscoroutine(waiting), "await publish() waits for room instead of raising"
            reading.set()
            await asyncio.wait_for(waiting, 20)
    finally:
        reading.set()
        server.close()
        await server.wait_closed()
