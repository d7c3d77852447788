"""An asyncio TCP proxy that relays MQTT connections and injects network faults.

Used by reconnect / liveness tests: point the client at ``proxy.port`` (plain MQTT on
127.0.0.1) and the proxy relays every connection to the target broker, parsing the MQTT
stream in both directions into a packet log while forwarding the original bytes. Faults
(clean cut, RST, black hole, refusal, latency, throttling, packet-triggered cuts and
drops) are switched on and off from the test. Runs in the test's own event loop.

Directions are ``"c2b"`` (client to broker) and ``"b2c"`` (broker to client).

Semantics worth knowing:

* Bytes are forwarded unchanged, as they arrive; a streaming framer tracks packet
  boundaries so drops and cuts land exactly on packet edges (packets are decoded with
  ``packets.decode`` from a copy). If a stream stops looking like MQTT (a remaining
  length longer than 4 bytes) that direction falls back to raw relaying, unlogged.
* The packet log records every complete packet the proxy *received*, at its arrival time,
  including packets later swallowed by :meth:`FaultProxy.drop_next` (those are also listed
  in ``dropped``) and packets received just before a cut.
* :meth:`FaultProxy.blackhole` stalls: the proxy stops reading and forwarding, so nothing
  reaches the other side and no FIN/RST is sent. Bytes that arrive meanwhile stay unread
  (in the kernel) and are relayed if the black hole is lifted while the connection still
  exists, like TCP retransmission after a healed partition. To make a link die for good,
  :meth:`~FaultProxy.cut` or :meth:`~FaultProxy.reset` it before lifting the black hole.
* ``cut_after``/``drop_next`` counters are global (across connections) and counted from
  the moment they are armed; each call arms an independent one-shot rule.
* An EOF (FIN) from one side is relayed as a FIN (half-close); a reset or socket error on
  either side resets both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from . import packets as P

__all__ = ["C2B", "B2C", "FaultProxy", "LogEntry"]

C2B = "c2b"
B2C = "b2c"
_DIRECTIONS = (C2B, B2C)

#: (time.monotonic(), direction, packet)
LogEntry = tuple[float, str, P.Packet]

_READ_SIZE = 65536
_QUEUE_CHUNKS = 64
_CLOSE_TIMEOUT = 1.0
_EOF = object()


def _check_direction(direction: str) -> str:
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be 'c2b' or 'b2c', not {direction!r}")
    return direction


class _Framer:
    """Streaming MQTT framer: splits a byte stream into per-packet pieces.

    :meth:`feed` returns ``(piece, start_type, complete_raw)`` triples covering the chunk
    in order, where every piece belongs to exactly one packet, ``start_type`` is the packet
    type when the piece starts a new packet (known from its first byte) and
    ``complete_raw`` is the whole packet when the piece ends one.
    """

    def __init__(self) -> None:
        self.raw = bytearray()  # the current packet so far
        self.need: int | None = None  # bytes still missing once the header is complete
        self.opaque = False

    def feed(self, data: bytes) -> list[tuple[bytes, int | None, bytes | None]]:
        if self.opaque:
            return [(data, None, None)]
        out: list[tuple[bytes, int | None, bytes | None]] = []
        i, n = 0, len(data)
        while i < n:
            start = None if self.raw else data[i] >> 4
            j = i
            while self.need is None and j < n:
                self.raw.append(data[j])
                j += 1
                if len(self.raw) >= 2 and not self.raw[-1] & 0x80:
                    length, mult = 0, 1
                    for b in self.raw[1:]:
                        length += (b & 0x7F) * mult
                        mult *= 128
                    self.need = length
                elif len(self.raw) >= 5:  # a 5th length byte: not MQTT
                    self.opaque = True
                    self.raw.clear()
                    self.need = None
                    out.append((data[i:], start, None))
                    return out
            if self.need is not None:
                take = min(self.need, n - j)
                self.raw += data[j : j + take]
                self.need -= take
                j += take
            complete = None
            if self.need == 0:
                complete = bytes(self.raw)
                self.raw.clear()
                self.need = None
            out.append((data[i:j], start, complete))
            i = j
        return out


@dataclass
class _Rule:
    direction: str
    type: int
    remaining: int


@dataclass(eq=False)
class _Link:
    """One proxied client connection."""

    id: int
    client_reader: asyncio.StreamReader
    client_writer: asyncio.StreamWriter
    broker_reader: asyncio.StreamReader | None = None
    broker_writer: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    queues: dict[str, asyncio.Queue[object]] = field(default_factory=dict)
    framers: dict[str, _Framer] = field(default_factory=lambda: {d: _Framer() for d in _DIRECTIONS})
    dropping: dict[str, bool] = field(default_factory=lambda: {d: False for d in _DIRECTIONS})
    finished: bool = False  # a cut/reset/close has been initiated
    frozen: bool = False  # nothing more may be forwarded (a cut is being delivered)

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client_writer, self.broker_writer) if w is not None]


def _abort(writer: asyncio.StreamWriter) -> None:
    """Closes with an RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _close(writer: asyncio.StreamWriter) -> None:
    """Closes with a FIN after flushing anything already written."""
    if writer.is_closing():
        return
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
    writer.close()


async def _wait_closed(writer: asyncio.StreamWriter) -> None:
    """Waits for the transport to go away; aborts it if it cannot flush in time."""
    try:
        await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT)
    except asyncio.TimeoutError:
        writer.transport.abort()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT)
    except OSError:  # ConnectionResetError, BrokenPipeError, ...
        pass


class FaultProxy:
    """TCP proxy on 127.0.0.1 (ephemeral ``port``) relaying to ``target_host:target_port``.

    Attributes:

    ``port``
        The listening port (valid after :meth:`start`).
    ``connections``
        Client connections accepted so far (including refused ones).
    ``accept_times``
        ``time.monotonic()`` of every accepted connection, in order.
    ``refused``
        How many connections were closed by :meth:`refuse`.
    ``log``
        Packet log: ``(time.monotonic(), direction, Packet)`` for every complete packet
        received from either side.
    ``dropped``
        The entries of ``log`` that :meth:`drop_next` swallowed.
    """

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 0) -> None:
        if not target_port:
            raise ValueError("target_port is required")
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self.accept_times: list[float] = []
        self.refused = 0
        self.log: list[LogEntry] = []
        self.dropped: list[LogEntry] = []
        self._server: asyncio.base_events.Server | None = None
        self._links: set[_Link] = set()
        self._link_tasks: dict[_Link, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._flowing = asyncio.Event()  # cleared while black-holed
        self._flowing.set()
        self._blackholed = False
        self._refusing = False
        self._refuse_rst = False
        self._delay = 0.0
        self._throttle: float | None = None
        self._cut_rules: list[_Rule] = []
        self._drop_rules: list[_Rule] = []
        self._changed = asyncio.Event()
        self._errors: list[BaseException] = []
        self._closed = False
        self._close_done: asyncio.Event | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> FaultProxy:
        """Starts listening on 127.0.0.1 with an ephemeral port."""
        if self._closed:
            raise RuntimeError("FaultProxy is closed")
        if self._server is None:
            self._server = await asyncio.start_server(self._on_accept, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stops listening and closes every connection (FIN). Idempotent.

        Raises ``RuntimeError`` if a relay task failed with an unexpected (non-network)
        error, so proxy bugs do not go unnoticed.
        """
        if self._close_done is not None:
            await self._close_done.wait()
            return
        self._close_done = asyncio.Event()
        self._closed = True
        try:
            if self._server is not None:
                self._server.close()
            for link in list(self._links):
                self._finish(link, rst=False)
            if self._tasks:
                _, pending = await asyncio.wait(set(self._tasks), timeout=5.0)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)
            if self._server is not None:
                await self._server.wait_closed()
        finally:
            self._close_done.set()
        if self._errors:
            raise RuntimeError(f"FaultProxy relay error: {self._errors[0]!r}") from self._errors[0]

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def active(self) -> int:
        """Client connections currently open (accepted, relayed, not yet fully closed)."""
        return len(self._links)

    def log_attempt_times(self) -> list[float]:
        """A copy of ``accept_times`` (monotonic time of every connection attempt)."""
        return list(self.accept_times)

    def accept_intervals(self) -> list[float]:
        """Seconds between consecutive accepted connections (for backoff measurements)."""
        t = self.accept_times
        return [b - a for a, b in zip(t, t[1:])]

    def __repr__(self) -> str:
        return (
            f"<FaultProxy 127.0.0.1:{self.port} -> {self.target_host}:{self.target_port} "
            f"connections={self.connections} active={self.active} packets={len(self.log)}>"
        )

    # ---------------------------------------------------------------- packet log

    def packets(
        self, direction: str | None = None, type: int | None = None, *, since: float | None = None
    ) -> list[P.Packet]:
        """Logged packets, optionally filtered by direction, type and ``since`` (monotonic)."""
        if direction is not None:
            _check_direction(direction)
        return [
            p
            for t, d, p in self.log
            if (direction is None or d == direction)
            and (type is None or p.type == type)
            and (since is None or t >= since)
        ]

    async def wait_for_packet(
        self,
        direction: str | None,
        type: int | None,
        count: int = 1,
        timeout: float = 5,
        *,
        since: float | None = None,
    ) -> P.Packet:
        """Waits until at least ``count`` matching packets are logged; returns the count-th.

        Raises ``TimeoutError`` (``asyncio.TimeoutError``) after ``timeout`` seconds.
        """

        async def loop() -> P.Packet:
            while True:
                changed = self._changed
                found = self.packets(direction, type, since=since)
                if len(found) >= count:
                    return found[count - 1]
                await changed.wait()

        return await asyncio.wait_for(loop(), timeout)

    def _record(self, direction: str, raw: bytes) -> LogEntry | None:
        try:
            packet = P.decode(raw)
        except (IndexError, struct.error, UnicodeDecodeError, ValueError):
            return None
        entry = (time.monotonic(), direction, packet)
        self.log.append(entry)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return entry

    # -------------------------------------------------------------------- faults

    async def cut(self) -> None:
        """Closes every current connection cleanly (FIN to both client and broker)."""
        await self._finish_all(rst=False)

    async def reset(self) -> None:
        """Aborts every current connection with an RST to both client and broker."""
        await self._finish_all(rst=True)

    def blackhole(self, on: bool = True) -> None:
        """Stops (or resumes) all reading and forwarding, for current and new connections."""
        self._blackholed = on
        if on:
            self._flowing.clear()
        else:
            self._flowing.set()

    def refuse(self, on: bool = True, *, rst: bool = False) -> None:
        """While on, new connections are closed right after accept (FIN, or RST if ``rst``)."""
        self._refusing = on
        self._refuse_rst = rst

    def delay(self, seconds: float) -> None:
        """Adds ``seconds`` of latency to every forwarded chunk, both directions (0 clears)."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._delay = float(seconds)

    def throttle(self, bytes_per_second: float | None) -> None:
        """Limits forwarding to ``bytes_per_second`` per direction per connection (None clears)."""
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError("throttle must be > 0 or None")
        self._throttle = None if bytes_per_second is None else float(bytes_per_second)

    def cut_after(self, direction: str, packet_type: int, count: int = 1) -> None:
        """One-shot: once the ``count``-th such packet (from now) has been forwarded, cut that
        connection (FIN both sides). The packet is delivered; nothing after it is."""
        if count < 1:
            raise ValueError("count must be >= 1")
        self._cut_rules.append(_Rule(_check_direction(direction), packet_type, count))

    def drop_next(self, direction: str, packet_type: int, count: int = 1) -> None:
        """Swallows the next ``count`` such packets (from now); the connection stays up."""
        if count < 1:
            raise ValueError("count must be >= 1")
        self._drop_rules.append(_Rule(_check_direction(direction), packet_type, count))

    def clear_faults(self) -> None:
        """Turns off black hole, refusal, delay, throttle and disarms cut/drop rules."""
        self.blackhole(False)
        self.refuse(False)
        self._delay = 0.0
        self._throttle = None
        self._cut_rules.clear()
        self._drop_rules.clear()

    def _consume_cut(self, direction: str, ptype: int) -> bool:
        """Counts a forwarded packet against every matching cut rule; True if one fires."""
        fired = False
        for rule in list(self._cut_rules):
            if rule.direction == direction and rule.type == ptype:
                rule.remaining -= 1
                if rule.remaining == 0:
                    self._cut_rules.remove(rule)
                    fired = True
        return fired

    def _consume_drop(self, direction: str, ptype: int) -> bool:
        """True if this packet is to be swallowed (each matching rule swallows N packets)."""
        for rule in self._drop_rules:
            if rule.direction == direction and rule.type == ptype:
                rule.remaining -= 1
                if rule.remaining == 0:
                    self._drop_rules.remove(rule)
                return True
        return False

    async def _finish_all(self, *, rst: bool) -> None:
        links = list(self._links)
        for link in links:
            self._finish(link, rst=rst)
        tasks = [self._link_tasks[link] for link in links if link in self._link_tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    # ------------------------------------------------------------------- relaying

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._guard(coro), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        """Records unexpected errors instead of leaving them unretrieved."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - surfaced by close()
            self._errors.append(exc)

    def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain (non-coroutine) callback: nothing is scheduled that we do not own.
        self.connections += 1
        self.accept_times.append(time.monotonic())
        n = next(self._ids)
        if self._closed or self._refusing:
            if self._closed:
                _abort(writer)
            else:
                self.refused += 1
                if self._refuse_rst:
                    _abort(writer)
                else:
                    _close(writer)
            self._spawn(_wait_closed(writer), name=f"fault-proxy:{self.port}:refused{n}")
            return
        link = _Link(id=n, client_reader=reader, client_writer=writer)
        self._links.add(link)
        self._link_tasks[link] = self._spawn(self._run_link(link), name=f"fault-proxy:{self.port}:link{n}")

    async def _run_link(self, link: _Link) -> None:
        try:
            try:
                br, bw = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                self._finish(link, rst=False)  # target down: accept then close
                return
            link.broker_reader, link.broker_writer = br, bw
            if link.finished:  # cut while we were connecting
                _close(bw)
                return
            prefix = f"fault-proxy:{self.port}:link{link.id}"
            sources = {C2B: link.client_reader, B2C: br}
            dests = {C2B: bw, B2C: link.client_writer}
            for d in _DIRECTIONS:
                link.queues[d] = asyncio.Queue(_QUEUE_CHUNKS)
            for d in _DIRECTIONS:
                link.tasks.append(
                    asyncio.get_running_loop().create_task(self._pump(link, d, sources[d]), name=f"{prefix}:{d}:read")
                )
                link.tasks.append(
                    asyncio.get_running_loop().create_task(self._send(link, d, dests[d]), name=f"{prefix}:{d}:write")
                )
            results = await asyncio.gather(*link.tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    self._errors.append(result)
        finally:
            if not link.finished:
                self._finish(link, rst=False)
            for task in link.tasks:
                task.cancel()
            if link.tasks:
                await asyncio.gather(*link.tasks, return_exceptions=True)
            for w in link.writers():
                await _wait_closed(w)
            self._links.discard(link)
            self._link_tasks.pop(link, None)

    def _finish(self, link: _Link, *, rst: bool) -> None:
        """Closes both sides of a link (synchronously) and stops its relay tasks."""
        if link.finished:
            if rst:  # upgrade a clean close still flushing to a reset (no-op once closed)
                for w in link.writers():
                    _abort(w)
            return
        link.finished = True
        link.frozen = True
        for w in link.writers():
            _abort(w) if rst else _close(w)
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current:
                task.cancel()

    async def _pump(self, link: _Link, direction: str, reader: asyncio.StreamReader) -> None:
        """Reads one direction, logs packets, applies drop/cut rules, queues for sending."""
        queue = link.queues[direction]
        framer = link.framers[direction]
        try:
            while True:
                await self._flowing.wait()  # black hole: stop reading
                data = await reader.read(_READ_SIZE)
                if not data:
                    await queue.put(_EOF)
                    return
                await self._flowing.wait()  # black hole began while reading: hold the data
                if link.frozen:
                    return
                out = bytearray()
                cut = False
                for piece, start, complete in framer.feed(data):
                    if start is not None:
                        link.dropping[direction] = self._consume_drop(direction, start)
                    if not link.dropping[direction]:
                        out += piece
                    if complete is None:
                        continue
                    entry = self._record(direction, complete)
                    if link.dropping[direction]:
                        link.dropping[direction] = False
                        if entry is not None:
                            self.dropped.append(entry)
                    elif self._consume_cut(direction, complete[0] >> 4):
                        cut = True
                        break
                if out or cut:
                    await queue.put((time.monotonic() + self._delay, bytes(out), cut))
                if cut:
                    return  # nothing after the triggering packet is read or forwarded
        except OSError:
            self._finish(link, rst=True)

    async def _send(self, link: _Link, direction: str, writer: asyncio.StreamWriter) -> None:
        """Writes one direction's queued chunks after their delay, throttled."""
        queue = link.queues[direction]
        try:
            while True:
                item = await queue.get()
                if item is _EOF:
                    if not link.frozen and writer.can_write_eof() and not writer.is_closing():
                        writer.write_eof()  # relay the half-close
                    return
                assert isinstance(item, tuple)
                release, data, cut = item
                wait = release - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                if link.frozen:
                    return
                if cut:
                    link.frozen = True  # the other direction must not slip anything through
                await self._write(writer, data)
                if cut:
                    self._finish(link, rst=False)
                    return
        except OSError:
            self._finish(link, rst=True)

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if not data:
            return
        if self._throttle is None:
            writer.write(data)
            await writer.drain()
            return
        view = memoryview(data)
        while view:
            rate = self._throttle
            if rate is None:
                writer.write(bytes(view))
                await writer.drain()
                return
            step = max(1, int(rate / 20))
            part, view = view[:step], view[step:]
            writer.write(bytes(part))
            await writer.drain()
            await asyncio.sleep(len(part) / rate)
