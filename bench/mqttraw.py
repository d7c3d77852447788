"""Minimal MQTT 3.1.1 over asyncio, for the benchmark only.

This is the ``raw`` client of the benchmark (the ceiling of what pure Python + asyncio can
do: packets are pre-encoded, parsing reads fixed headers only) and the helper processes
(the counting subscriber of ``pub_qos0`` and the load publisher of ``recv_qos0_*``) are
built on it. It speaks just enough MQTT: CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH (QoS 0
and 1, both ways), PUBACK and DISCONNECT; over TCP, or TLS when given an ``ssl.SSLContext``.
No reconnect, no keep-alive pings (the keep-alive is 0 = disabled).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

HOST = "127.0.0.1"  # loopback only, always

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGRESP, DISCONNECT = 8, 9, 13, 14

DISCONNECT_PACKET = b"\xe0\x00"


# -- encoding -------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """The MQTT "remaining length" encoding of ``n``."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


def connect_packet(client_id: str, *, keep_alive: int = 0, clean_session: bool = True) -> bytes:
    """CONNECT (protocol level 4 = MQTT 3.1.1, no credentials, no will)."""
    flags = 0x02 if clean_session else 0x00
    body = _str("MQTT") + bytes([4, flags]) + keep_alive.to_bytes(2, "big") + _str(client_id)
    return bytes([CONNECT << 4]) + varint(len(body)) + body


def subscribe_packet(packet_id: int, topic_filter: str, qos: int) -> bytes:
    body = packet_id.to_bytes(2, "big") + _str(topic_filter) + bytes([qos])
    return bytes([(SUBSCRIBE << 4) | 0x02]) + varint(len(body)) + body


def publish_packet(topic: str, payload: bytes, *, qos: int = 0, packet_id: int = 0) -> bytes:
    """A complete PUBLISH packet."""
    pid = packet_id.to_bytes(2, "big") if qos else b""
    body = _str(topic) + pid + payload
    return bytes([(PUBLISH << 4) | (qos << 1)]) + varint(len(body)) + body


def publish_qos1_parts(topic: str, payload: bytes) -> tuple[bytes, bytes]:
    """``(head, payload)`` such that ``head + packet_id(2 bytes) + payload`` is a QoS 1
    PUBLISH: lets a sender pre-encode everything but the packet id."""
    body_len = 2 + len(topic.encode()) + 2 + len(payload)
    head = bytes([(PUBLISH << 4) | 0x02]) + varint(body_len) + _str(topic)
    return head, payload


PACKET_IDS: list[bytes] = [i.to_bytes(2, "big") for i in range(65536)]
"""Pre-encoded packet identifiers (index 0 is unused: MQTT ids are 1..65535)."""


# -- protocol -------------------------------------------------------------------------------

OnPublish = Callable[[bytearray, int, int, int], None]
"""``on_publish(buf, header_byte, start, end)``: one received PUBLISH, whose variable header
and payload are ``buf[start:end]``. Called synchronously from ``data_received``; the buffer
is only valid during the call."""


class RawProtocol(asyncio.Protocol):
    """Parses the incoming byte stream into packets by their fixed headers and dispatches
    them: CONNACK/SUBACK complete futures, PUBACKs are counted, PUBLISH goes to
    ``on_publish``. Writing is flow-controlled through ``wait_writable()``."""

    def __init__(self, on_publish: OnPublish | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.on_publish = on_publish
        self.connack: asyncio.Future[int] = loop.create_future()
        self.suback: asyncio.Future[bytes] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.pubacks = 0
        self.puback_target = 0
        self.puback_waiter: asyncio.Future[None] | None = None
        self._buf = bytearray()
        self._paused = False
        self._resume: asyncio.Future[None] | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        err = exc or ConnectionError("connection closed by the broker")
        for fut in (self.connack, self.suback, self.puback_waiter, self._resume):
            if fut is not None and not fut.done():
                fut.set_exception(err)
                fut.exception()  # no "never retrieved" noise for futures nobody awaits
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._resume is not None and not self._resume.done():
            self._resume.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        size = len(buf)
        pos = 0
        on_publish = self.on_publish
        while size - pos >= 2:
            header = buf[pos]
            # Remaining length: 1 byte for packets < 128 bytes, up to 4 otherwise.
            b = buf[pos + 1]
            if b < 128:
                start = pos + 2
                end = start + b
            else:
                length, mult, i = b & 127, 128, pos + 2
                while True:
                    if i >= size:
                        end = size + 1  # incomplete header
                        break
                    b = buf[i]
                    length += (b & 127) * mult
                    i += 1
                    if b < 128:
                        start = i
                        end = start + length
                        break
                    mult *= 128
            if end > size:
                break
            kind = header >> 4
            if kind == PUBLISH:
                if on_publish is not None:
                    on_publish(buf, header, start, end)
            elif kind == PUBACK:
                self.pubacks += 1
                if self.pubacks >= self.puback_target and self.puback_waiter is not None:
                    if not self.puback_waiter.done():
                        self.puback_waiter.set_result(None)
            elif kind == CONNACK:
                if not self.connack.done():
                    self.connack.set_result(buf[start + 1])
            elif kind == SUBACK:
                if not self.suback.done():
                    self.suback.set_result(bytes(buf[start + 2 : end]))
            pos = end
        if pos:
            del buf[:pos]

    # helpers

    async def wait_writable(self) -> None:
        """Returns once the transport accepts more data (its buffer is below the high-water
        mark)."""
        while self._paused:
            self._resume = self.loop.create_future()
            await self._resume

    async def wait_pubacks(self, target: int) -> None:
        """Waits until ``target`` PUBACKs have been received in total."""
        if self.pubacks >= target:
            return
        self.puback_target = target
        self.puback_waiter = self.loop.create_future()
        await self.puback_waiter

    async def drain(self) -> None:
        """Waits until everything written has been handed to the kernel."""
        assert self.transport is not None
        while self.transport.get_write_buffer_size() and not self.transport.is_closing():
            await asyncio.sleep(0.001)

    async def disconnect(self) -> None:
        """Sends DISCONNECT after everything queued, then closes."""
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(DISCONNECT_PACKET)
        await self.drain()
        self.transport.close()


async def connect(
    port: int,
    client_id: str,
    *,
    on_publish: OnPublish | None = None,
    timeout: float = 10.0,
    ssl: Any = None,
    write_buffer_high: int = 4 * 1024 * 1024,
) -> RawProtocol:
    """Opens a TCP connection to the broker on 127.0.0.1 (TLS when ``ssl`` is an
    ``ssl.SSLContext``) and completes the MQTT handshake."""
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(lambda: RawProtocol(on_publish), HOST, port, ssl=ssl), timeout
    )
    assert proto.transport is not None
    # Large write buffer so bursts are queued in user space rather than pausing every write.
    proto.transport.set_write_buffer_limits(high=write_buffer_high)
    proto.transport.write(connect_packet(client_id))
    code = await asyncio.wait_for(proto.connack, timeout)
    if code != 0:
        raise ConnectionError(f"CONNACK refused with return code {code}")
    return proto


async def subscribe(proto: RawProtocol, topic_filter: str, qos: int, timeout: float = 10.0) -> None:
    assert proto.transport is not None
    proto.transport.write(subscribe_packet(1, topic_filter, qos))
    granted = await asyncio.wait_for(proto.suback, timeout)
    if not granted or granted[0] == 0x80:
        raise ConnectionError(f"SUBSCRIBE {topic_filter!r} refused: {granted!r}")
