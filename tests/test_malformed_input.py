"""Malformed input from the broker (reliability case #16).

Every case checks the same contract: a broker that breaks MQTT 3.1.1 ends *that* connection
with a typed error (``ProtocolError`` on the ``DisconnectEvent``, or raised by ``connect()``
when it happens before CONNACK), the client reconnects per its ``Reconnect`` policy (the
broker sees a new connection, a new CONNACK makes the client connected again and usable),
nothing hangs, nothing is allocated for a size the client would never accept, and the error
is logged once per connection (not in a loop).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
from collections.abc import Callable

import pytest

import awsiot_rs
from support import packets as P
from support.clients import make_client
from support.fake_broker import FakeBroker

FAST = awsiot_rs.Reconnect(min_delay=0.1, max_delay=0.3, jitter=False)


# --- helpers ---------------------------------------------------------------------------------


class Harness:
    """A client plus every lifecycle event it reported."""

    def __init__(self, port: int, **kw: object) -> None:
        self.events: list[object] = []
        opts: dict[str, object] = {
            "keep_alive": 5,
            "reconnect": FAST,
            "on_disconnect": self.events.append,
            "on_connect": self.events.append,
        }
        opts.update(kw)
        self.client = make_client(port, **opts)

    def disconnects(self) -> list[awsiot_rs.DisconnectEvent]:
        return [e for e in self.events if isinstance(e, awsiot_rs.DisconnectEvent)]

    def connects(self) -> list[awsiot_rs.ConnectEvent]:
        return [e for e in self.events if isinstance(e, awsiot_rs.ConnectEvent)]


async def until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Polls ``predicate`` (the client reports through callbacks, not through the broker)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def protocol_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Messages of the ``awsiot_rs`` logger at WARNING+ that talk about the malformed input."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("awsiot_rs")
        and r.levelno >= logging.WARNING
        and re.search(r"malformed|protocol", r.getMessage(), re.IGNORECASE)
    ]


async def expect_protocol_drop_then_recovery(
    fb: FakeBroker,
    h: Harness,
    caplog: pytest.LogCaptureFixture,
    connections_before: int,
    match: str,
    within: float = 3.0,
) -> awsiot_rs.DisconnectEvent:
    """The connection ends with a ProtocolError matching ``match``, the client reconnects
    (new TCP connection, new CONNACK), works again, and logged the error exactly once."""
    c = h.client
    await until(lambda: bool(h.disconnects()), within, "the client to drop the connection")
    lost = h.disconnects()[0]
    assert lost.reason == "protocol", lost
    assert isinstance(lost.error, awsiot_rs.ProtocolError), repr(lost.error)
    assert re.search(match, str(lost.error)), str(lost.error)

    await until(
        lambda: fb.connections > connections_before
        and c.is_connected
        and any(e.reconnect for e in h.connects()),
        5.0,
        "the reconnect",
    )
    assert c.stats()["reconnects"] >= 1
    # Usable again: a QoS 1 round trip over the new connection.
    await asyncio.wait_for(c.publish("after/reconnect", b"ok", qos=1), 5)

    # Logged once, not in a loop (the broker stays well-behaved after the one bad packet).
    await asyncio.sleep(1.0)
    logged = protocol_warnings(caplog)
    assert len(logged) == 1, logged
    assert len(h.disconnects()) == 1, h.disconnects()
    assert c.is_connected
    return lost


def rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


class PrefixBroker(FakeBroker):
    """A FakeBroker that can send raw bytes in front of its CONNACK (every time), or glued
    right behind it in the same write (``after_connack_once``: on the next connection only)."""

    def __init__(self) -> None:
        super().__init__()
        self.before_connack = b""
        self.after_connack_once = b""

    def _answer(self, p: P.Packet, writer: asyncio.StreamWriter) -> None:
        if p.type == P.CONNECT and self.before_connack:
            writer.write(self.before_connack)
        if p.type == P.CONNECT and self.after_connack_once:
            glued, self.after_connack_once = self.after_connack_once, b""
            writer.write(P.connack(self.session_present, self.connack_code) + glued)
            return
        super()._answer(p, writer)


def cut_connections(fb: FakeBroker) -> None:
    """Closes every server-side connection (the client sees an orderly EOF)."""
    for w in list(fb._writers):
        w.close()


async def bad_connack_on_reconnect(fb: FakeBroker, h: Harness, caplog: pytest.LogCaptureFixture,
                                   break_it: Callable[[], None], fix_it: Callable[[], None],
                                   match: str) -> None:
    """Once connected: the broker drops the link and answers every new CONNECT badly. Each
    reconnect attempt fails with ProtocolError (reported, retried with backoff, logged once per
    attempt), and the client connects again once the broker behaves."""
    c = h.client
    loop = asyncio.get_running_loop()
    break_it()
    before = fb.connections
    t0 = loop.time()
    cut_connections(fb)
    await until(lambda: sum(d.reason == "protocol" for d in h.disconnects()) >= 3, 5.0,
                "three failed reconnect attempts")
    elapsed = loop.time() - t0
    failed = [d for d in h.disconnects() if d.reason == "protocol"]
    for d in failed:
        assert isinstance(d.error, awsiot_rs.ProtocolError), repr(d.error)
        assert re.search(match, str(d.error)), str(d.error)
    assert not c.is_connected
    # Retried per the policy: backed off (>= 0.1 s apart), not a tight loop.
    attempts = fb.connections - before  # new connections since the cut
    assert attempts >= 3
    assert attempts <= elapsed / 0.1 + 2, f"{attempts} attempts in {elapsed:.2f} s"
    fix_it()
    await until(lambda: c.is_connected, 5.0, "the reconnect once the broker behaves")
    await asyncio.wait_for(c.publish("after/reconnect", b"ok", qos=1), 5)
    # One warning per failed attempt, none in between.
    failed_now = sum(d.reason == "protocol" for d in h.disconnects())
    logged = protocol_warnings(caplog)
    assert 1 <= len(logged) <= failed_now, (failed_now, logged)


@pytest.fixture(autouse=True)
def _capture_warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="awsiot_rs")


# --- 1. reserved packet types ----------------------------------------------------------------


@pytest.mark.parametrize("first_byte", [0x00, 0xF0], ids=["type0", "type15"])
@pytest.mark.parametrize("body", [b"", b"\x00\x01"], ids=["empty", "with-body"])
async def test_reserved_packet_type_after_connack(caplog, first_byte, body):
    async with FakeBroker() as fb:
        h = Harness(fb.port)
        async with h.client:
            before = fb.connections
            fb.send(bytes([first_byte]) + P.remaining_length(len(body)) + body)
            await expect_protocol_drop_then_recovery(
                fb, h, caplog, before, rf"malformed packet.*[Ii]nvalid packet type: {first_byte >> 4}"
            )


async def test_malformed_packet_glued_to_the_connack(caplog):
    """The bad packet arrives in the same segment as the CONNACK (it is left over in the
    handshake buffer and decoded before the session loop): connect() succeeds (the CONNACK was
    valid), then the connection is dropped with ProtocolError and re-established."""
    async with PrefixBroker() as fb:
        fb.after_connack_once = b"\xf0\x00"
        h = Harness(fb.port)
        async with h.client:
            await expect_protocol_drop_then_recovery(fb, h, caplog, 1, r"[Ii]nvalid packet type: 15")
            assert not h.connects()[0].reconnect


@pytest.mark.parametrize(
    ("garbage", "match"),
    [
        (b"\x00\x00", r"invalid CONNACK: [Ii]nvalid packet type: 0"),
        (b"\xf0\x00", r"invalid CONNACK: [Ii]nvalid packet type: 15"),
        (bytes([0x20, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]), r"invalid CONNACK: [Mm]alformed remaining length"),
        (bytes([0x20, 0xFF, 0xFF, 0xFF, 0x7F]) + b"\x00" * 8, r"invalid CONNACK: .*limit exceeded: 268435455"),
    ],
    ids=["type0", "type15", "5-byte-length", "256MiB-length-then-stall"],
)
async def test_garbage_instead_of_connack(garbage, match):
    async with PrefixBroker() as fb:
        fb.before_connack = garbage
        h = Harness(fb.port, connect_timeout=10)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(awsiot_rs.ProtocolError, match=match):
            await asyncio.wait_for(h.client.connect(), 5)
        assert loop.time() - t0 < 2, "fails at the header, not by the connect timeout"
        await asyncio.sleep(0.3)
        assert fb.connections == 1, "a failed first connect() is not retried"
        assert not h.client.is_connected


# --- 2. PUBACK with reserved flag bits ---------------------------------------------------------


async def test_puback_with_reserved_flags_is_tolerated(caplog):
    """Observed: a PUBACK whose first byte is 0x41 (flags 0b0001, MQTT 3.1.1 requires 0b0000)
    is *accepted*: rumqttc's v4 decoder looks only at the packet type of a non-PUBLISH packet,
    so the PUBACK completes the matching publish and the connection stays up.

    Strictly, [MQTT-2.2.2-2] says the receiver MUST close the connection on invalid flags.
    Tolerating it is acceptable here: the flag nibble carries no meaning for PUBACK, the packet
    is otherwise well formed (length 2, a known packet id) and unambiguous, nothing is
    delivered to the application from it, and dropping the link would only force a reconnect
    and a redelivery of the same publish. Should the client start rejecting it, the other
    branch of this contract applies (ProtocolError + reconnect) — this test would then fail
    and must be updated consciously.
    """
    async with FakeBroker() as fb:
        fb.hold_pubacks = True
        h = Harness(fb.port)
        async with h.client as c:
            t = asyncio.ensure_future(c.publish("t", b"x", qos=1))
            await fb.wait_for(lambda: len(fb.held) == 1)
            pkid = fb.held.pop()
            fb.send(bytes([0x41, 0x02]) + struct.pack("!H", pkid))
            await asyncio.wait_for(t, 3)
            await asyncio.sleep(0.5)
            assert c.is_connected
            assert h.disconnects() == []
            assert fb.connections == 1
            assert c.stats()["inflight"] == 0
            fb.hold_pubacks = False
            await asyncio.wait_for(c.publish("t", b"after", qos=1), 3)
            assert protocol_warnings(caplog) == []


# --- 3. five-byte remaining length -----------------------------------------------------------


async def test_five_byte_remaining_length(caplog):
    async with FakeBroker() as fb:
        h = Harness(fb.port)
        async with h.client:
            before = fb.connections
            fb.send(bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]) + b"\x00" * 16)
            await expect_protocol_drop_then_recovery(
                fb, h, caplog, before, r"malformed packet.*[Mm]alformed remaining length"
            )


# --- 4. 256 MiB remaining length then a stall --------------------------------------------------


async def test_huge_remaining_length_fails_fast_without_allocating(caplog):
    async with FakeBroker() as fb:
        h = Harness(fb.port)
        loop = asyncio.get_running_loop()
        async with h.client:
            before = fb.connections
            rss0, hwm0 = rss_kib("VmRSS"), rss_kib("VmHWM")
            t0 = loop.time()
            # PUBLISH, remaining length 268_435_455 (the largest encodable: 256 MiB - 1), a few
            # body bytes, then nothing more: a client that waits for (or reserves) the body hangs.
            fb.send(bytes([0x30, 0xFF, 0xFF, 0xFF, 0x7F]) + P.string("t") + b"\x00" * 64)
            await until(lambda: bool(h.disconnects()), 3.0, "the drop")
            took = loop.time() - t0
            assert took < 1.5, f"took {took:.2f} s: it must fail at the header, not by keep-alive"
            await expect_protocol_drop_then_recovery(
                fb, h, caplog, before, r"268435455-byte packet; the limit is 16842767 bytes"
            )
            grown_mib = (rss_kib("VmRSS") - rss0) / 1024
            peak_mib = (rss_kib("VmHWM") - hwm0) / 1024
            assert grown_mib < 50, f"RSS grew {grown_mib:.1f} MiB"
            assert peak_mib < 50, f"peak RSS grew {peak_mib:.1f} MiB"


# --- 5. CONNACK with an invalid return code ----------------------------------------------------


async def test_connack_with_return_code_6(caplog):
    async with FakeBroker() as fb:
        fb.connack_code = 6
        h = Harness(fb.port)
        with pytest.raises(awsiot_rs.ProtocolError, match=r"CONNACK.*return code: 6"):
            await asyncio.wait_for(h.client.connect(), 5)
        await asyncio.sleep(0.5)
        assert fb.connections == 1, "a failed first connect() is not retried"
        assert not h.client.is_connected
        # The broker behaves again: the same client can connect.
        fb.connack_code = 0
        await asyncio.wait_for(h.client.connect(), 5)
        try:
            assert h.client.is_connected

            def break_it() -> None:
                fb.connack_code = 6

            def fix_it() -> None:
                fb.connack_code = 0

            await bad_connack_on_reconnect(fb, h, caplog, break_it, fix_it, r"CONNACK.*return code: 6")
        finally:
            await h.client.disconnect()


# --- 6. PUBLISH before CONNACK -----------------------------------------------------------------


async def test_publish_before_connack(caplog):
    async with PrefixBroker() as fb:
        early = P.publish("early", b"too soon", qos=1, pkid=1)
        fb.before_connack = early
        h = Harness(fb.port)
        with pytest.raises(awsiot_rs.ProtocolError, match=r"expected CONNACK, the broker sent PUBLISH"):
            await asyncio.wait_for(h.client.connect(), 5)
        await asyncio.sleep(0.5)
        assert fb.connections == 1, "a failed first connect() is not retried"
        assert not h.client.is_connected
        assert fb.of_type(P.PUBACK) == [], "nothing from before CONNACK is acknowledged"
        fb.before_connack = b""
        await asyncio.wait_for(h.client.connect(), 5)
        try:
            def break_it() -> None:
                fb.before_connack = early

            def fix_it() -> None:
                fb.before_connack = b""

            await bad_connack_on_reconnect(fb, h, caplog, break_it, fix_it,
                                           r"expected CONNACK, the broker sent PUBLISH")
            assert fb.of_type(P.PUBACK) == []
        finally:
            await h.client.disconnect()


# --- 7. invalid topic names in PUBLISH -------------------------------------------------------------


async def test_publish_with_non_utf8_topic(caplog):
    async with FakeBroker() as fb:
        h = Harness(fb.port)
        async with h.client as c:
            sub = await c.subscribe("#", qos=1)
            before = fb.connections
            fb.send(P.publish(b"bad/\xff\xfe", b"x", qos=1, pkid=7))
            await expect_protocol_drop_then_recovery(fb, h, caplog, before, r"malformed packet.*not UTF-8")
            assert sub.pending() == 0, "nothing from the malformed packet is delivered"
            assert fb.of_type(P.PUBACK) == [], "the malformed PUBLISH is not acknowledged"


@pytest.mark.parametrize("topic", ["w/+/x", "w/#", "w/a\x00b"], ids=["plus", "hash", "nul"])
async def test_publish_with_wildcard_or_nul_in_topic_is_a_protocol_error(caplog, topic):
    async with FakeBroker() as fb:
        h = Harness(fb.port)
        async with h.client as c:
            sub = await c.subscribe("w/#", qos=1)
            before = fb.connections
            fb.send(P.publish(topic, b"x", qos=1, pkid=7))
            await expect_protocol_drop_then_recovery(fb, h, caplog, before, r"invalid topic name")
            delivered = sub.pending()
            acked = [p.pkid for p in fb.of_type(P.PUBACK)]
            assert delivered == 0, "a topic with wildcards is not delivered"
            assert 7 not in acked


# --- 8. SUBACK with the wrong number of return codes ---------------------------------------------


@pytest.mark.parametrize(
    ("filters", "extra"),
    [(["s/one"], [0]), (["s/one", "s/two"], None)],
    ids=["more-codes-than-filters", "fewer-codes-than-filters"],
)
async def test_suback_with_mismatched_return_codes(caplog, filters, extra):
    async with FakeBroker() as fb:
        bad = set(filters)

        def codes(fs: list[tuple[str, int]]) -> list[int]:
            granted = [q for _, q in fs]
            if {f for f, _ in fs} == bad:
                return granted + extra if extra is not None else granted[:1]
            return granted

        fb.suback_codes = codes
        h = Harness(fb.port)
        async with h.client as c:
            n_codes = len(filters) + (len(extra) if extra is not None else -1)
            with pytest.raises(awsiot_rs.ProtocolError,
                               match=rf"SUBACK has {n_codes} return codes for {len(filters)} filters"):
                await asyncio.wait_for(c.subscribe(filters, qos=1), 5)
            # The half-acknowledged subscription is withdrawn at the broker.
            await fb.wait_for(lambda: any(sorted(u.filters) == sorted((f, 0) for f in filters)
                                          for u in fb.of_type(P.UNSUBSCRIBE)), 3)
            # The client keeps working on the same connection.
            sub = await asyncio.wait_for(c.subscribe("s/good", qos=1), 5)
            fb.send(P.publish("s/good", b"hello", qos=1, pkid=9))
            m = await asyncio.wait_for(sub.__anext__(), 3)
            assert (m.topic, m.payload) == ("s/good", b"hello")
            await asyncio.wait_for(c.publish("t", b"x", qos=1), 3)
            fb.send(P.publish("s/one", b"stray", qos=1, pkid=10))  # no longer subscribed
            await fb.wait_for(lambda: 10 in [p.pkid for p in fb.of_type(P.PUBACK)], 3)
            await asyncio.sleep(0.3)
            assert c.is_connected
            assert h.disconnects() == []
            assert fb.connections == 1
            assert sub.pending() == 0
            assert len(protocol_warnings(caplog)) <= 1


# --- 9. PINGRESP storm ----------------------------------------------------------------------------


async def test_pingresp_storm(caplog):
    async with FakeBroker() as fb:
        h = Harness(fb.port)
        async with h.client as c:
            sub = await c.subscribe("storm", qos=1)
            fb.send(P.packet(P.PINGRESP, 0, b"") * 10_000)
            fb.send(P.publish("storm", b"behind the storm", qos=1, pkid=3))
            m = await asyncio.wait_for(sub.__anext__(), 5)
            assert m.payload == b"behind the storm"
            await asyncio.wait_for(c.publish("t", b"x", qos=1), 3)
            await asyncio.sleep(0.3)
            assert c.is_connected
            assert h.disconnects() == []
            assert fb.connections == 1
            assert c.stats()["bytes_received"] >= 20_000
            assert protocol_warnings(caplog) == []


# --- 10. one byte per write ------------------------------------------------------------------------


class DripServer:
    """A raw MQTT server that writes every byte it sends in its own write (TCP_NODELAY, with a
    short sleep between bytes): CONNACK; then, for the first SUBSCRIBE, a QoS 1 PUBLISH matching
    it followed by the SUBACK; then a PUBACK for every QoS 1 PUBLISH."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received: list[P.Packet] = []
        self.connections = 0
        self.bytes_dripped = 0
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> DripServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _drip(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        for b in data:
            writer.write(bytes([b]))
            await writer.drain()
            self.bytes_dripped += 1
            await asyncio.sleep(0.002)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                buf.extend(data)
                for raw in P.split(buf):
                    p = P.decode(raw)
                    self.received.append(p)
                    if p.type == P.CONNECT:
                        await self._drip(writer, P.connack())
                    elif p.type == P.SUBSCRIBE:
                        topic = p.filters[0][0]
                        await self._drip(writer, P.publish(topic, self.payload, qos=1, pkid=41)
                                         + P.suback(p.pkid, [q for _, q in p.filters]))
                    elif p.type == P.PUBLISH and p.qos == 1:
                        await self._drip(writer, P.puback(p.pkid))
                    elif p.type == P.PINGREQ:
                        await self._drip(writer, P.packet(P.PINGRESP, 0, b""))
                    elif p.type == P.DISCONNECT:
                        return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()


async def test_byte_at_a_time_delivery(caplog):
    payload = bytes(range(256)) * 2  # 512 bytes: a 2-byte remaining length, split across reads
    async with DripServer(payload) as srv:
        h = Harness(srv.port)
        async with h.client as c:
            sub = await asyncio.wait_for(c.subscribe("drip/t", qos=1), 15)
            assert sub.granted_qos == [1]
            m = await asyncio.wait_for(sub.__anext__(), 5)
            assert (m.topic, m.payload, m.qos) == ("drip/t", payload, 1)
            await until(lambda: [p.pkid for p in srv.received if p.type == P.PUBACK] == [41], 3,
                        "the PUBACK for the dripped PUBLISH")
            await asyncio.wait_for(c.publish("drip/out", b"x", qos=1), 5)  # its PUBACK is dripped too
            assert c.is_connected
            assert h.disconnects() == []
            assert srv.connections == 1
            assert srv.bytes_dripped == len(P.connack()) + len(P.publish("drip/t", payload, qos=1, pkid=41)) \
                + len(P.suback(1, [1])) + len(P.puback(1))
            assert protocol_warnings(caplog) == []


# --- 11. PUBLISH over the incoming size limit (AWS limits) -----------------------------------------


async def test_publish_larger_than_the_aws_limit(caplog):
    async with FakeBroker() as fb:
        # AWS limits: keep-alive must be 30..1200 s, reconnects are at least 1 s apart.
        h = Harness(fb.port, limits="aws", keep_alive=30)
        async with h.client as c:
            sub = await c.subscribe("big", qos=1)
            # At the limit (128 KiB payload) is accepted...
            fb.send(P.publish("big", b"a" * (128 * 1024), qos=1, pkid=1))
            m = await asyncio.wait_for(sub.__anext__(), 5)
            assert len(m.payload) == 128 * 1024
            # ... 200 KiB is not.
            before = fb.connections
            fb.send(P.publish("big", b"b" * (200 * 1024), qos=1, pkid=2))
            await expect_protocol_drop_then_recovery(
                fb, h, caplog, before, r"the broker sent a 20\d{4}-byte packet; the limit is 196623 bytes"
            )
            assert 2 not in [p.pkid for p in fb.of_type(P.PUBACK)], "the oversized PUBLISH is not acknowledged"
            assert sub.pending() == 0
            # The subscription survived the reconnect (re-subscribed on the new clean session).
            fb.send(P.publish("big", b"after", qos=1, pkid=3))
            m = await asyncio.wait_for(sub.__anext__(), 5)
            assert m.payload == b"after"
