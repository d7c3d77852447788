"""Self-checks for tests/support/packets.py, the MQTT codec of the tests and of bench/.

Byte vectors are written out by hand from the MQTT 3.1.1 specification, so the codec is
checked against something other than itself.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from support import packets as P


@pytest.mark.parametrize(
    ("n", "encoded"),
    [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16_383, b"\xff\x7f"), (268_435_455, b"\xff\xff\xff\x7f")],
)
def test_remaining_length(n: int, encoded: bytes) -> None:
    assert P.remaining_length(n) == encoded


def test_connect_bytes_and_decode() -> None:
    assert P.connect("cid", keep_alive=30) == b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x1e\x00\x03cid"
    raw = P.connect("c", clean_session=False, username="u", password=b"pw")
    assert raw == b"\x10\x14\x00\x04MQTT\x04\xc0\x00\x3c\x00\x01c\x00\x01u\x00\x02pw"
    p = P.decode(raw)
    assert (p.name, p.client_id, p.username, p.password, p.keep_alive, p.clean_session) == (
        "CONNECT", "c", "u", b"pw", 60, False,
    )


def test_fixed_packets() -> None:
    assert P.connack() == b"\x20\x02\x00\x00"
    assert P.connack(session_present=True, code=5) == b"\x20\x02\x01\x05"
    assert P.pingreq() == b"\xc0\x00"
    assert P.disconnect() == b"\xe0\x00"
    assert P.puback(9) == b"\x40\x02\x00\x09"


def test_subscribe_bytes_and_decode() -> None:
    raw = P.subscribe(7, "a/b", 1)
    assert raw == b"\x82\x08\x00\x07\x00\x03a/b\x01"
    p = P.decode(raw)
    assert (p.pkid, p.filters) == (7, [("a/b", 1)])


def test_packets_helper_round_trips() -> None:
    raw = P.publish("t", b"abc", qos=1, pkid=7)
    assert raw == b"\x32\x08\x00\x01t\x00\x07abc"
    p = P.decode(raw)
    assert (p.topic, p.payload, p.pkid, p.qos) == ("t", b"abc", 7, 1)
    assert P.publish(b"\xff", b"", qos=0) == b"\x30\x03\x00\x01\xff"  # bytes topics go as they are


def test_split_keeps_the_incomplete_tail() -> None:
    big = P.publish("t", bytes(200))  # a two-byte remaining length
    buffer = bytearray(P.pingreq() + big + big[:3])
    assert P.split(buffer) == [P.pingreq(), big]
    assert buffer == big[:3]


def test_recv_reads_one_packet_at_a_time() -> None:
    big = P.publish("t", bytes(200))
    a, b = socket.socketpair()
    with a, b:
        a.sendall(P.connack() + big)
        assert P.recv(b).raw == P.connack()
        assert P.recv(b).payload == bytes(200)
        a.close()
        with pytest.raises(ConnectionError):
            P.recv(b)


async def test_read_reads_one_packet_at_a_time() -> None:
    reader = asyncio.StreamReader()
    big = P.publish("t", bytes(200))
    reader.feed_data(big + P.pingreq())
    reader.feed_eof()
    assert (await P.read(reader)).raw == big
    assert (await P.read(reader)).name == "PINGREQ"
    with pytest.raises(asyncio.IncompleteReadError):
        await P.read(reader)
