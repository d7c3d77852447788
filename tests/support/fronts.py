"""Recording "fronts" that stand in for the AWS IoT endpoint in front of mosquitto.

Both fronts are asyncio servers on 127.0.0.1 (ephemeral port) that run in the test's
own event loop, relay the client's MQTT bytes to a plain MQTT port (normally the session
mosquitto, ``broker.port``) and record what the client did:

:class:`TlsFront`
    A TLS terminator (Python :mod:`ssl` driven through ``MemoryBIO``/``SSLObject``).
    The raw ClientHello is read *before* the handshake and parsed with
    :func:`support.tls_server.parse_client_hello`, so the offered SNI/ALPN are recorded
    exactly as sent. ``require_alpn`` refuses the handshake (fatal TLS alert
    ``no_application_protocol``) unless the client offered that protocol.

:class:`WsFront`
    An MQTT-over-WebSocket endpoint (``websockets.asyncio.server``) at ``/mqtt`` with
    subprotocol ``mqtt``, plain (ws) or TLS (wss). Authenticates the upgrade either with
    an independent SigV4 presigned-URL check (:func:`verify_presigned`, built on
    botocore) or with a test-supplied custom-authorizer callable, and relays binary
    frames to the broker and broker bytes back as binary frames.

Common API (both fronts)::

    async with TlsFront(pki.server_cert, pki.server_key, broker.port) as front:
        ...                                   # point the client at front.port
        [rec] = await front.wait_for_connections(1)
        assert rec.mqtt_connect.username == "user"
        await front.drop_all()                # the client must reconnect

* ``start()`` / ``close()`` (idempotent; closes every connection and task) and
  ``async with``. ``close()`` raises ``RuntimeError`` if a relay hit an unexpected
  (non-network) error, so a broken front cannot go unnoticed.
* ``port``, ``host`` ("127.0.0.1"), ``connections`` (records in arrival order,
  including refused ones), ``active`` (connections currently relaying).
* ``wait_for_connections(n, timeout=5)`` waits until ``n`` connections arrived *and*
  each of the first ``n`` finished its handshake phase (TLS handshake done/failed,
  WebSocket upgrade answered), then returns those records. Raises ``TimeoutError``.
* ``drop_all(abort=False)`` closes every current client connection (TLS: close_notify +
  FIN; WS: close frame 1001) and its broker connection, and waits until they are gone.
  ``abort=True`` aborts the transports instead (no close_notify / close frame).
* Every record has ``mqtt_connect`` (the first CONNECT the client sent, a
  :class:`support.packets.Packet` with ``username``/``password``/``client_id``),
  ``packets`` (every complete client-to-broker packet), ``await rec.wait_connect()`` and
  ``await rec.wait_closed()``. Times are ``time.monotonic()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import hmac
import http
import inspect
import itertools
import os
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple, Union
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from . import packets as P
from .compat import timeout as _timeout
from .tls_server import parse_client_hello

__all__ = [
    "CustomAuthAttempt",
    "FrontConnection",
    "PresignCheck",
    "SigV4Attempt",
    "TlsConnection",
    "TlsFront",
    "WsConnection",
    "WsFront",
    "check_presigned",
    "presign_url",
    "verify_presigned",
]

HOST = "127.0.0.1"
StrPath = Union[str, os.PathLike[str]]  # Union: evaluated on 3.9 too

_READ_SIZE = 65536
_HANDSHAKE_TIMEOUT = 10.0
_CLOSE_TIMEOUT = 2.0
_TASK_TIMEOUT = 5.0
#: Fatal TLS alert "no_application_protocol" (RFC 7301), as a plaintext record.
_ALERT_NO_APPLICATION_PROTOCOL = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 120])


# --------------------------------------------------------------------------- records


@dataclass(eq=False)
class FrontConnection:
    """What the front observed on one client connection (fields fill in progressively)."""

    id: int
    #: (host, port) of the client.
    peer: tuple[str, int] | None
    #: ``time.monotonic()`` when the connection arrived.
    started: float = field(default_factory=time.monotonic)
    #: True once the TLS handshake / WebSocket upgrade succeeded.
    handshake_ok: bool = False
    #: Why the handshake/upgrade failed (None if it did not fail).
    handshake_error: str | None = None
    #: The first MQTT CONNECT the client sent (decoded), or None.
    mqtt_connect: P.Packet | None = None
    #: Every complete MQTT packet the client sent (client -> broker), in order.
    packets: list[P.Packet] = field(default_factory=list)
    #: Application bytes relayed client -> broker and broker -> client.
    c2b_bytes: int = 0
    b2c_bytes: int = 0
    #: True once the connection is completely closed.
    closed: bool = False
    #: ``time.monotonic()`` when it closed.
    ended: float | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    connect_seen: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    closed_event: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _buffer: bytearray = field(default_factory=bytearray, repr=False)
    _opaque: bool = field(default=False, repr=False)

    def _feed(self, data: bytes) -> None:
        """Reassembles the client's byte stream into MQTT packets (for the record only)."""
        self.c2b_bytes += len(data)
        if self._opaque:
            return
        self._buffer += data
        try:
            raws = P.split(self._buffer)
            for raw in raws:
                pkt = P.decode(raw)
                self.packets.append(pkt)
                if pkt.type == P.CONNECT and self.mqtt_connect is None:
                    self.mqtt_connect = pkt
                    self.connect_seen.set()
        except (IndexError, struct.error, UnicodeDecodeError, ValueError):
            self._opaque = True  # not MQTT: keep relaying, stop parsing
            self._buffer.clear()
        if len(self._buffer) > 16 * 1024 * 1024:
            self._opaque = True
            self._buffer.clear()

    def _mark_closed(self) -> None:
        if not self.closed:
            self.closed = True
            self.ended = time.monotonic()
        self.settled.set()
        self.closed_event.set()

    async def wait_connect(self, timeout: float = 5.0) -> P.Packet:
        """Waits for the client's first CONNECT on this connection and returns it."""
        try:
            async with _timeout(timeout):
                await self.connect_seen.wait()
        except TimeoutError:
            raise TimeoutError(f"no MQTT CONNECT on connection {self.id} within {timeout}s") from None
        assert self.mqtt_connect is not None
        return self.mqtt_connect

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Waits until the connection is completely closed."""
        try:
            async with _timeout(timeout):
                await self.closed_event.wait()
        except TimeoutError:
            raise TimeoutError(f"connection {self.id} still open after {timeout}s") from None


@dataclass(eq=False)
class TlsConnection(FrontConnection):
    """A :class:`TlsFront` connection."""

    #: SNI as seen by the server's ``sni_callback`` (None: no SNI).
    sni: str | None = None
    #: SNI parsed from the raw ClientHello.
    offered_sni: str | None = None
    #: ALPN protocols offered in the raw ClientHello ([] when no ALPN extension).
    offered_alpn: list[str] = field(default_factory=list)
    #: ALPN protocol the server selected (None: none).
    selected_alpn: str | None = None
    #: "TLSv1.3", ... after a successful handshake.
    tls_version: str | None = None
    #: Verified client certificate (``getpeercert()`` dict / DER), if one was presented.
    client_cert: dict[str, Any] | None = None
    client_cert_der: bytes | None = None


class SigV4Attempt(NamedTuple):
    """One SigV4-authenticated upgrade attempt on a :class:`WsFront`."""

    time: float
    akid: str | None
    x_amz_date: str | None
    #: "ok", "bad-signature", "unknown-key", "expired", "revoked" or "malformed".
    verdict: str
    token: str | None


class CustomAuthAttempt(NamedTuple):
    """One custom-authorizer upgrade attempt on a :class:`WsFront`."""

    time: float
    #: Request headers, names lower-cased (repeated headers joined with ", ").
    headers: dict[str, str]
    #: Decoded query parameters (last value wins for repeated names).
    query: dict[str, str]
    accepted: bool


@dataclass(eq=False)
class WsConnection(FrontConnection):
    """A :class:`WsFront` upgrade request (accepted or not)."""

    #: Request target as sent ("/mqtt?X-Amz-...").
    target: str = ""
    path: str = ""
    #: Raw query string as sent (not decoded).
    raw_query: str = ""
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    #: SNI of the TLS connection (wss only).
    sni: str | None = None
    #: HTTP status answered (101 on success).
    status: int | None = None
    #: Subprotocol answered (``mqtt``) on success.
    subprotocol: str | None = None
    #: The auth attempt of this request (None when the front has no auth).
    attempt: SigV4Attempt | CustomAuthAttempt | None = None
    #: SigV4: reason for a non-"ok" verdict.
    detail: str | None = None
    c2b_frames: int = 0
    b2c_frames: int = 0
    text_frames: int = 0


# ---------------------------------------------------------------------- shared base


def _network_error(exc: BaseException) -> bool:
    return isinstance(exc, (OSError, EOFError, asyncio.IncompleteReadError))


def _close_writer(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None and not writer.is_closing():
        writer.close()


async def _wait_writer_closed(writer: asyncio.StreamWriter | None) -> None:
    if writer is None:
        return
    _close_writer(writer)
    try:
        await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT)
    except (TimeoutError, asyncio.TimeoutError):
        writer.transport.abort()
        with contextlib.suppress(OSError, TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT)
    except OSError:
        pass


class _FrontBase:
    host: str = HOST

    def __init__(self) -> None:
        self.port = 0
        self.connections: list[Any] = []
        self._ids = itertools.count(1)
        self._arrived = asyncio.Event()
        self._errors: list[BaseException] = []
        self._closed = False
        self._close_done: asyncio.Event | None = None

    def _note_error(self, exc: BaseException) -> None:
        self._errors.append(exc)

    def _new_record(self, record: FrontConnection) -> None:
        self.connections.append(record)
        self._arrived.set()

    async def wait_for_connections(self, n: int = 1, timeout: float = 5.0) -> list[Any]:
        """Waits for ``n`` connections whose handshake phase is over; returns the first ``n``."""
        try:
            async with _timeout(timeout):
                while len(self.connections) < n:
                    self._arrived.clear()
                    await self._arrived.wait()
                records = list(self.connections[:n])
                for record in records:
                    await record.settled.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{type(self).__name__}: {len(self.connections)} of {n} connections "
                f"(handshake finished) within {timeout}s"
            ) from None
        return records

    def _raise_errors(self) -> None:
        if self._errors:
            raise RuntimeError(f"{type(self).__name__} relay error: {self._errors[0]!r}") from self._errors[0]

    async def start(self) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Any:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


# ------------------------------------------------------------------------ TlsFront


@dataclass(eq=False)
class _TlsLink:
    record: TlsConnection
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    incoming: ssl.MemoryBIO = field(default_factory=ssl.MemoryBIO)
    outgoing: ssl.MemoryBIO = field(default_factory=ssl.MemoryBIO)
    sslobj: ssl.SSLObject | None = None
    broker_writer: asyncio.StreamWriter | None = None
    task: asyncio.Task[None] | None = None
    abort: bool = False


async def _read_client_hello(reader: asyncio.StreamReader) -> bytes:
    """Reads the TLS records carrying the whole ClientHello (or the first 5 bytes if not TLS)."""
    data = bytearray()
    payload = bytearray()
    while True:
        header = await reader.readexactly(5)
        data += header
        if header[0] != 0x16:  # not a handshake record: not TLS
            return bytes(data)
        body = await reader.readexactly(struct.unpack_from("!H", header, 3)[0])
        data += body
        payload += body
        if len(payload) >= 4 and len(payload) >= 4 + int.from_bytes(payload[1:4], "big"):
            return bytes(data)
        if len(data) > 256 * 1024:
            return bytes(data)


class TlsFront(_FrontBase):
    """TLS endpoint on 127.0.0.1 relaying the decrypted MQTT stream to ``target_port``.

    :param cert: server certificate chain (PEM path).
    :param key: server private key (PEM path).
    :param target_port: plain MQTT port on 127.0.0.1 (e.g. ``broker.port``).
    :param alpn_protocols: ALPN protocols the server selects from (server preference
        order); empty/None disables ALPN on the server.
    :param require_alpn: refuse the handshake (fatal alert ``no_application_protocol``,
        then close) unless the client offered this protocol.
    :param ca: CA used to verify client certificates (CERT_OPTIONAL unless
        ``require_client_cert``).
    :param require_client_cert: demand a verified client certificate (needs ``ca``).

    ``connections`` holds :class:`TlsConnection` records.
    """

    def __init__(
        self,
        cert: StrPath,
        key: StrPath,
        target_port: int,
        *,
        alpn_protocols: Iterable[str] | None = ("x-amzn-mqtt-ca", "mqtt"),
        require_alpn: str | None = None,
        ca: StrPath | None = None,
        require_client_cert: bool = False,
        target_host: str = HOST,
    ) -> None:
        super().__init__()
        if not target_port:
            raise ValueError("target_port is required")
        self.target_host = target_host
        self.target_port = target_port
        self.require_alpn = require_alpn
        self.alpn_protocols = list(alpn_protocols or ())
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        if ca is not None:
            ctx.load_verify_locations(cafile=str(ca))
            ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        elif require_client_cert:
            raise ValueError("require_client_cert needs a ca")
        if self.alpn_protocols:
            ctx.set_alpn_protocols(self.alpn_protocols)
        ctx.sni_callback = self._sni_callback
        self.ssl_context = ctx
        self._server: asyncio.Server | None = None
        self._links: set[_TlsLink] = set()
        self._by_sslobj: dict[int, TlsConnection] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<TlsFront {HOST}:{self.port} -> {self.target_host}:{self.target_port} connections={len(self.connections)}>"

    @property
    def active(self) -> int:
        """Connections currently open."""
        return len(self._links)

    async def start(self) -> TlsFront:
        """Starts listening on 127.0.0.1 (ephemeral port)."""
        if self._closed:
            raise RuntimeError("TlsFront is closed")
        if self._server is None:
            self._server = await asyncio.start_server(self._on_accept, HOST, 0)
            self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stops listening and closes every connection. Idempotent."""
        if self._close_done is not None:
            await self._close_done.wait()
            self._raise_errors()
            return
        self._close_done = asyncio.Event()
        self._closed = True
        try:
            if self._server is not None:
                self._server.close()
            for link in list(self._links):
                if link.task is not None:
                    link.task.cancel()
            await self._wait_tasks(set(self._tasks))
            if self._server is not None:
                await self._server.wait_closed()
        finally:
            self._close_done.set()
        self._raise_errors()

    async def drop_all(self, abort: bool = False) -> int:
        """Closes every current client connection; returns how many were dropped."""
        links = list(self._links)
        for link in links:
            link.abort = abort
            if link.task is not None:
                link.task.cancel()
        await self._wait_tasks({link.task for link in links if link.task is not None})
        return len(links)

    async def _wait_tasks(self, tasks: set[asyncio.Task[None]]) -> None:
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=_TASK_TIMEOUT)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=_TASK_TIMEOUT)

    def _sni_callback(self, sslobj: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
        record = self._by_sslobj.get(id(sslobj))
        if record is not None:
            record.sni = server_name

    def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        record = TlsConnection(id=next(self._ids), peer=tuple(peer[:2]) if peer else None)
        self._new_record(record)
        link = _TlsLink(record=record, reader=reader, writer=writer)
        if self._closed:
            writer.transport.abort()
            record.handshake_error = "front closed"
            record._mark_closed()
            return
        self._links.add(link)
        task = asyncio.get_running_loop().create_task(self._run(link), name=f"tls-front:{self.port}:{record.id}")
        link.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _flush(self, link: _TlsLink) -> None:
        data = link.outgoing.read()
        if data and not link.writer.is_closing():
            link.writer.write(data)

    async def _handshake(self, link: _TlsLink) -> bool:
        record = link.record
        try:
            async with _timeout(_HANDSHAKE_TIMEOUT):
                hello = await _read_client_hello(link.reader)
                try:
                    record.offered_sni, offered = parse_client_hello(hello)
                    record.offered_alpn = list(offered or [])
                except (ValueError, IndexError, struct.error) as exc:
                    record.handshake_error = f"not a TLS ClientHello: {exc}"
                    return False
                if self.require_alpn is not None and self.require_alpn not in record.offered_alpn:
                    record.handshake_error = (
                        f"client did not offer ALPN {self.require_alpn!r} (offered {record.offered_alpn})"
                    )
                    link.writer.write(_ALERT_NO_APPLICATION_PROTOCOL)
                    return False
                sslobj = self.ssl_context.wrap_bio(link.incoming, link.outgoing, server_side=True)
                link.sslobj = sslobj
                self._by_sslobj[id(sslobj)] = record
                link.incoming.write(hello)
                while True:
                    try:
                        sslobj.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        self._flush(link)
                        await link.writer.drain()
                        data = await link.reader.read(_READ_SIZE)
                        if not data:
                            record.handshake_error = "client closed the connection during the handshake"
                            return False
                        link.incoming.write(data)
                self._flush(link)
        except ssl.SSLError as exc:
            self._flush(link)  # the alert, if any
            record.handshake_error = f"{type(exc).__name__}: {exc}"
            return False
        except asyncio.IncompleteReadError:
            record.handshake_error = "client closed the connection before the ClientHello"
            return False
        except TimeoutError:
            record.handshake_error = "handshake timed out"
            return False
        except OSError as exc:
            record.handshake_error = f"{type(exc).__name__}: {exc}"
            return False
        finally:
            if link.sslobj is not None:
                self._by_sslobj.pop(id(link.sslobj), None)
        record.handshake_ok = True
        record.selected_alpn = sslobj.selected_alpn_protocol()
        record.tls_version = sslobj.version()
        cert = sslobj.getpeercert()
        record.client_cert = cert or None
        record.client_cert_der = sslobj.getpeercert(binary_form=True)
        return True

    async def _run(self, link: _TlsLink) -> None:
        record = link.record
        relays: list[asyncio.Task[None]] = []
        try:
            try:
                ok = await self._handshake(link)
            finally:
                record.settled.set()
            if not ok:
                return
            try:
                br, bw = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                return  # target down: close the client
            link.broker_writer = bw
            loop = asyncio.get_running_loop()
            relays = [
                loop.create_task(self._client_to_broker(link, bw), name=f"tls-front:{record.id}:c2b"),
                loop.create_task(self._broker_to_client(link, br), name=f"tls-front:{record.id}:b2c"),
            ]
            done, _ = await asyncio.wait(relays, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is not None and not _network_error(exc):
                    self._note_error(exc)
        except asyncio.CancelledError:  # drop_all / close
            if not record.handshake_ok and record.handshake_error is None:
                record.handshake_error = "closed by the front before the handshake finished"
        except Exception as exc:  # noqa: BLE001 - surfaced by close()
            if not _network_error(exc):
                self._note_error(exc)
        finally:
            for task in relays:
                task.cancel()
            if relays:
                await asyncio.gather(*relays, return_exceptions=True)
            await self._teardown(link)
            self._links.discard(link)
            record._mark_closed()

    async def _teardown(self, link: _TlsLink) -> None:
        if link.abort:
            link.writer.transport.abort()
            if link.broker_writer is not None:
                link.broker_writer.transport.abort()
        elif link.sslobj is not None and link.record.handshake_ok and not link.writer.is_closing():
            with contextlib.suppress(ssl.SSLError, ValueError, OSError):
                link.sslobj.unwrap()  # queues our close_notify
            self._flush(link)
        await _wait_writer_closed(link.broker_writer)
        await _wait_writer_closed(link.writer)

    async def _client_to_broker(self, link: _TlsLink, bw: asyncio.StreamWriter) -> None:
        sslobj = link.sslobj
        assert sslobj is not None
        while True:
            plain = bytearray()
            eof = False
            while True:
                try:
                    chunk = sslobj.read(_READ_SIZE)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:  # close_notify
                    eof = True
                    break
                if not chunk:
                    eof = True
                    break
                plain += chunk
            self._flush(link)  # post-handshake messages, if any
            if plain:
                link.record._feed(bytes(plain))
                bw.write(plain)
                await bw.drain()
            if eof:
                return
            data = await link.reader.read(_READ_SIZE)
            if not data:
                return
            link.incoming.write(data)

    async def _broker_to_client(self, link: _TlsLink, br: asyncio.StreamReader) -> None:
        sslobj = link.sslobj
        assert sslobj is not None
        while True:
            data = await br.read(_READ_SIZE)
            if not data:
                return
            link.record.b2c_bytes += len(data)
            sslobj.write(data)
            self._flush(link)
            await link.writer.drain()


# ---------------------------------------------------------------- SigV4 verification

#: Query parameters that belong to the SigV4 presigned-URL scheme.
_AUTH_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
)
_REQUIRED_PARAMS = _AUTH_PARAMS[:-1]
_AMZ_DATE = "%Y%m%dT%H%M%SZ"


class PresignCheck(NamedTuple):
    """Result of :func:`check_presigned`."""

    #: "ok", "bad-signature", "unknown-key", "expired", "revoked" or "malformed".
    verdict: str
    akid: str | None
    #: The (decoded) X-Amz-Security-Token, or None.
    token: str | None
    x_amz_date: str | None
    #: Why a non-"ok" verdict was given.
    detail: str | None


def _fixed_time_signer(credentials: Any, service: str, region: str, expires: int, timestamp: str) -> Any:
    """A botocore ``SigV4QueryAuth`` that signs at ``timestamp`` instead of "now"."""
    from botocore.auth import SigV4QueryAuth

    class _FixedTimeSigV4QueryAuth(SigV4QueryAuth):  # type: ignore[misc]
        def _modify_request_before_signing(self, request: Any) -> None:
            # add_auth() stored get_current_datetime() here just before calling us;
            # everything downstream (scope, string to sign, key) reads it from here.
            request.context["timestamp"] = timestamp
            super()._modify_request_before_signing(request)

    return _FixedTimeSigV4QueryAuth(credentials, service, region, expires=expires)


def presign_url(
    host_header: str,
    access_key_id: str,
    secret: str,
    *,
    region: str = "us-east-1",
    token: str | None = None,
    timestamp: _dt.datetime | str | None = None,
    expires: int = 3600,
    scheme: str = "wss",
    path: str = "/mqtt",
    service: str = "iotdevicegateway",
) -> str:
    """Presigns an AWS IoT WebSocket URL with botocore (token appended after the signature).

    ``host_header`` is what the client sends as Host (``host`` for 443, else
    ``host:port``); ``timestamp`` defaults to now (UTC).
    """
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    if timestamp is None:
        timestamp = _dt.datetime.now(_dt.timezone.utc)
    if isinstance(timestamp, _dt.datetime):
        if timestamp.tzinfo is not None:
            timestamp = timestamp.astimezone(_dt.timezone.utc)
        timestamp = timestamp.strftime(_AMZ_DATE)
    request = AWSRequest(method="GET", url=f"https://{host_header}{path}", headers={"Host": host_header})
    _fixed_time_signer(Credentials(access_key_id, secret), service, region, expires, timestamp).add_auth(request)
    query = urlsplit(request.url).query
    url = f"{scheme}://{host_header}{path}?{query}"
    if token is not None:
        url += "&X-Amz-Security-Token=" + quote(token, safe="")
    return url


def check_presigned(
    path_with_query: str,
    host_header: str | None,
    region: str,
    secrets: Mapping[str, str],
    now: _dt.datetime | None,
    *,
    revoked: Iterable[str] = (),
    service: str = "iotdevicegateway",
) -> PresignCheck:
    """Verifies an AWS IoT SigV4 presigned WebSocket request, independently of the client.

    Rules: the query must carry ``X-Amz-Algorithm=AWS4-HMAC-SHA256``,
    ``X-Amz-Credential=<AKID>/<yyyymmdd of X-Amz-Date>/<region>/<service>/aws4_request``,
    ``X-Amz-Date``, ``X-Amz-Expires`` (1..604800), ``X-Amz-SignedHeaders=host`` and
    ``X-Amz-Signature``, each exactly once (else "malformed"). An optional
    ``X-Amz-Security-Token`` must come after ``X-Amz-Signature`` and must not be signed
    (else "bad-signature"). Any other query parameter is treated as signed. The
    expected signature is recomputed with botocore (GET, ``https://<host_header><path>``,
    Host = ``host_header``, empty payload) and compared. Order of checks: malformed,
    revoked, unknown-key, bad-signature, expired (``now=None`` skips the expiry check;
    naive datetimes are UTC).
    """
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    parts = urlsplit(path_with_query)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    names = [name for name, _ in pairs]
    params = dict(pairs)
    token = params.get("X-Amz-Security-Token")
    x_amz_date = params.get("X-Amz-Date")
    credential = params.get("X-Amz-Credential")
    scope = credential.split("/") if credential is not None else []
    akid = scope[0] if scope and scope[0] else None

    def result(verdict: str, detail: str | None = None) -> PresignCheck:
        return PresignCheck(verdict, akid, token, x_amz_date, detail)

    duplicated = sorted({n for n in names if n in _AUTH_PARAMS and names.count(n) > 1})
    if duplicated:
        return result("malformed", f"repeated parameters {duplicated}")
    missing = [n for n in _REQUIRED_PARAMS if n not in params]
    if missing:
        return result("malformed", f"missing parameters {missing}")
    if params["X-Amz-Algorithm"] != "AWS4-HMAC-SHA256":
        return result("malformed", f"X-Amz-Algorithm={params['X-Amz-Algorithm']!r}")
    try:
        signed_at = _dt.datetime.strptime(params["X-Amz-Date"], _AMZ_DATE).replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        return result("malformed", f"X-Amz-Date={params['X-Amz-Date']!r}")
    expected_scope = [akid or "<akid>", params["X-Amz-Date"][:8], region, service, "aws4_request"]
    if len(scope) != 5 or akid is None or scope[1:] != expected_scope[1:]:
        return result("malformed", f"X-Amz-Credential={credential!r}, expected {'/'.join(expected_scope)!r}")
    try:
        expires = int(params["X-Amz-Expires"])
    except ValueError:
        expires = -1
    if not 1 <= expires <= 604800 or not params["X-Amz-Expires"].isdigit():
        return result("malformed", f"X-Amz-Expires={params['X-Amz-Expires']!r}")
    if params["X-Amz-SignedHeaders"] != "host":
        return result("malformed", f"X-Amz-SignedHeaders={params['X-Amz-SignedHeaders']!r}")
    if not host_header:
        return result("malformed", "no Host header")
    revoked_set = set(revoked)
    if akid in revoked_set:
        return result("revoked", f"{akid} is revoked")
    secret = secrets.get(akid)
    if secret is None:
        return result("unknown-key", f"{akid} is not a known access key id")
    if token is not None and names.index("X-Amz-Security-Token") < names.index("X-Amz-Signature"):
        return result("bad-signature", "X-Amz-Security-Token placed before X-Amz-Signature")
    extra = [(n, v) for n, v in pairs if n not in _AUTH_PARAMS]
    url = f"https://{host_header}{parts.path or '/'}"
    if extra:
        url += "?" + urlencode(extra, quote_via=quote, safe="-_.~")
    request = AWSRequest(method="GET", url=url, headers={"Host": host_header})
    _fixed_time_signer(Credentials(akid, secret), service, region, expires, params["X-Amz-Date"]).add_auth(request)
    expected = dict(parse_qsl(urlsplit(request.url).query))["X-Amz-Signature"]
    if not hmac.compare_digest(expected.encode(), params["X-Amz-Signature"].encode()):
        return result("bad-signature", "signature mismatch (token signed in, wrong secret, host, path or params?)")
    if now is not None:
        if now.tzinfo is None:
            now = now.replace(tzinfo=_dt.timezone.utc)
        if signed_at + _dt.timedelta(seconds=expires) < now:
            return result("expired", f"signed at {params['X-Amz-Date']}, valid {expires}s, now {now:%Y%m%dT%H%M%SZ}")
    return result("ok")


def verify_presigned(
    path_with_query: str,
    host_header: str | None,
    region: str,
    secrets: Mapping[str, str],
    now: _dt.datetime | None,
    *,
    revoked: Iterable[str] = (),
) -> tuple[str, str | None, str | None]:
    """``(verdict, akid, token)`` of :func:`check_presigned`."""
    check = check_presigned(path_with_query, host_header, region, secrets, now, revoked=revoked)
    return check.verdict, check.akid, check.token


# ------------------------------------------------------------------------- WsFront

CustomAuth = Callable[[dict[str, str], dict[str, str]], Union[bool, Awaitable[bool]]]


class WsFront(_FrontBase):
    """MQTT-over-WebSocket endpoint (``/mqtt``, subprotocol ``mqtt``) relaying to ``target_port``.

    :param target_port: plain MQTT port on 127.0.0.1 (e.g. ``broker.port``).
    :param cert, key: serve wss (TLS) with this certificate; ws when omitted.
    :param region: region expected in the SigV4 credential scope.
    :param credentials: SigV4 mode: ``{access_key_id: secret}``. The dict is used live
        (not copied): add/remove keys to rotate. ``revoke(akid)`` adds to ``revoked``.
    :param custom_auth: custom-authorizer mode: ``(headers, query) -> bool`` (may be
        async); headers are lower-cased. False -> HTTP 401.

    Responses: wrong path 404; SigV4 failure 403; custom auth denied 401; no ``mqtt``
    subprotocol offered 400 (websockets' negotiation). ``attempts`` holds one
    :class:`SigV4Attempt` / :class:`CustomAuthAttempt` per authenticated request to
    ``/mqtt``; ``connections`` holds a :class:`WsConnection` per upgrade request.
    Text frames from the client are a protocol error (close 1003).
    """

    def __init__(
        self,
        target_port: int,
        *,
        cert: StrPath | None = None,
        key: StrPath | None = None,
        region: str = "us-east-1",
        credentials: dict[str, str] | None = None,
        custom_auth: CustomAuth | None = None,
        target_host: str = HOST,
        path: str = "/mqtt",
    ) -> None:
        super().__init__()
        if not target_port:
            raise ValueError("target_port is required")
        if credentials is not None and custom_auth is not None:
            raise ValueError("choose SigV4 credentials or custom_auth, not both")
        if (cert is None) != (key is None):
            raise ValueError("cert and key go together")
        self.target_host = target_host
        self.target_port = target_port
        self.region = region
        self.credentials = credentials
        self.custom_auth = custom_auth
        self.revoked: set[str] = set()
        self.path = path
        self.attempts: list[SigV4Attempt | CustomAuthAttempt] = []
        self.ssl_context: ssl.SSLContext | None = None
        if cert is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(cert), str(key))
            ctx.sni_callback = self._sni_callback
            self.ssl_context = ctx
        self._sni: dict[int, str | None] = {}
        self._server: Any = None
        self._by_conn: dict[Any, WsConnection] = {}
        self._live: dict[Any, WsConnection] = {}

    def __repr__(self) -> str:
        return f"<WsFront {self.url()} -> {self.target_host}:{self.target_port} connections={len(self.connections)}>"

    @property
    def scheme(self) -> str:
        return "wss" if self.ssl_context is not None else "ws"

    @property
    def active(self) -> int:
        """WebSocket connections currently relaying."""
        return len(self._live)

    def url(self, host: str = HOST) -> str:
        """``ws[s]://host:port/mqtt`` (no query)."""
        return f"{self.scheme}://{host}:{self.port}{self.path}"

    def host_header(self, host: str = HOST) -> str:
        """The Host header a client connecting to ``host`` sends (always with the port)."""
        return f"{host}:{self.port}"

    def presign(self, akid: str, secret: str, *, host: str = HOST, token: str | None = None, **kw: Any) -> str:
        """A URL for this front presigned with :func:`presign_url` (region of the front)."""
        kw.setdefault("region", self.region)
        return presign_url(self.host_header(host), akid, secret, token=token, scheme=self.scheme, path=self.path, **kw)

    def revoke(self, akid: str) -> None:
        """Rejects ``akid`` from now on (verdict "revoked")."""
        self.revoked.add(akid)

    async def start(self) -> WsFront:
        """Starts listening on 127.0.0.1 (ephemeral port)."""
        from websockets.asyncio.server import serve

        if self._closed:
            raise RuntimeError("WsFront is closed")
        if self._server is None:
            self._server = await serve(
                self._handler,
                HOST,
                0,
                ssl=self.ssl_context,
                subprotocols=["mqtt"],  # type: ignore[list-item]
                process_request=self._process_request,
                process_response=self._process_response,
                compression=None,
                ping_interval=None,
                max_size=None,
                close_timeout=_CLOSE_TIMEOUT,
            )
            self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stops listening and closes every connection (close 1001). Idempotent."""
        if self._close_done is not None:
            await self._close_done.wait()
            self._raise_errors()
            return
        self._close_done = asyncio.Event()
        self._closed = True
        try:
            if self._server is not None:
                self._server.close(close_connections=True)
                try:
                    await asyncio.wait_for(self._server.wait_closed(), _TASK_TIMEOUT * 2)
                except (TimeoutError, asyncio.TimeoutError) as exc:
                    self._note_error(exc)
            for record in self._by_conn.values():
                record._mark_closed()
            self._by_conn.clear()
        finally:
            self._close_done.set()
        self._raise_errors()

    async def drop_all(self, abort: bool = False, code: int = 1001) -> int:
        """Closes every open WebSocket connection; returns how many were dropped."""
        live = list(self._live.items())
        for ws, _ in live:
            if abort:
                ws.transport.abort()
        if not abort:
            await asyncio.gather(*(ws.close(code, "dropped by test") for ws, _ in live), return_exceptions=True)
        for _, record in live:
            with contextlib.suppress(TimeoutError):
                await record.wait_closed(_TASK_TIMEOUT)
        return len(live)

    # ---------------------------------------------------------------- handshake

    def _sni_callback(self, sslobj: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
        self._sni[id(sslobj)] = server_name

    async def _process_request(self, connection: Any, request: Any) -> Any:
        peer = connection.remote_address
        record = WsConnection(id=next(self._ids), peer=tuple(peer[:2]) if peer else None)
        self._by_conn[connection] = record
        self._new_record(record)
        target = request.path
        parts = urlsplit(target)
        record.target = target
        record.path = parts.path
        record.raw_query = parts.query
        record.query = dict(parse_qsl(parts.query, keep_blank_values=True))
        record.headers = {
            name.lower(): ", ".join(request.headers.get_all(name)) for name in dict.fromkeys(request.headers.keys())
        }
        sslobj = connection.transport.get_extra_info("ssl_object")
        if sslobj is not None:
            record.sni = self._sni.pop(id(sslobj), None)

        if parts.path != self.path:
            record.handshake_error = f"wrong path {parts.path!r}"
            return connection.respond(http.HTTPStatus.NOT_FOUND, "Not Found\n")
        if self.credentials is not None:
            check = check_presigned(
                target,
                request.headers.get("Host"),
                self.region,
                self.credentials,
                _dt.datetime.now(_dt.timezone.utc),
                revoked=self.revoked,
            )
            attempt = SigV4Attempt(time.monotonic(), check.akid, check.x_amz_date, check.verdict, check.token)
            self.attempts.append(attempt)
            record.attempt = attempt
            record.detail = check.detail
            if check.verdict != "ok":
                record.handshake_error = f"SigV4 {check.verdict}: {check.detail}"
                return connection.respond(http.HTTPStatus.FORBIDDEN, "Forbidden\n")
        elif self.custom_auth is not None:
            headers, query = dict(record.headers), dict(record.query)
            try:
                verdict = self.custom_auth(dict(headers), dict(query))
                if inspect.isawaitable(verdict):
                    verdict = await verdict
            except Exception as exc:  # noqa: BLE001 - surfaced by close()
                self._note_error(exc)
                record.handshake_error = f"custom_auth raised {exc!r}"
                return connection.respond(http.HTTPStatus.INTERNAL_SERVER_ERROR, "custom_auth failed\n")
            custom = CustomAuthAttempt(time.monotonic(), headers, query, bool(verdict))
            self.attempts.append(custom)
            record.attempt = custom
            if not verdict:
                record.handshake_error = "custom authorizer denied"
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
        return None

    def _process_response(self, connection: Any, request: Any, response: Any) -> None:
        record = self._by_conn.get(connection)
        if record is None:
            return
        record.status = response.status_code
        if response.status_code == http.HTTPStatus.SWITCHING_PROTOCOLS:
            record.handshake_ok = True
            record.subprotocol = response.headers.get("Sec-WebSocket-Protocol")
        else:
            if record.handshake_error is None:
                body = response.body.decode(errors="replace").strip() if response.body else ""
                record.handshake_error = f"HTTP {response.status_code}: {body}"
            self._by_conn.pop(connection, None)
            record._mark_closed()
        record.settled.set()

    # ------------------------------------------------------------------ relaying

    async def _handler(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        record = self._by_conn.pop(ws, None)
        if record is None:  # pragma: no cover - the upgrade always goes through _process_request
            return
        self._live[ws] = record
        loop = asyncio.get_running_loop()
        relays: list[asyncio.Task[None]] = []
        bw: asyncio.StreamWriter | None = None
        try:
            try:
                br, bw = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                await ws.close(1011, "broker unreachable")
                return
            relays = [
                loop.create_task(self._ws_to_broker(ws, bw, record), name=f"ws-front:{record.id}:c2b"),
                loop.create_task(self._broker_to_ws(br, ws, record), name=f"ws-front:{record.id}:b2c"),
            ]
            done, _ = await asyncio.wait(relays, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is not None and not _network_error(exc) and not isinstance(exc, ConnectionClosed):
                    self._note_error(exc)
        except asyncio.CancelledError:
            pass
        finally:
            for task in relays:
                task.cancel()
            if relays:
                await asyncio.gather(*relays, return_exceptions=True)
            await _wait_writer_closed(bw)
            with contextlib.suppress(Exception):
                await ws.close()
            self._live.pop(ws, None)
            record._mark_closed()

    async def _ws_to_broker(self, ws: Any, bw: asyncio.StreamWriter, record: WsConnection) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in ws:
                if isinstance(message, str):
                    record.text_frames += 1
                    await ws.close(1003, "MQTT needs binary frames")
                    return
                record.c2b_frames += 1
                record._feed(bytes(message))
                bw.write(message)
                await bw.drain()
        except ConnectionClosed:
            return

    async def _broker_to_ws(self, br: asyncio.StreamReader, ws: Any, record: WsConnection) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                data = await br.read(_READ_SIZE)
                if not data:
                    return
                record.b2c_bytes += len(data)
                record.b2c_frames += 1
                await ws.send(data)
        except ConnectionClosed:
            return
