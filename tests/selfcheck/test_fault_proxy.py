"""Self-checks for tests/support/fault_proxy.py, with raw asyncio sockets and the session broker."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from support import packets as P
from support.fault_proxy import FaultProxy
from support.mosquitto import Mosquitto

pytestmark = pytest.mark.broker

PINGREQ_BYTES = P.pingreq()


def connect_bytes(client_id: str, *, keep_alive: int = 60, clean: bool = True) -> bytes:
    return P.connect(client_id, keep_alive=keep_alive, clean_session=clean)


def new_id() -> str:
    return f"fp-{uuid.uuid4().hex[:12]}"


async def read_packet(reader: asyncio.StreamReader, timeout: float = 5.0) -> P.Packet:
    """Reads exactly one MQTT packet (IncompleteReadError at EOF)."""
    return await asyncio.wait_for(P.read(reader), timeout)


async def read_eof_or_reset(reader: asyncio.StreamReader, timeout: float = 2.0) -> str:
    """Reads until the stream ends; returns 'eof' or 'reset'."""
    try:
        while await asyncio.wait_for(reader.read(65536), timeout):
            pass
    except ConnectionResetError:
        return "reset"
    return "eof"


class Clients:
    """Opens raw client connections and closes them all at teardown."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []

    async def open(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.writers.append(writer)
        return reader, writer

    async def mqtt(
        self, port: int, client_id: str | None = None, *, clean: bool = True
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, P.Packet]:
        """Connects and completes CONNECT/CONNACK; returns the CONNACK too."""
        reader, writer = await self.open(port)
        writer.write(connect_bytes(client_id or new_id(), clean=clean))
        connack = await read_packet(reader)
        assert connack.type == P.CONNACK and connack.body[1] == 0
        return reader, writer, connack

    async def close(self) -> None:
        for w in self.writers:
            w.close()
        for w in self.writers:
            with contextlib.suppress(OSError):
                await w.wait_closed()


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    c = Clients()
    yield c
    await c.close()


@pytest.fixture
async def proxy(broker: Mosquitto) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(target_port=broker.port) as p:
        yield p


async def wait_until(predicate, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_relays_and_logs_both_directions(proxy: FaultProxy, clients: Clients, unique_topic: str) -> None:
    assert proxy.port and proxy.port != proxy.target_port
    cid = new_id()
    reader, writer = await clients.open(proxy.port)
    sent = connect_bytes(cid, keep_alive=30)
    writer.write(sent)
    connack = await read_packet(reader)
    assert connack.type == P.CONNACK and connack.body == b"\x00\x00"
    assert proxy.connections == 1 and proxy.active == 1 and len(proxy.accept_times) == 1

    (connect,) = proxy.packets("c2b", P.CONNECT)
    assert connect.client_id == cid and connect.keep_alive == 30 and connect.raw == sent
    assert [p.type for p in proxy.packets("b2c")] == [P.CONNACK]
    t_connect = next(t for t, d, p in proxy.log if p.type == P.CONNECT)
    t_connack = next(t for t, d, p in proxy.log if p.type == P.CONNACK)
    assert t_connect <= t_connack

    # A payload far bigger than one read chunk survives byte-for-byte and is logged whole.
    payload = bytes(range(256)) * 1000
    writer.write(P.subscribe(1, unique_topic, qos=0))
    assert (await read_packet(reader)).type == P.SUBACK
    writer.write(P.publish(unique_topic, payload, qos=1, pkid=7))
    got = [await read_packet(reader), await read_packet(reader)]
    assert sorted(p.type for p in got) == [P.PUBLISH, P.PUBACK]
    delivered = next(p for p in got if p.type == P.PUBLISH)
    assert delivered.payload == payload and delivered.topic == unique_topic
    assert (await proxy.wait_for_packet("c2b", P.PUBLISH)).payload == payload
    assert (await proxy.wait_for_packet("b2c", P.PUBLISH)).payload == payload
    assert (await proxy.wait_for_packet("b2c", P.PUBACK)).pkid == 7
    assert [p.type for p in proxy.packets(type=P.SUBSCRIBE)] == [P.SUBSCRIBE]
    with pytest.raises(asyncio.TimeoutError):
        await proxy.wait_for_packet("b2c", P.PINGRESP, timeout=0.2)

    # A client DISCONNECT + FIN closes the relayed connection completely.
    writer.write(P.disconnect())
    writer.write_eof()
    assert await read_eof_or_reset(reader) == "eof"
    await wait_until(lambda: proxy.active == 0)
    assert proxy.packets("c2b", P.DISCONNECT)


async def test_cut_closes_both_sides_cleanly(
    proxy: FaultProxy, clients: Clients, broker: Mosquitto
) -> None:
    cid = new_id()
    reader, writer, _ = await clients.mqtt(proxy.port, cid)
    log_start = len(broker.log_text())
    await proxy.cut()
    assert await read_eof_or_reset(reader, timeout=1.0) == "eof"
    assert proxy.active == 0
    # The broker saw the connection end without a DISCONNECT.
    assert await asyncio.to_thread(broker.wait_for_log, f"Client {cid} closed its connection", 5.0, start=log_start)
    # The proxy keeps working for new connections.
    await clients.mqtt(proxy.port)
    assert proxy.connections == 2 and proxy.active == 1


async def test_reset_sends_rst(proxy: FaultProxy, clients: Clients) -> None:
    reader, writer, _ = await clients.mqtt(proxy.port)
    start = time.monotonic()
    await proxy.reset()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(1), 1.0)
    assert time.monotonic() - start < 1.0
    assert proxy.active == 0
    await clients.mqtt(proxy.port)


async def test_blackhole_stalls_without_closing(proxy: FaultProxy, clients: Clients) -> None:
    reader, writer, _ = await clients.mqtt(proxy.port)
    writer.write(PINGREQ_BYTES)
    assert (await read_packet(reader)).type == P.PINGRESP

    proxy.blackhole()
    writer.write(PINGREQ_BYTES)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.read(1), 1.0)
    assert not reader.at_eof() and not writer.is_closing() and proxy.active == 1
    assert len(proxy.packets("c2b", P.PINGREQ)) == 1  # not even read by the proxy

    # New connections are accepted but black-holed too.
    reader2, writer2 = await clients.open(proxy.port)
    writer2.write(connect_bytes(new_id()))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader2.read(1), 0.5)
    assert proxy.connections == 2 and proxy.active == 2

    proxy.blackhole(False)
    reader3, writer3, _ = await clients.mqtt(proxy.port)  # a new connection works
    writer3.write(PINGREQ_BYTES)
    assert (await read_packet(reader3)).type == P.PINGRESP
    # Stalled bytes were held, not lost: the old connections resume where they stopped.
    assert (await read_packet(reader)).type == P.PINGRESP
    assert (await read_packet(reader2)).type == P.CONNACK


async def test_refuse_closes_new_connections(proxy: FaultProxy, clients: Clients) -> None:
    reader, writer, _ = await clients.mqtt(proxy.port)
    proxy.refuse()
    for i in range(2):
        r, w = await clients.open(proxy.port)
        start = time.monotonic()
        assert await read_eof_or_reset(r, timeout=1.0) in ("eof", "reset")
        assert time.monotonic() - start < 0.5
        assert proxy.connections == 2 + i and proxy.refused == 1 + i
    assert len(proxy.packets("c2b", P.CONNECT)) == 1 and proxy.active == 1
    # Existing connections are unaffected.
    writer.write(PINGREQ_BYTES)
    assert (await read_packet(reader)).type == P.PINGRESP

    proxy.refuse(False)
    await clients.mqtt(proxy.port)
    assert proxy.connections == 4 and proxy.active == 2
    assert len(proxy.accept_times) == 4 and len(proxy.accept_intervals()) == 3


async def test_cut_after_broker_publish_loses_the_puback(
    proxy: FaultProxy, clients: Clients, broker: Mosquitto, unique_topic: str
) -> None:
    cid = new_id()
    sub_r, sub_w, _ = await clients.mqtt(proxy.port, cid, clean=False)
    sub_w.write(P.subscribe(1, unique_topic, qos=1))
    assert (await read_packet(sub_r)).type == P.SUBACK

    proxy.cut_after("b2c", P.PUBLISH)
    pub_r, pub_w, _ = await clients.mqtt(broker.port)  # direct to the broker
    pub_w.write(P.publish(unique_topic, b"hello", qos=1, pkid=5))
    assert (await read_packet(pub_r)).type == P.PUBACK

    delivered = await read_packet(sub_r)  # the PUBLISH is delivered...
    assert delivered.type == P.PUBLISH and delivered.payload == b"hello" and not delivered.dup
    sub_w.write(P.puback(delivered.pkid))  # ...but the link is already gone
    assert await read_eof_or_reset(sub_r) in ("eof", "reset")
    await wait_until(lambda: proxy.active == 0)
    assert proxy.packets("c2b", P.PUBACK) == []

    # The broker never got the PUBACK, so it redelivers on session resumption; the rule
    # was one-shot, so this connection survives the next PUBLISH.
    sub_r, sub_w, connack = await clients.mqtt(proxy.port, cid, clean=False)
    assert connack.body[0] == 1  # session present
    again = await read_packet(sub_r)
    assert again.type == P.PUBLISH and again.payload == b"hello" and again.dup
    sub_w.write(P.puback(again.pkid))
    sub_w.write(PINGREQ_BYTES)
    assert (await read_packet(sub_r)).type == P.PINGRESP
    await proxy.wait_for_packet("c2b", P.PUBACK)
    await clients.mqtt(proxy.port, cid, clean=True)  # drop the persistent session


async def test_cut_after_counts_from_arming(proxy: FaultProxy, clients: Clients) -> None:
    reader, writer, _ = await clients.mqtt(proxy.port)
    writer.write(PINGREQ_BYTES)
    assert (await read_packet(reader)).type == P.PINGRESP
    proxy.cut_after("c2b", P.PINGREQ, count=2)
    writer.write(PINGREQ_BYTES)
    assert (await read_packet(reader)).type == P.PINGRESP
    writer.write(PINGREQ_BYTES)  # delivered to the broker, then the link is cut
    assert await read_eof_or_reset(reader) == "eof"
    await wait_until(lambda: proxy.active == 0)
    assert len(proxy.packets("c2b", P.PINGREQ)) == 3
    assert len(proxy.packets("b2c", P.PINGRESP)) == 2  # the third PINGRESP never made it


async def test_drop_next_swallows_a_ping(proxy: FaultProxy, clients: Clients) -> None:
    reader, writer, _ = await clients.mqtt(proxy.port)
    proxy.drop_next("c2b", P.PINGREQ)
    writer.write(PINGREQ_BYTES)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.read(1), 1.0)
    assert not reader.at_eof() and proxy.active == 1
    writer.write(PINGREQ_BYTES)
    assert (await read_packet(reader)).type == P.PINGRESP
    assert len(proxy.packets("c2b", P.PINGREQ)) == 2  # both logged...
    assert [p.type for _, _, p in proxy.dropped] == [P.PINGREQ]  # ...one swallowed
    assert len(proxy.packets("b2c", P.PINGRESP)) == 1

    # count=2, with the two packets coalesced into one chunk together with a third.
    proxy.drop_next("c2b", P.PINGREQ, count=2)
    writer.write(PINGREQ_BYTES * 3)
    assert (await read_packet(reader)).type == P.PINGRESP
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.5)
    assert len(proxy.dropped) == 3


async def test_delay_adds_latency_each_way_without_accumulating(proxy: FaultProxy, clients: Clients) -> None:
    async def connect_rtt() -> float:
        reader, writer = await clients.open(proxy.port)
        start = time.monotonic()
        writer.write(connect_bytes(new_id()))
        assert (await read_packet(reader)).type == P.CONNACK
        return time.monotonic() - start

    assert await connect_rtt() < 0.3
    proxy.delay(0.3)
    rtt = await connect_rtt()
    assert 0.6 <= rtt < 2.0  # 0.3 s on the CONNECT plus 0.3 s on the CONNACK

    # Latency, not serialisation: five pings in a row come back in ~0.6 s, not 3 s.
    reader, writer, _ = await clients.mqtt(proxy.port)
    start = time.monotonic()
    for _ in range(5):
        writer.write(PINGREQ_BYTES)
        await asyncio.sleep(0.02)
    for _ in range(5):
        assert (await read_packet(reader)).type == P.PINGRESP
    assert 0.6 <= time.monotonic() - start < 1.5

    proxy.delay(0)
    assert await connect_rtt() < 0.3


async def test_throttle_limits_bandwidth(proxy: FaultProxy, clients: Clients, unique_topic: str) -> None:
    reader, writer, _ = await clients.mqtt(proxy.port)
    writer.write(P.subscribe(1, unique_topic, qos=0))
    assert (await read_packet(reader)).type == P.SUBACK
    payload = b"x" * 10_000
    proxy.throttle(25_000)
    start = time.monotonic()
    writer.write(P.publish(unique_topic, payload))
    got = await read_packet(reader)
    elapsed = time.monotonic() - start
    assert got.payload == payload
    assert 0.7 <= elapsed < 3.0  # ~0.4 s each way
    proxy.throttle(None)
    start = time.monotonic()
    writer.write(P.publish(unique_topic, payload))
    assert (await read_packet(reader)).payload == payload
    assert time.monotonic() - start < 0.3


async def test_target_down_closes_client(clients: Clients) -> None:
    # A bound but non-listening socket: connecting to it is refused.
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        async with FaultProxy(target_port=placeholder.getsockname()[1]) as proxy:
            reader, writer = await clients.open(proxy.port)
            assert await read_eof_or_reset(reader) in ("eof", "reset")
            await wait_until(lambda: proxy.active == 0)
            assert proxy.connections == 1


async def test_close_is_idempotent_and_ends_everything(broker: Mosquitto, clients: Clients) -> None:
    proxy = FaultProxy(target_port=broker.port)
    await proxy.close()  # never started
    proxy = await FaultProxy(target_port=broker.port).start()
    reader, writer, _ = await clients.mqtt(proxy.port)
    reader2, writer2, _ = await clients.mqtt(proxy.port)
    proxy.blackhole()  # closing must not hang on stalled links
    proxy.delay(5)
    writer2.write(PINGREQ_BYTES)
    start = time.monotonic()
    await asyncio.gather(proxy.close(), proxy.close())
    await proxy.close()
    assert time.monotonic() - start < 3.0
    assert proxy.active == 0
    assert await read_eof_or_reset(reader) == "eof"
    assert await read_eof_or_reset(reader2) in ("eof", "reset")
    with pytest.raises(OSError):
        await clients.open(proxy.port)
