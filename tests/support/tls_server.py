"""A tiny recording TLS server for negative / introspection tests.

:class:`RecordingTlsServer` listens on an ephemeral loopback port and, for
every accepted connection, records what the client did during and after the
TLS handshake (SNI, ALPN, handshake outcome, application bytes). It runs on
plain :mod:`socket` + :mod:`ssl` in background threads, so it can be used from
synchronous and asyncio tests alike without touching any event loop.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from os import PathLike
from types import TracebackType
from typing import Union

from . import packets as P

__all__ = ["CONNACK_ACCEPTED", "ConnectionRecord", "RecordingTlsServer", "parse_client_hello"]

HOST = "127.0.0.1"
#: MQTT 3.1.1 CONNACK: session-present 0, return code 0 (accepted).
CONNACK_ACCEPTED = P.connack()

_HANDSHAKE_TIMEOUT = 5.0
_SILENCE_TIMEOUT = 2.0
_ACCEPT_POLL = 0.1

StrPath = Union[str, PathLike[str]]  # Union: evaluated on 3.9 too


@dataclass
class ConnectionRecord:
    """Everything observed on one accepted connection.

    Fields are filled in progressively by the server thread; call
    :meth:`wait` before asserting on ``app_bytes`` or ``handshake_*``.
    """

    #: (host, port) of the client.
    peer: tuple[str, int]
    #: Server name sent by the client (SNI), or None if none was sent.
    sni: str | None = None
    #: ALPN protocol selected by the server (None if none negotiated).
    alpn: str | None = None
    #: ALPN protocols offered in the ClientHello (None if no ALPN extension
    #: was sent or the ClientHello could not be parsed).
    offered_alpn: list[str] | None = None
    #: SNI as parsed from the raw ClientHello (independent of the callback).
    offered_sni: str | None = None
    #: True once the server-side handshake completed successfully.
    handshake_ok: bool = False
    #: Text of the exception raised by the server-side handshake, if any.
    handshake_error: str | None = None
    #: Negotiated TLS version (e.g. "TLSv1.3") after a successful handshake.
    tls_version: str | None = None
    #: DER of the client certificate, if one was presented and verified.
    client_cert_der: bytes | None = None
    #: Every application byte received after the handshake.
    app_bytes: bytes = b""
    #: True if the CONNACK was sent.
    connack_sent: bool = False
    #: Set when the server has finished with the connection.
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    def wait(self, timeout: float = 10.0) -> bool:
        """Block until the connection is finished; True if it finished."""
        return self.done.wait(timeout)


def _parse_extensions(data: bytes) -> tuple[str | None, list[str] | None]:
    """Return (sni, alpn list) from a ClientHello extensions block."""
    sni: str | None = None
    alpn: list[str] | None = None
    pos = 0
    while pos + 4 <= len(data):
        ext_type, ext_len = struct.unpack_from("!HH", data, pos)
        pos += 4
        body = data[pos : pos + ext_len]
        pos += ext_len
        if ext_type == 0 and len(body) >= 2:  # server_name
            list_len = struct.unpack_from("!H", body, 0)[0]
            p = 2
            while p + 3 <= min(len(body), 2 + list_len):
                name_type = body[p]
                name_len = struct.unpack_from("!H", body, p + 1)[0]
                name = body[p + 3 : p + 3 + name_len]
                p += 3 + name_len
                if name_type == 0:
                    sni = name.decode("ascii", "replace")
                    break
        elif ext_type == 16 and len(body) >= 2:  # ALPN
            list_len = struct.unpack_from("!H", body, 0)[0]
            protos: list[str] = []
            p = 2
            while p < min(len(body), 2 + list_len):
                plen = body[p]
                protos.append(body[p + 1 : p + 1 + plen].decode("ascii", "replace"))
                p += 1 + plen
            alpn = protos
    return sni, alpn


def parse_client_hello(data: bytes) -> tuple[str | None, list[str] | None]:
    """Parse SNI and offered ALPN from the first TLS record(s) of a connection.

    ``data`` is the raw bytes the client sent first. Returns ``(sni, alpn)``;
    either is None when absent. Raises ValueError if ``data`` is not a TLS
    ClientHello.
    """
    # Reassemble the handshake payload from consecutive handshake records.
    payload = b""
    pos = 0
    while pos + 5 <= len(data) and data[pos] == 0x16:
        rec_len = struct.unpack_from("!H", data, pos + 3)[0]
        payload += data[pos + 5 : pos + 5 + rec_len]
        pos += 5 + rec_len
    if len(payload) < 4 or payload[0] != 0x01:
        raise ValueError("not a TLS ClientHello")
    hs_len = int.from_bytes(payload[1:4], "big")
    body = payload[4 : 4 + hs_len]
    p = 2 + 32  # legacy_version + random
    p += 1 + body[p]  # session id
    p += 2 + struct.unpack_from("!H", body, p)[0]  # cipher suites
    p += 1 + body[p]  # compression methods
    if p + 2 > len(body):
        return None, None
    ext_len = struct.unpack_from("!H", body, p)[0]
    return _parse_extensions(body[p + 2 : p + 2 + ext_len])


def _peek_client_hello(sock: socket.socket, timeout: float) -> bytes:
    """MSG_PEEK the first TLS record without consuming it (best effort)."""
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536, socket.MSG_PEEK)
        except (socket.timeout, OSError):
            return data
        if not data:
            return data
        if len(data) >= 5:
            need = 5 + struct.unpack_from("!H", data, 3)[0]
            if len(data) >= need:
                return data
        time.sleep(0.01)
    return data


class RecordingTlsServer:
    """Background TLS server on 127.0.0.1 that records every connection.

    :param cert: server certificate (PEM path).
    :param key: server private key (PEM path).
    :param ca: CA bundle used to verify client certificates (optional).
    :param require_client_cert: demand a client certificate (needs ``ca``).
    :param alpn_protocols: ALPN protocols the server accepts/selects.
    :param answer_connack: if the first application byte is an MQTT CONNECT
        (0x10), reply with :data:`CONNACK_ACCEPTED`.

    Attributes: ``port`` (int), ``host`` ("127.0.0.1"), ``connections``
    (list of :class:`ConnectionRecord`, in accept order).
    """

    host: str = HOST

    def __init__(
        self,
        cert: StrPath,
        key: StrPath,
        *,
        ca: StrPath | None = None,
        require_client_cert: bool = False,
        alpn_protocols: list[str] | None = None,
        answer_connack: bool = False,
    ) -> None:
        self.answer_connack = answer_connack
        self.connections: list[ConnectionRecord] = []
        self._lock = threading.Lock()
        self._records_by_sock: dict[int, ConnectionRecord] = {}
        self._conn_socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._new_connection = threading.Condition(self._lock)

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        if ca is not None:
            ctx.load_verify_locations(cafile=str(ca))
            ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        elif require_client_cert:
            raise ValueError("require_client_cert needs a ca")
        if alpn_protocols:
            ctx.set_alpn_protocols(alpn_protocols)
        ctx.sni_callback = self._sni_callback
        self.ssl_context = ctx

        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self._listener.listen(16)
        self._listener.settimeout(_ACCEPT_POLL)
        self.port: int = self._listener.getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"RecordingTlsServer:{self.port}", daemon=True
        )
        self._accept_thread.start()

    # --------------------------------------------------------------- records

    def _sni_callback(
        self, sslsock: ssl.SSLSocket | ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext
    ) -> None:
        with self._lock:
            record = self._records_by_sock.get(id(sslsock))
        if record is not None:
            record.sni = server_name

    def wait_for_connections(self, count: int = 1, timeout: float = 10.0) -> list[ConnectionRecord]:
        """Wait until at least ``count`` connections are accepted *and* finished.

        Returns the finished records; raises TimeoutError otherwise.
        """
        deadline = time.monotonic() + timeout
        with self._new_connection:
            while len(self.connections) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"only {len(self.connections)} of {count} connections arrived")
                self._new_connection.wait(remaining)
            records = list(self.connections[:count])
        for record in records:
            if not record.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"connection from {record.peer} did not finish")
        return records

    # ---------------------------------------------------------------- threads

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            record = ConnectionRecord(peer=peer)
            with self._new_connection:
                self.connections.append(record)
                self._conn_socks.add(conn)
                self._new_connection.notify_all()
            t = threading.Thread(target=self._handle, args=(conn, record), daemon=True)
            self._threads.append(t)
            t.start()

    def _handle(self, conn: socket.socket, record: ConnectionRecord) -> None:
        tls: ssl.SSLSocket | None = None
        try:
            hello = _peek_client_hello(conn, _HANDSHAKE_TIMEOUT)
            try:
                record.offered_sni, record.offered_alpn = parse_client_hello(hello)
            except (ValueError, IndexError, struct.error):
                pass
            conn.settimeout(_HANDSHAKE_TIMEOUT)
            tls = self.ssl_context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            with self._lock:
                self._conn_socks.discard(conn)
                self._conn_socks.add(tls)
                self._records_by_sock[id(tls)] = record
            try:
                tls.do_handshake()
            except (OSError, ValueError) as exc:
                record.handshake_error = f"{type(exc).__name__}: {exc}"
                return
            record.handshake_ok = True
            record.alpn = tls.selected_alpn_protocol()
            record.tls_version = tls.version()
            record.client_cert_der = tls.getpeercert(binary_form=True)
            self._read_app_data(tls, record)
        finally:
            with self._lock:
                if tls is not None:
                    self._records_by_sock.pop(id(tls), None)
                    self._conn_socks.discard(tls)
                self._conn_socks.discard(conn)
            for s in (tls, conn):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass
            record.done.set()

    def _read_app_data(self, tls: ssl.SSLSocket, record: ConnectionRecord) -> None:
        tls.settimeout(_SILENCE_TIMEOUT)
        while not self._stop.is_set():
            try:
                chunk = tls.recv(65536)
            except (socket.timeout, OSError):
                return
            if not chunk:
                return
            record.app_bytes += chunk
            if self.answer_connack and not record.connack_sent and record.app_bytes[:1] == b"\x10":
                try:
                    tls.sendall(CONNACK_ACCEPTED)
                except OSError:
                    return
                record.connack_sent = True

    # -------------------------------------------------------------- shutdown

    def close(self) -> None:
        """Stop accepting, abort open connections and join the threads."""
        self._stop.set()
        try:
            self._listener.close()
        except OSError:
            pass
        self._accept_thread.join(timeout=2.0)
        with self._lock:
            socks = list(self._conn_socks)
        for s in socks:
            try:
                # Bypass SSLSocket.shutdown (which drops its SSL object while
                # the handler thread may still be inside recv()).
                socket.socket.shutdown(s, socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=2.0)

    def __enter__(self) -> RecordingTlsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RecordingTlsServer {HOST}:{self.port} connections={len(self.connections)}>"
