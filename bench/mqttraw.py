"""Minimal MQTT 3.1.1 over asyncio, for the benchmark only.

This is the ``raw`` client of the benchmark (the ceiling of what pure Python + asyncio can
do: packets are pre-encoded, parsing reads fixed headers only) and the helper processes
(the counting subscriber of ``pub_qos0`` and the load publisher of ``recv_qos0_*``) are
built on it. It speaks just enough MQTT: CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH (QoS 0
and 1, both ways), PUBACK and DISCONNECT; over TCP, or TLS when given an ``ssl.SSLContext``.
No reconnect, no keep-alive pings (the keep-alive is 0 = disabled).

Packets are encoded by the test suite's codec, ``tests/support/packets.py`` (re-exported
here as ``mqttraw.packets``): importing this module puts ``tests/`` on ``sys.path`` so that
``support.packets`` imports as it does under pytest. Only the receive path is parsed here,
inline in ``RawProtocol.data_received``, because it is the measured hot loop.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

TESTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

from support import packets  # noqa: E402  (needs TESTS_DIR on sys.path)
from support.packets import CONNACK, PUBACK, PUBLISH, SUBACK  # noqa: E402

HOST = "127.0.0.1"  # loopback only, always

DISCONNECT_PACKET = packets.disconnect()


# -- pre-encoding ---------------------------------------------------------------------------


def publish_qos1_parts(topic: str, payload: bytes) -> tuple[bytes, bytes]:
    """``(head, payload)`` such that ``head + packet_id(2 bytes) + payload`` is a QoS 1
    PUBLISH: lets a sender pre-encode everything but the packet id."""
    whole = packets.publish(topic, payload, qos=1, pkid=0)
    return whole[: len(whole) - 2 - len(payload)], payload


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
    factory: Callable[[OnPublish | None], RawProtocol] = RawProtocol,
    keep_alive: int = 0,
) -> RawProtocol:
    """Opens a TCP connection to the broker on 127.0.0.1 (TLS when ``ssl`` is an
    ``ssl.SSLContext``) and completes the MQTT handshake."""
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(lambda: factory(on_publish), HOST, port, ssl=ssl), timeout
    )
    assert proto.transport is not None
    # Large write buffer so bursts are queued in user space rather than pausing every write.
    proto.transport.set_write_buffer_limits(high=write_buffer_high)
    proto.transport.write(packets.connect(client_id, keep_alive=keep_alive))
    code = await asyncio.wait_for(proto.connack, timeout)
    if code != 0:
        raise ConnectionError(f"CONNACK refused with return code {code}")
    return proto


async def subscribe(proto: RawProtocol, topic_filter: str, qos: int, timeout: float = 10.0) -> None:
    assert proto.transport is not None
    proto.transport.write(packets.subscribe(1, topic_filter, qos))
    granted = await asyncio.wait_for(proto.suback, timeout)
    if not granted or granted[0] == 0x80:
        raise ConnectionError(f"SUBSCRIBE {topic_filter!r} refused: {granted!r}")
