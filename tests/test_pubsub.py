"""Publish/subscribe round trips against a real mosquitto (plain TCP and mutual TLS)."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

import awsiot_rs

pytestmark = pytest.mark.broker


async def take(sub: awsiot_rs.Subscription, n: int, timeout: float = 5.0) -> list[awsiot_rs.Message]:
    async def run() -> list[awsiot_rs.Message]:
        out = []
        async for m in sub:
            out.append(m)
            if len(out) == n:
                break
        return out

    return await asyncio.wait_for(run(), timeout)


async def test_qos0_and_qos1_round_trip_over_mutual_tls(mtls_client, unique_topic):
    async with mtls_client(client_id="rt-mtls") as c:
        assert c.is_connected
        sub = await c.subscribe(unique_topic, qos=1)
        assert sub.granted_qos == [1]
        assert sub.topic_filters == [unique_topic]
        await c.publish(unique_topic, b"zero", qos=0)
        await c.publish(unique_topic, b"one", qos=1)
        got = await take(sub, 2)
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        (unique_topic, b"zero", 0),
        (unique_topic, b"one", 1),
    ]
    assert not c.is_connected


async def test_payload_forms_bytes_str_and_json(plain_client, unique_topic):
    async with plain_client() as c:
        sub = await c.subscribe(unique_topic, qos=0)
        await c.publish(unique_topic, b"raw", qos=1)
        await c.publish(unique_topic, "text é", qos=1)
        await c.publish(unique_topic, {"temp": 10, "ok": True}, qos=1)
        await c.publish(unique_topic, [1, 2], qos=1)
        await c.publish(unique_topic, bytearray(b"ba"), qos=1)
        await c.publish(unique_topic, memoryview(b"mv"), qos=1)
        got = await take(sub, 6)
    assert got[0].payload == b"raw"
    assert got[1].text() == "text é"
    assert got[2].json() == {"temp": 10, "ok": True}
    assert got[3].json() == [1, 2]
    assert [got[4].payload, got[5].payload] == [b"ba", b"mv"]
    with pytest.raises(TypeError, match="payload must be"):
        await c.publish(unique_topic, 3.14)  # type: ignore[arg-type]


async def test_wildcard_filters_and_dollar_topics(plain_client, unique_topic):
    async with plain_client() as c:
        plus = await c.subscribe(f"{unique_topic}/+/room1")
        hash_ = await c.subscribe(f"{unique_topic}/#")
        await c.publish(f"{unique_topic}/temp/room1", b"1", qos=1)
        await c.publish(f"{unique_topic}/temp/room2", b"2", qos=1)
        await c.publish(f"{unique_topic}/a/b/room1", b"3", qos=1)
        assert [m.payload for m in await take(hash_, 3)] == [b"1", b"2", b"3"]
        assert [m.payload for m in await take(plus, 1)] == [b"1"]
        await asyncio.sleep(0.2)
        assert plus.pending() == 0, "only the exact one-level match reaches the '+' filter"
    assert awsiot_rs.topics.matches("a/#", "a")
    assert not awsiot_rs.topics.matches("#", "$SYS/x")


async def test_one_message_reaches_every_matching_subscription_and_messages(plain_client, unique_topic):
    async with plain_client() as c:
        everything = c.messages()
        a = await c.subscribe(f"{unique_topic}/x")
        b = await c.subscribe(f"{unique_topic}/+")
        await c.publish(f"{unique_topic}/x", b"hello", qos=1)
        for s in (a, b, everything):
            (m,) = await take(s, 1)
            assert m.payload == b"hello" and m.matches(f"{unique_topic}/#")


async def test_sync_and_async_callbacks_run_on_the_loop_thread_and_survive_exceptions(
    plain_client, unique_topic, caplog
):
    loop_thread = threading.get_ident()
    seen_sync: list[bytes] = []
    seen_async: list[bytes] = []
    threads: set[int] = set()

    def on_message(m: awsiot_rs.Message) -> None:
        threads.add(threading.get_ident())
        seen_sync.append(m.payload)
        if m.payload == b"boom":
            raise RuntimeError("callback failure")

    async def on_message_async(m: awsiot_rs.Message) -> None:
        threads.add(threading.get_ident())
        await asyncio.sleep(0)
        seen_async.append(m.payload)
        if m.payload == b"boom":
            raise RuntimeError("async callback failure")

    caplog.set_level(logging.ERROR, logger="awsiot_rs")
    async with plain_client() as c:
        await c.subscribe(unique_topic, callback=on_message)
        await c.subscribe(unique_topic, callback=on_message_async)
        for p in (b"a", b"boom", b"c"):
            await c.publish(unique_topic, p, qos=1)

        async def both() -> None:
            while len(seen_sync) < 3 or len(seen_async) < 3:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(both(), 5)
    assert seen_sync == [b"a", b"boom", b"c"]
    assert seen_async == [b"a", b"boom", b"c"]
    assert threads == {loop_thread}
    assert sum("callback raised" in r.getMessage() for r in caplog.records) == 2


async def test_unsubscribe_stops_delivery_and_ends_iteration(plain_client, unique_topic):
    async with plain_client() as c:
        sub = await c.subscribe(unique_topic)
        other = await c.subscribe(f"{unique_topic}/other")
        await c.publish(unique_topic, b"before", qos=1)
        assert [m.payload for m in await take(sub, 1)] == [b"before"]
        await c.unsubscribe(unique_topic)
        await c.publish(unique_topic, b"after", qos=1)
        rest = [m async for m in sub]
        assert rest == [], "the iterator ends after unsubscribe and nothing more arrives"
        assert sub.closed
        await other.unsubscribe()
        assert [m async for m in other] == []


async def test_large_payloads_both_ways(mtls_client, unique_topic):
    big = bytes(range(256)) * 512  # 128 KiB exactly: the AWS maximum
    async with mtls_client() as c:
        sub = await c.subscribe(unique_topic)
        await c.publish(unique_topic, big, qos=1)
        (m,) = await take(sub, 1)
    assert m.payload == big


async def test_stats_and_lifecycle_callbacks(plain_client, unique_topic):
    events: list[object] = []

    async def on_connect(e: awsiot_rs.ConnectEvent) -> None:
        events.append(e)

    c = plain_client(on_connect=on_connect, on_disconnect=events.append)
    result = await c.connect()
    assert result == awsiot_rs.ConnectResult(session_present=False)
    sub = await c.subscribe(unique_topic)
    await c.publish(unique_topic, b"x" * 10, qos=1)
    await take(sub, 1)
    await inflight_drained(c)
    s = c.stats()
    assert s["messages_sent"] == 1 and s["messages_received"] == 1
    assert s["bytes_sent"] > 10 and s["bytes_received"] > 10
    assert s["inflight"] == 0 and s["queued"] == 0 and s["dropped"] == 0
    assert set(s) >= {"reconnects"}
    await c.disconnect()
    await asyncio.sleep(0.05)
    assert events == [
        awsiot_rs.ConnectEvent(session_present=False, reconnect=False),
        awsiot_rs.DisconnectEvent(reason="client", error=None),
    ]


async def test_client_is_reusable_but_not_reentrant(plain_client, unique_topic):
    c = plain_client()
    async with c:
        with pytest.raises(RuntimeError, match="not re-entrant"):
            async with c:
                pass
        await c.publish(unique_topic, b"1", qos=1)
    async with c:
        await c.publish(unique_topic, b"2", qos=1)
        assert c.is_connected


async def test_operations_outside_a_connection_raise_client_closed(plain_client, unique_topic):
    c = plain_client()
    with pytest.raises(awsiot_rs.ClientClosedError):
        await c.publish(unique_topic, b"x", qos=1)
    with pytest.raises(awsiot_rs.ClientClosedError):
        await c.publish(unique_topic, b"x", qos=0)
    with pytest.raises(awsiot_rs.ClientClosedError):
        await c.subscribe(unique_topic)
    async with c:
        sub = await c.subscribe(unique_topic)
    assert [m async for m in sub] == [], "disconnect ends open subscriptions"
    with pytest.raises(awsiot_rs.ClientClosedError):
        await c.publish(unique_topic, b"x", qos=1)
    with pytest.raises(awsiot_rs.ClientClosedError):
        c.publish_nowait(unique_topic, b"x")
    await c.disconnect()  # idempotent


async def test_publish_nowait_qos1_is_acknowledged(plain_client, unique_topic):
    async with plain_client() as c:
        sub = await c.subscribe(unique_topic, qos=1)
        for i in range(500):
            c.publish_nowait(unique_topic, str(i), qos=1)
        got = await take(sub, 500)
        assert [m.text() for m in got] == [str(i) for i in range(500)]

        async def acked() -> None:
            while c.stats()["inflight"] or c.stats()["queued"]:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(acked(), 5)


async def test_cancelled_publish_does_not_break_the_client(plain_client, unique_topic):
    async with plain_client() as c:
        sub = await c.subscribe(unique_topic)
        tasks = [asyncio.ensure_future(c.publish(unique_topic, str(i), qos=1)) for i in range(50)]
        await asyncio.sleep(0)  # every task has submitted its publish and awaits the PUBACK
        for t in tasks[::2]:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        got = await take(sub, 50)
        assert sorted(int(m.text()) for m in got) == list(range(50)), "cancelling an awaiter never cancels the publish"
        await c.publish(unique_topic, b"still works", qos=1)
        assert (await take(sub, 1))[0].payload == b"still works"
        await inflight_drained(c)  # the counter follows the acknowledgements


async def test_log_file_has_one_line_per_packet(plain_client, unique_topic, tmp_path):
    path = tmp_path / "traffic.log"
    async with plain_client(log_file=path, username="u", password="S3NTINEL-PW") as c:
        sub = await c.subscribe(unique_topic)
        await c.publish(unique_topic, b"p" * 33, qos=1)
        await take(sub, 1)
    text = path.read_text()
    lines = text.splitlines()
    kinds = [line.split()[2] for line in lines]
    assert kinds[:2] == ["CONNECT", "CONNACK"]
    for k in ("SUBSCRIBE", "SUBACK", "PUBLISH", "PUBACK", "DISCONNECT"):
        assert k in kinds, (k, text)
    out_pub = next(line for line in lines if " OUT PUBLISH" in line)
    assert f'topic="{unique_topic}"' in out_pub and "payload=33" in out_pub and "pkid=" in out_pub
    assert "S3NTINEL-PW" not in text and "ppppp" not in text


async def test_publish_many_sends_a_batch_in_order(plain_client, unique_topic):
    async with plain_client() as c:
        sub = await c.subscribe(unique_topic, qos=1)
        await c.publish_many([(unique_topic, str(i)) for i in range(100)], qos=1)
        await c.publish_many([(unique_topic, {"n": i}) for i in range(100, 150)], qos=0)
        got = await take(sub, 150)
        assert [m.payload for m in got[:100]] == [str(i).encode() for i in range(100)]
        assert [m.json()["n"] for m in got[100:]] == list(range(100, 150))
        with pytest.raises(awsiot_rs.TopicError):
            await c.publish_many([(unique_topic, b"ok"), ("bad/+", b"x")], qos=1)
        await asyncio.sleep(0.2)
        assert sub.pending() == 0, "a batch with one invalid message sends nothing"
        await inflight_drained(c)  # the counter follows the acknowledgements


async def test_many_clients_on_one_loop_each_get_their_own_messages(plain_client, unique_topic):
    clients = [plain_client() for _ in range(5)]
    got: dict[int, list[bytes]] = {i: [] for i in range(5)}
    iters = []
    for i, c in enumerate(clients):
        await c.connect()
        await c.subscribe(f"{unique_topic}/{i}", callback=lambda m, i=i: got[i].append(m.payload))
        iters.append(await c.subscribe(f"{unique_topic}/{i}"))
    for i in range(5):
        await clients[0].publish(f"{unique_topic}/{i}", str(i), qos=1)
    for i in range(5):
        m = await asyncio.wait_for(iters[i].__anext__(), 5)
        assert m.payload == str(i).encode()
    for _ in range(100):
        if all(got.values()):
            break
        await asyncio.sleep(0.02)
    assert got == {i: [str(i).encode()] for i in range(5)}, "every client's callback got its own message"
    for c in clients:
        await c.disconnect()


async def inflight_drained(c: awsiot_rs.Client, timeout: float = 5.0) -> None:
    """Waits until ``stats()["inflight"]`` reaches 0 (it is updated by the driver after the
    acknowledgement that completed the awaited publish)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while c.stats()["inflight"]:
        assert loop.time() < end, f"inflight stayed at {c.stats()['inflight']}"
        await asyncio.sleep(0.01)
