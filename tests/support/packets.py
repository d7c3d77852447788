"""Minimal MQTT 3.1.1 packet encoding/decoding, independent of the client under test.

The one MQTT codec of the test suite and of the benchmark (``bench/mqttraw.py`` imports it):

- encoders return a whole packet as ``bytes``: :func:`connect`, :func:`connack`,
  :func:`publish`, :func:`puback`, :func:`subscribe`, :func:`suback`, :func:`unsuback`,
  :func:`pingreq`, :func:`disconnect`; :func:`packet` builds any other (or a malformed) one
  from type, flags and body;
- :func:`decode` turns one whole packet into a :class:`Packet`; :func:`split` takes the
  complete packets off the front of a buffer; :func:`recv` (blocking socket) and
  :func:`read` (asyncio stream) read exactly one packet.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 10, 11, 12, 13, 14

NAMES = {
    1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
    7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
    12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT",
}


def remaining_length(n: int) -> bytes:
    """Encodes the MQTT variable-length 'remaining length'."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    """A whole packet from its type, flags and body."""
    return bytes([(ptype << 4) | flags]) + remaining_length(len(body)) + body


def string(s: str | bytes) -> bytes:
    """A length-prefixed MQTT string (``bytes`` are taken as they are, even invalid UTF-8)."""
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def connect(
    client_id: str,
    *,
    keep_alive: int = 60,
    clean_session: bool = True,
    username: str | None = None,
    password: str | bytes | None = None,
) -> bytes:
    """CONNECT, protocol level 4 (MQTT 3.1.1), no will."""
    flags = (0x02 if clean_session else 0) | (0x80 if username is not None else 0)
    flags |= 0x40 if password is not None else 0
    body = string("MQTT") + bytes([4, flags]) + struct.pack("!H", keep_alive) + string(client_id)
    if username is not None:
        body += string(username)
    if password is not None:
        body += string(password)
    return packet(CONNECT, 0, body)


def subscribe(pkid: int, topic_filter: str, qos: int = 0) -> bytes:
    """SUBSCRIBE to one topic filter."""
    return packet(SUBSCRIBE, 2, struct.pack("!H", pkid) + string(topic_filter) + bytes([qos]))


def pingreq() -> bytes:
    return packet(PINGREQ, 0, b"")


def disconnect() -> bytes:
    return packet(DISCONNECT, 0, b"")


def connack(session_present: bool = False, code: int = 0) -> bytes:
    return packet(CONNACK, 0, bytes([1 if session_present else 0, code]))


def puback(pkid: int) -> bytes:
    return packet(PUBACK, 0, struct.pack("!H", pkid))


def suback(pkid: int, codes: list[int]) -> bytes:
    return packet(SUBACK, 0, struct.pack("!H", pkid) + bytes(codes))


def unsuback(pkid: int) -> bytes:
    return packet(UNSUBACK, 0, struct.pack("!H", pkid))


def publish(
    topic: str | bytes, payload: bytes, qos: int = 0, pkid: int = 0, retain: bool = False, dup: bool = False
) -> bytes:
    """PUBLISH (``pkid`` only for QoS 1 and 2; a ``bytes`` topic is sent as it is)."""
    flags = (8 if dup else 0) | (qos << 1) | (1 if retain else 0)
    body = string(topic) + (struct.pack("!H", pkid) if qos else b"") + payload
    return packet(PUBLISH, flags, body)


@dataclass
class Packet:
    """A decoded packet (only the fields the tests look at)."""

    type: int
    flags: int
    body: bytes
    raw: bytes
    pkid: int = 0
    topic: str = ""
    payload: bytes = b""
    qos: int = 0
    dup: bool = False
    filters: list[tuple[str, int]] = field(default_factory=list)
    client_id: str = ""
    username: str | None = None
    password: bytes | None = None
    clean_session: bool = True
    keep_alive: int = 0

    @property
    def name(self) -> str:
        return NAMES.get(self.type, f"type{self.type}")


def _read_str(body: bytes, i: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from("!H", body, i)
    return body[i + 2 : i + 2 + n], i + 2 + n


def decode(raw: bytes) -> Packet:
    """Decodes one complete packet."""
    first = raw[0]
    i, mult, length = 1, 1, 0
    while True:
        b = raw[i]
        length += (b & 0x7F) * mult
        mult *= 128
        i += 1
        if not b & 0x80:
            break
    body = raw[i : i + length]
    p = Packet(type=first >> 4, flags=first & 0x0F, body=body, raw=raw)
    if p.type == PUBLISH:
        p.qos = (p.flags >> 1) & 3
        p.dup = bool(p.flags & 8)
        topic, j = _read_str(body, 0)
        p.topic = topic.decode()
        if p.qos:
            (p.pkid,) = struct.unpack_from("!H", body, j)
            j += 2
        p.payload = body[j:]
    elif p.type in (PUBACK, UNSUBACK):
        (p.pkid,) = struct.unpack_from("!H", body, 0)
    elif p.type == SUBSCRIBE:
        (p.pkid,) = struct.unpack_from("!H", body, 0)
        j = 2
        while j < len(body):
            f, j = _read_str(body, j)
            p.filters.append((f.decode(), body[j]))
            j += 1
    elif p.type == UNSUBSCRIBE:
        (p.pkid,) = struct.unpack_from("!H", body, 0)
        j = 2
        while j < len(body):
            f, j = _read_str(body, j)
            p.filters.append((f.decode(), 0))
    elif p.type == CONNECT:
        _, j = _read_str(body, 0)  # protocol name
        j += 1  # level
        flags = body[j]
        j += 1
        (p.keep_alive,) = struct.unpack_from("!H", body, j)
        j += 2
        p.clean_session = bool(flags & 2)
        cid, j = _read_str(body, j)
        p.client_id = cid.decode()
        if flags & 4:  # will
            _, j = _read_str(body, j)
            _, j = _read_str(body, j)
        if flags & 0x80:
            u, j = _read_str(body, j)
            p.username = u.decode()
        if flags & 0x40:
            p.password, j = _read_str(body, j)
    return p


def split(buffer: bytearray) -> list[bytes]:
    """Takes every complete packet off the front of ``buffer``."""
    out: list[bytes] = []
    while len(buffer) >= 2:
        i, mult, length = 1, 1, 0
        while True:
            if i >= len(buffer):
                return out
            b = buffer[i]
            length += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if not b & 0x80:
                break
        if len(buffer) < i + length:
            return out
        out.append(bytes(buffer[: i + length]))
        del buffer[: i + length]
    return out


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return data


def recv(sock: socket.socket) -> Packet:
    """Reads exactly one packet from a blocking socket (``ConnectionError`` at EOF)."""
    head = bytearray(_recv_exact(sock, 2))
    while head[-1] & 0x80:
        head += _recv_exact(sock, 1)
    return decode(bytes(head) + _recv_exact(sock, _length(head)))


async def read(reader: asyncio.StreamReader) -> Packet:
    """Reads exactly one packet from a stream (``IncompleteReadError`` at EOF)."""
    head = bytearray(await reader.readexactly(2))
    while head[-1] & 0x80:
        head += await reader.readexactly(1)
    return decode(bytes(head) + await reader.readexactly(_length(head)))


def _length(head: bytes | bytearray) -> int:
    """The remaining length of a fixed header (first byte, then the length bytes)."""
    length, mult = 0, 1
    for b in head[1:]:
        length += (b & 0x7F) * mult
        mult *= 128
    return length
