"""A scripted MQTT broker for byte-level cases a real broker cannot produce: withheld or
shuffled PUBACKs, chosen CONNACK codes, SUBACK failures. Loopback only, ephemeral port."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from . import packets as P


class FakeBroker:
    """Accepts connections on 127.0.0.1 and answers per its settings.

    - ``connack_code`` / ``session_present``: the CONNACK it sends.
    - ``hold_pubacks``: QoS 1 PUBLISHes are recorded but not acknowledged until
      :meth:`release` is called.
    - ``suback_codes``: a function ``filters -> codes`` (default: grant the requested QoS).
    Every packet received is appended to ``received`` (decoded).
    """

    def __init__(self) -> None:
        self.connack_code = 0
        self.session_present = False
        self.hold_pubacks = False
        self.suback_codes: Callable[[list[tuple[str, int]]], list[int]] = lambda fs: [q for _, q in fs]
        self.received: list[P.Packet] = []
        self.held: list[int] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._changed = asyncio.Event()

    async def start(self) -> FakeBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> FakeBroker:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def of_type(self, ptype: int) -> list[P.Packet]:
        return [p for p in self.received if p.type == ptype]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Waits until ``predicate()`` holds (re-checked on every received packet)."""
        async def loop() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(loop(), timeout)

    def send(self, data: bytes) -> None:
        """Sends raw bytes to every connected client."""
        for w in self._writers:
            w.write(data)

    def release(self, pkid: int) -> None:
        """Sends the PUBACK for a held packet id."""
        self.held.remove(pkid)
        self.send(P.puback(pkid))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
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
                    self._answer(p, writer)
                self._changed.set()
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            if writer in self._writers:
                self._writers.remove(writer)
            writer.close()

    def _answer(self, p: P.Packet, writer: asyncio.StreamWriter) -> None:
        if p.type == P.CONNECT:
            writer.write(P.connack(self.session_present, self.connack_code))
            if self.connack_code:
                writer.close()
        elif p.type == P.PUBLISH and p.qos == 1:
            if self.hold_pubacks:
                self.held.append(p.pkid)
            else:
                writer.write(P.puback(p.pkid))
        elif p.type == P.SUBSCRIBE:
            writer.write(P.suback(p.pkid, self.suback_codes(p.filters)))
        elif p.type == P.UNSUBSCRIBE:
            writer.write(P.unsuback(p.pkid))
        elif p.type == P.PINGREQ:
            writer.write(P.packet(P.PINGRESP, 0, b""))
        elif p.type == P.DISCONNECT:
            writer.close()
