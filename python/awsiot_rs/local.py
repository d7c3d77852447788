"""``awsiot_rs.local``: an embedded stand-in for AWS IoT Core's data plane, for development and
tests (docs/local-core.md).

The core itself is Rust (``_native.LocalCoreRef``): its listeners, TLS, MQTT, shadows, jobs and
fleet provisioning run on the extension's own threads and never take the GIL while they wait.
This module is the Python surface over it:

- :class:`LocalIoTCore` starts and stops the core (the blocking native start and stop run in an
  executor from ``await core.start()`` / ``await core.stop()``, so an event loop is never
  blocked; ``with LocalIoTCore():`` calls them directly), writes the CA and the device
  certificates into a state directory, and builds :class:`awsiot_rs.Client` objects already
  pointed at the core;
- custom authorizer functions run on an event loop: one daemon thread per core waits for the
  core's questions (``next_authorizer_request``, which releases the GIL) and hands each to the
  loop with ``asyncio.run_coroutine_threadsafe``; the answer goes back with
  ``answer_authorizer``;
- :meth:`LocalIoTCore.events` reads the core's event log in an executor with a short timeout.

Secrets (private keys, tokens, signatures, passwords, secret keys) never appear in a ``repr``,
a log record or an exception message of this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import threading
import traceback
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

from . import _native
from ._files import write_atomically
from .auth import CustomAuth, MtlsAuth, SigV4Auth
from .client import Client
from .config import Payload, encode_payload
from .errors import ConfigError

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "AuthMode",
    "AuthorizerFunction",
    "AuthorizerRequest",
    "AuthorizerResult",
    "CoreEvent",
    "CoreEvents",
    "Device",
    "LocalIoTCore",
]

logger = logging.getLogger("awsiot_rs.local")

#: The host name in the core's server certificate (``127.0.0.1`` and ``::1`` are in it too).
ENDPOINT = "localhost"
#: Seconds the authorizer thread waits for the core's next question per call (it checks for
#: a stop between calls).
_AUTHORIZER_POLL = 0.5
#: Seconds an authorizer function may take (the core itself gives up after 5 s and denies).
_AUTHORIZER_TIMEOUT = 5.0
#: Seconds ``events()`` waits in the executor per read (a cancelled read finishes within it).
_EVENTS_POLL = 0.25
#: Events taken from the core per read, at most.
_EVENTS_BATCH = 256
#: The region a SigV4 client signs for by default (the core accepts any region).
_DEFAULT_REGION = "us-east-1"

#: ``LocalIoTCore.client``'s ``auth`` names.
AuthMode = Literal["mtls", "alpn", "sigv4", "custom"]


# -- values ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """A thing registered in the core and its device certificate (``register_thing``), or a
    fleet provisioning claim certificate (``add_provisioning_template``).

    ``cert_file`` and ``key_file`` are PEM files in the core's state directory (the key file is
    readable by its owner only); ``certificate_id`` is the lowercase hex SHA-256 of the
    certificate's DER, as AWS's. ``repr()`` never shows the private key.
    """

    thing_name: str
    cert_file: str
    key_file: str
    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    certificate_id: str

    def auth(self) -> MtlsAuth:
        """The :class:`~awsiot_rs.MtlsAuth` of this certificate (for a client of your own)."""
        return MtlsAuth.from_pem(self.cert_pem, self.key_pem)


def _names_only(pairs: Mapping[str, str]) -> str:
    return "[" + ", ".join(repr(k) for k in pairs) + "]"


@dataclass(frozen=True, repr=False)
class AuthorizerRequest:
    """What a client presented to a custom authorizer (the argument of its function).

    ``protocol`` is ``"mqtt"`` (TLS with ALPN ``mqtt`` on the ``custom_auth`` port: the fields
    came in the CONNECT user name) or ``"wss"`` (MQTT over WebSocket: headers or query string,
    or the CONNECT user name). ``token`` is the value under the authorizer's
    ``token_key_name``; ``signature`` is the token signature (authorizers with ``signing``);
    ``username`` is the CONNECT user name before its ``?`` (without the authorizer fields) and
    ``password`` the CONNECT password's bytes. ``headers`` (names lowercased) and ``query`` are
    those of the WebSocket upgrade request (empty over MQTT).

    ``repr()`` shows no token, signature or password, only header and query names and the user
    name without its query part (which may carry the token).
    """

    authorizer: str
    protocol: str
    token: Optional[str] = None
    signature: Optional[str] = None
    username: Optional[str] = None
    password: Optional[bytes] = None
    client_id: Optional[str] = None
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        user = None if self.username is None else self.username.partition("?")[0]
        return (
            f"AuthorizerRequest(authorizer={self.authorizer!r}, protocol={self.protocol!r}, "
            f"client_id={self.client_id!r}, username={user!r}, "
            f"token={'<redacted>' if self.token is not None else None}, "
            f"signature={'<redacted>' if self.signature is not None else None}, "
            f"password={'<redacted>' if self.password is not None else None}, "
            f"headers={_names_only(self.headers)}, query={_names_only(self.query)})"
        )

    @classmethod
    def _from_native(cls, d: Mapping[str, Any]) -> AuthorizerRequest:
        def text(key: str) -> str | None:
            v = d.get(key)
            return None if v is None else str(v)

        password = d.get("password")
        if isinstance(password, str):
            password = password.encode()
        return cls(
            authorizer=str(d.get("authorizer", "")),
            protocol=str(d.get("protocol", "mqtt")),
            token=text("token"),
            signature=text("signature"),
            username=text("username"),
            password=None if password is None else bytes(password),
            client_id=text("client_id"),
            headers={str(k).lower(): str(v) for k, v in (d.get("headers") or ())},
            query={str(k): str(v) for k, v in (d.get("query") or ())},
        )


@dataclass(frozen=True)
class AuthorizerResult:
    """An authorizer function's answer, when ``True``/``False`` is not enough.

    ``principal_id`` names the principal in lifecycle events (``principalIdentifier``);
    ``disconnect_after`` (seconds) ends the connection after that long, as AWS's
    ``disconnectAfterInSeconds``.
    """

    allow: bool
    principal_id: Optional[str] = None
    disconnect_after: Optional[float] = None


#: A custom authorizer function: plain or ``async``, returning ``bool`` or
#: :class:`AuthorizerResult`.
AuthorizerFunction = Callable[
    [AuthorizerRequest], Union[bool, AuthorizerResult, Awaitable[Union[bool, AuthorizerResult]]]
]


@dataclass(frozen=True)
class CoreEvent:
    """One thing that happened in the core (``LocalIoTCore.events()``).

    ``kind`` is ``"connect"``, ``"disconnect"`` (``reason``: AWS's disconnect reason, e.g.
    ``CLIENT_INITIATED_DISCONNECT``, ``DUPLICATE_CLIENTID``), ``"subscribe"`` /
    ``"unsubscribe"`` (``topics``), ``"publish"`` (``topic``, ``qos``, ``payload_len``),
    ``"rule"`` (a publish to ``$aws/rules/...``, which no subscriber receives) or ``"refused"``
    (a connection refused, with ``reason``). ``principal`` is the certificate id, the access key
    id or the authorizer's principal id; ``timestamp_ms`` is milliseconds since the epoch. A
    field that does not apply to the kind is None (``qos`` and ``payload_len`` are set for
    ``publish`` and ``rule`` only).
    """

    kind: str
    client_id: Optional[str] = None
    topic: Optional[str] = None
    topics: tuple[str, ...] = ()
    reason: Optional[str] = None
    qos: Optional[int] = None
    payload_len: Optional[int] = None
    principal: Optional[str] = None
    timestamp_ms: int = 0

    @classmethod
    def from_json(cls, text: str) -> CoreEvent:
        """Parses one event of the core's log (its JSON form)."""
        d = json.loads(text)
        topics = d.get("topics") or ()

        def opt_int(key: str) -> int | None:
            v = d.get(key)
            return None if v is None else int(v)

        def opt_text(key: str) -> str | None:
            v = d.get(key)
            return None if v is None or v == "" else str(v)

        kind = str(d.get("kind", ""))
        carries_message = kind in ("publish", "rule")
        return cls(
            kind=kind,
            client_id=opt_text("client_id"),
            topic=opt_text("topic"),
            topics=tuple(str(t) for t in topics),
            reason=opt_text("reason"),
            qos=opt_int("qos") if carries_message else None,
            payload_len=opt_int("payload_len") if carries_message else None,
            principal=opt_text("principal"),
            timestamp_ms=int(d.get("timestamp_ms") or 0),
        )


# -- helpers -----------------------------------------------------------------------------------


def _safe_file_name(name: str) -> str:
    """A thing name as a file name (thing names are ``[a-zA-Z0-9:_-]+``; anything else is
    replaced)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"


class _AuthorizerState:
    """What the authorizer thread of one core needs (never the ``LocalIoTCore`` itself, so a
    core nobody references can still be collected and stopped)."""

    def __init__(self, ref: _native.LocalCoreRef, loop: asyncio.AbstractEventLoop | None) -> None:
        self.ref = ref
        self.loop = loop
        self.functions: dict[str, AuthorizerFunction] = {}
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.tasks: set[asyncio.Future[None]] = set()

    def target_loop(self) -> asyncio.AbstractEventLoop:
        """The loop that runs the functions: the loop that started the core, else (a core
        started with ``with``) the background loop of :mod:`awsiot_rs.sync`."""
        if self.loop is not None:
            return self.loop
        from .sync import _get_runner

        return _get_runner().loop

    def ensure_thread(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=_authorizer_thread, args=(self,), name="awsiot_rs-local-authorizer", daemon=True)
            self.thread.start()

    def deny(self, request_id: int, error: str) -> None:
        with contextlib.suppress(Exception):
            self.ref.answer_authorizer(request_id, False, None, None, error)


def _authorizer_thread(state: _AuthorizerState) -> None:
    """Waits for the core's authorizer questions (GIL released in the native call) and hands
    each to the loop. Ends when the core stops."""
    while not state.stopping.is_set():
        try:
            item = state.ref.next_authorizer_request(_AUTHORIZER_POLL)
        except Exception:  # noqa: BLE001 - the core is gone
            logger.debug("awsiot_rs.local: the authorizer thread stops (the core is stopped)")
            return
        if item is None:
            continue
        request_id, fields = item
        try:
            request = AuthorizerRequest._from_native(fields)
        except Exception as e:  # noqa: BLE001 - a malformed question: deny it
            logger.error("awsiot_rs.local: unreadable authorizer request (%s); denied", type(e).__name__)
            state.deny(request_id, "unreadable authorizer request")
            continue
        fn = state.functions.get(request.authorizer)
        if fn is None:
            logger.warning("awsiot_rs.local: no function for authorizer %r; denied", request.authorizer)
            state.deny(request_id, f"no authorizer named {request.authorizer!r}")
            continue
        try:
            loop = state.target_loop()
            fut = asyncio.run_coroutine_threadsafe(_run_authorizer(state, fn, request, request_id), loop)
        except RuntimeError:  # the loop is closed (or interpreter exit)
            logger.warning(
                "awsiot_rs.local: the event loop that runs authorizer %r is closed; %r denied",
                request.authorizer, request,
            )
            state.deny(request_id, "the authorizer's event loop is closed")
            continue
        fut.add_done_callback(_retrieve)


def _retrieve(fut: Any) -> None:
    if not fut.cancelled():
        fut.exception()


async def _run_authorizer(
    state: _AuthorizerState, fn: AuthorizerFunction, request: AuthorizerRequest, request_id: int
) -> None:
    """Runs one authorizer function on the loop and answers the core (deny on any error)."""
    try:
        result = fn(request)
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(result, _AUTHORIZER_TIMEOUT)
        if isinstance(result, bool):
            result = AuthorizerResult(result)
        if not isinstance(result, AuthorizerResult):
            raise TypeError(f"an authorizer returns bool or AuthorizerResult, not {type(result).__name__}")
    except asyncio.TimeoutError:
        logger.error("awsiot_rs.local: authorizer %r took longer than %g s; denied %r",
                     request.authorizer, _AUTHORIZER_TIMEOUT, request)
        state.deny(request_id, "the authorizer function timed out")
        return
    except Exception as e:  # noqa: BLE001 - a failing authorizer denies
        # The exception's text may quote what it was given (a token): log its type and where
        # it was raised, not its message.
        where = "".join(traceback.format_tb(e.__traceback__)).rstrip()
        logger.error(
            "awsiot_rs.local: authorizer %r raised %s; denied %r\n%s",
            request.authorizer, type(e).__name__, request, where,
        )
        state.deny(request_id, f"the authorizer function raised {type(e).__name__}")
        return
    disconnect_after = None if result.disconnect_after is None else float(result.disconnect_after)
    try:
        state.ref.answer_authorizer(request_id, bool(result.allow), result.principal_id, disconnect_after, None)
    except Exception as e:  # noqa: BLE001 - e.g. the core stopped meanwhile
        logger.debug("awsiot_rs.local: authorizer answer not delivered: %s", type(e).__name__)


def _stop_native(ref: _native.LocalCoreRef, state: _AuthorizerState, temp_dir: str | None) -> None:
    """Stops the core, ends the authorizer thread and removes the temporary state directory
    (blocking: from an executor, ``stop()`` of a ``with`` block, or the finalizer)."""
    state.stopping.set()
    ref.stop()
    thread = state.thread
    if thread is not None and thread is not threading.current_thread():
        thread.join(_AUTHORIZER_POLL * 4)
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)


# -- the core ----------------------------------------------------------------------------------


class LocalIoTCore:
    """An in-process AWS IoT Core on loopback (see docs/local-core.md).

    ::

        async with LocalIoTCore() as core:
            dev = core.register_thing("sensor-1")
            async with core.client("sensor-1") as c:
                await c.publish("sensors/room1", {"temp": 21.5}, qos=1)

    Ports 0 pick free ports (``.ports`` has the real ones once started). ``limits="aws"``
    enforces AWS IoT Core's quotas; ``qos2="disconnect"`` disconnects a client that publishes
    at QoS 2, as AWS does. Persistent sessions are kept ``persistent_session_expiry`` seconds.
    ``state_dir`` receives the CA and the certificate and key files (a temporary directory,
    removed on stop, when None). Many cores may run in one process; each is independent of any
    event loop except for its authorizer functions (run on the loop that started it, or on the
    background loop of :mod:`awsiot_rs.sync` for a core started with ``with``).

    Configuration errors raise :class:`~awsiot_rs.ConfigError` from ``start()``; a port in use
    raises ``OSError``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        mqtt_port: int = 0,
        alpn_port: int = 0,
        custom_auth_port: int = 0,
        wss_port: int = 0,
        limits: str = "aws",
        qos2: str = "disconnect",
        persistent_session_expiry: float = 3600.0,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        for name, port in (
            ("mqtt_port", mqtt_port), ("alpn_port", alpn_port),
            ("custom_auth_port", custom_auth_port), ("wss_port", wss_port),
        ):
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                raise ConfigError(f"{name} must be a port number 0-65535 (0: a free port), not {port!r}")
        if isinstance(persistent_session_expiry, bool) or not isinstance(persistent_session_expiry, (int, float)):
            raise ConfigError("persistent_session_expiry must be a number of seconds")
        self._host = host
        self._config = (host, mqtt_port, alpn_port, custom_auth_port, wss_port, limits, qos2,
                        float(persistent_session_expiry))
        self._state_dir_arg = None if state_dir is None else os.fspath(state_dir)
        self._ref: _native.LocalCoreRef | None = None
        self._auth: _AuthorizerState | None = None
        self._state_dir: str | None = None
        self._temp_dir: str | None = None
        self._ca_file: str | None = None
        self._ca_pem: bytes | None = None
        self._ports: dict[str, int] = {}
        self._devices: dict[str, Device] = {}
        self._credentials: tuple[str, str, str | None] | None = None
        self._authorizer_keys: dict[str, str | None] = {}
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._lock = threading.Lock()

    # -- start / stop ---------------------------------------------------------------------------

    def _start_blocking(self, loop: asyncio.AbstractEventLoop | None) -> None:
        with self._lock:
            if self._ref is not None:
                raise RuntimeError("this LocalIoTCore is already started")
            ref = _native.LocalCoreRef.start(*self._config)
            temp_dir: str | None = None
            try:
                if self._state_dir_arg is None:
                    temp_dir = tempfile.mkdtemp(prefix="awsiot-rs-local-")
                    state_dir = temp_dir
                else:
                    state_dir = os.path.abspath(self._state_dir_arg)
                    os.makedirs(state_dir, mode=0o700, exist_ok=True)
                ca_pem = bytes(ref.ca_pem)
                ca_file = os.path.join(state_dir, "ca.pem")
                write_atomically(ca_file, ca_pem, 0o644)
                ports = dict(ref.ports)
            except BaseException:
                ref.stop()
                if temp_dir is not None:
                    shutil.rmtree(temp_dir, ignore_errors=True)
                raise
            state = _AuthorizerState(ref, loop)
            self._ref, self._auth = ref, state
            self._state_dir, self._temp_dir = state_dir, temp_dir
            self._ca_pem, self._ca_file, self._ports = ca_pem, ca_file, ports
            self._devices = {}
            self._credentials = None
            self._authorizer_keys = {}
            # A core nobody stops is stopped when collected or at interpreter exit.
            self._finalizer = weakref.finalize(self, _stop_native, ref, state, temp_dir)

    def _take_for_stop(self) -> weakref.finalize[Any, Any] | None:
        with self._lock:
            fin, self._finalizer = self._finalizer, None
            self._ref = None
            self._auth = None
            return fin

    async def start(self) -> None:
        """Starts the core: creates its CA, binds its four listeners and writes the CA file
        (in an executor: the loop is not blocked). Authorizer functions will run on this
        loop."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._start_blocking, loop)

    async def stop(self) -> None:
        """Stops the core: closes every connection, frees every port and removes the temporary
        state directory. Does nothing if not started."""
        fin = self._take_for_stop()
        if fin is not None and fin.alive:
            await asyncio.get_running_loop().run_in_executor(None, fin)

    def start_blocking(self) -> None:
        """``start()`` for code without an event loop (what ``with`` does). Authorizer
        functions then run on the background loop of :mod:`awsiot_rs.sync`."""
        self._start_blocking(None)

    def stop_blocking(self) -> None:
        """``stop()`` for code without an event loop (what leaving ``with`` does)."""
        fin = self._take_for_stop()
        if fin is not None:
            fin()

    async def __aenter__(self) -> LocalIoTCore:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def __enter__(self) -> LocalIoTCore:
        self.start_blocking()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_blocking()

    # -- properties -----------------------------------------------------------------------------

    def _require(self) -> _native.LocalCoreRef:
        ref = self._ref
        if ref is None:
            raise RuntimeError("the LocalIoTCore is not started: use 'async with LocalIoTCore()' or await start()")
        return ref

    @property
    def running(self) -> bool:
        """Whether the core is started."""
        return self._ref is not None

    @property
    def endpoint(self) -> str:
        """``"localhost"``: the host name in the core's server certificate."""
        return ENDPOINT

    @property
    def host(self) -> str:
        """The address the listeners are bound to."""
        return self._host

    @property
    def ports(self) -> dict[str, int]:
        """The listeners' ports: ``{"mqtt", "alpn", "custom_auth", "wss"}``."""
        self._require()
        return dict(self._ports)

    @property
    def ca_pem(self) -> bytes:
        """The core's CA certificate (PEM): trust it to connect."""
        self._require()
        assert self._ca_pem is not None
        return self._ca_pem

    @property
    def ca_file(self) -> str:
        """The path of the CA certificate file in the state directory."""
        self._require()
        assert self._ca_file is not None
        return self._ca_file

    @property
    def state_dir(self) -> str:
        """The directory holding the CA, certificate and key files."""
        self._require()
        assert self._state_dir is not None
        return self._state_dir

    # -- registry -------------------------------------------------------------------------------

    def _save_device(self, thing_name: str, cert_pem: bytes, key_pem: bytes, certificate_id: str) -> Device:
        assert self._state_dir is not None
        base = os.path.join(self._state_dir, _safe_file_name(thing_name))
        cert_file, key_file = f"{base}.cert.pem", f"{base}.private.key"
        write_atomically(key_file, key_pem, 0o600)
        write_atomically(cert_file, cert_pem, 0o644)
        device = Device(thing_name, cert_file, key_file, cert_pem, key_pem, certificate_id)
        self._devices[thing_name] = device
        return device

    def register_thing(self, thing_name: str, *, attributes: Mapping[str, str] | None = None) -> Device:
        """Registers a thing with an ACTIVE device certificate signed by the core's CA, and
        writes the certificate and its key into the state directory."""
        ref = self._require()
        attrs = None if attributes is None else json.dumps(dict(attributes))
        cert_pem, key_pem, certificate_id = ref.register_thing(thing_name, attrs)
        return self._save_device(thing_name, bytes(cert_pem), bytes(key_pem), certificate_id)

    def device(self, thing_name: str) -> Device:
        """The :class:`Device` registered as ``thing_name`` (``KeyError`` if none)."""
        try:
            return self._devices[thing_name]
        except KeyError:
            raise KeyError(f"no thing {thing_name!r} was registered in this core") from None

    def certificate_status(self, certificate_id: str, status: Literal["ACTIVE", "INACTIVE", "REVOKED"]) -> None:
        """Changes a certificate's status: one not ACTIVE is refused at the TLS handshake
        (connections already up stay). ``KeyError`` for an unknown id."""
        self._require().certificate_status(certificate_id, status)

    def add_credentials(self, access_key: str, secret_key: str, session_token: str | None = None) -> None:
        """Accepts these AWS credentials for SigV4 (the ``wss`` listener). The first pair
        added is what ``client(auth="sigv4")`` signs with."""
        self._require().add_credentials(access_key, secret_key, session_token)
        if self._credentials is None:
            self._credentials = (access_key, secret_key, session_token)

    def add_authorizer(
        self,
        name: str,
        fn: AuthorizerFunction,
        *,
        token_key_name: str | None = None,
        signing: bool = False,
    ) -> None:
        """Adds a custom authorizer: ``fn(request)`` (plain or ``async``) returns ``True`` /
        ``False`` or an :class:`AuthorizerResult`. It runs on the event loop that started the
        core (the :mod:`awsiot_rs.sync` background loop for a core started with ``with``), and
        must answer within 5 seconds; an exception, a timeout or another return value denies
        the connection (logged, without the request's secrets). ``token_key_name`` names the
        token's field (header, query parameter or user-name query key); ``signing`` requires
        a token signature too."""
        if not callable(fn):
            raise ConfigError("the authorizer function must be callable")
        ref = self._require()
        assert self._auth is not None
        ref.add_authorizer(name, token_key_name, bool(signing))
        self._auth.functions[name] = fn
        self._authorizer_keys[name] = token_key_name
        self._auth.ensure_thread()

    def add_provisioning_template(
        self, name: str, body: Mapping[str, Any], *, claim_thing: str | None = None
    ) -> Device:
        """Adds a fleet provisioning template (``body`` as AWS's template JSON) and returns a
        claim certificate allowed to call fleet provisioning for it, as a :class:`Device`
        named ``claim_thing`` (``claim-<name>`` when None)."""
        ref = self._require()
        cert_pem, key_pem, certificate_id = ref.add_provisioning_template(name, json.dumps(dict(body)), claim_thing)
        return self._save_device(claim_thing or f"claim-{name}", bytes(cert_pem), bytes(key_pem), certificate_id)

    def add_job(self, thing_name: str, job_id: str, document: Mapping[str, Any]) -> None:
        """Queues a job execution of ``job_id`` (with ``document``) for ``thing_name``; the
        thing's ``notify`` / ``notify-next`` topics are told."""
        self._require().add_job(thing_name, job_id, json.dumps(dict(document)))

    # -- inspection -----------------------------------------------------------------------------

    def shadow_document(self, thing_name: str, name: str | None = None) -> dict[str, Any] | None:
        """The shadow document a GET would return (classic when ``name`` is None), or None
        when the shadow does not exist."""
        text = self._require().shadow_document(thing_name, name)
        return None if text is None else dict(json.loads(text))

    def job_execution(self, thing_name: str, job_id: str) -> dict[str, Any] | None:
        """The job execution of ``job_id`` for ``thing_name`` as DescribeJobExecution shows
        it, or None."""
        text = self._require().job_execution(thing_name, job_id)
        return None if text is None else dict(json.loads(text))

    def events(self) -> CoreEvents:
        """Every event of the core from this call on (connect, disconnect with its reason,
        subscribe, unsubscribe, publish, rule, refused), as an async iterator of
        :class:`CoreEvent`. It ends when the core stops; ``aclose()`` (or ``async with``)
        ends it sooner."""
        return CoreEvents(self._require())

    def connected_clients(self) -> list[str]:
        """The client ids connected right now."""
        return list(self._require().connected_clients())

    def disconnect(self, client_id: str, reason: str = "SERVER_INITIATED_DISCONNECT") -> bool:
        """Drops ``client_id``'s connection (its lifecycle event carries ``reason``); False
        when it is not connected."""
        return bool(self._require().disconnect(client_id, reason))

    def publish(self, topic: str, payload: Payload = b"", qos: int = 0, retain: bool = False) -> None:
        """Publishes as the broker itself (as AWS's data-plane Publish API): ``payload`` bytes,
        ``str`` (UTF-8) or ``dict``/``list`` (JSON)."""
        self._require().publish(topic, encode_payload(payload), qos, retain)

    def counters(self) -> dict[str, int]:
        """``{"routed": messages delivered to subscribers, "dropped": messages dropped}``."""
        routed, dropped = self._require().counters()
        return {"routed": int(routed), "dropped": int(dropped)}

    # -- clients --------------------------------------------------------------------------------

    def client(
        self,
        thing_name: str | None = None,
        *,
        auth: AuthMode | MtlsAuth | SigV4Auth | CustomAuth = "mtls",
        **client_kwargs: Any,
    ) -> Client:
        """An :class:`awsiot_rs.Client` pointed at this core (endpoint ``localhost``, its CA,
        the right port); ``client_id`` defaults to ``thing_name``. Not connected yet.

        ``auth``:

        - ``"mtls"``: mutual TLS on the ``mqtt`` port with ``thing_name``'s certificate;
        - ``"alpn"``: the same on the ``alpn`` port with ALPN ``x-amzn-mqtt-ca``;
        - ``"sigv4"``: MQTT over WebSocket on the ``wss`` port, signed with the first
          credentials given to ``add_credentials`` (or ``access_key``/``secret_key``/
          ``session_token``/``region`` keyword arguments);
        - ``"custom"``: a custom authorizer. Keyword arguments: ``authorizer`` (its name, required),
          ``token``, ``signature``, ``token_key_name`` (default: the authorizer's),
          ``username``, ``password``, ``headers``, ``query``, ``websockets`` (False: TLS with
          ALPN ``mqtt`` on the ``custom_auth`` port; True: the ``wss`` port) and
          ``credentials_in`` (``"headers"``, ``"query"`` or ``"username"``), as
          :class:`~awsiot_rs.CustomAuth`;
        - an auth object (``MtlsAuth``, ``SigV4Auth``, ``CustomAuth``): used as is, on the port
          its kind connects to.

        Every other keyword argument goes to :class:`awsiot_rs.Client`.
        """
        self._require()
        kwargs = dict(client_kwargs)
        kwargs.setdefault("client_id", thing_name)
        kwargs.setdefault("ca", self._ca_pem)
        port: int
        auth_obj: MtlsAuth | SigV4Auth | CustomAuth
        if isinstance(auth, MtlsAuth):
            auth_obj, port = auth, self._ports["mqtt"]
        elif isinstance(auth, SigV4Auth):
            auth_obj, port = auth, self._ports["wss"]
        elif isinstance(auth, CustomAuth):
            auth_obj = auth
            port = self._ports["wss" if auth.websockets else "custom_auth"]
            if not auth.websockets:
                kwargs.setdefault("alpn", ["mqtt"])
        elif auth in ("mtls", "alpn"):
            if thing_name is None:
                raise ConfigError(f"auth={auth!r} needs the thing_name of a registered thing (its certificate)")
            auth_obj = self.device(thing_name).auth()
            if auth == "alpn":
                port = self._ports["alpn"]
                kwargs.setdefault("alpn", ["x-amzn-mqtt-ca"])
            else:
                port = self._ports["mqtt"]
        elif auth == "sigv4":
            region = kwargs.pop("region", _DEFAULT_REGION)
            access_key = kwargs.pop("access_key", None)
            secret_key = kwargs.pop("secret_key", None)
            session_token = kwargs.pop("session_token", None)
            if access_key is None and secret_key is None:
                if self._credentials is None:
                    raise ConfigError("auth='sigv4' needs credentials: call add_credentials() first, or pass access_key/secret_key")
                access_key, secret_key, session_token = self._credentials
            auth_obj = SigV4Auth(region, access_key=access_key, secret_key=secret_key, session_token=session_token)
            port = self._ports["wss"]
        elif auth == "custom":
            name = kwargs.pop("authorizer", None)
            if not name:
                raise ConfigError("auth='custom' needs authorizer='<authorizer name>'")
            websockets = bool(kwargs.pop("websockets", False))
            auth_obj = CustomAuth(
                authorizer_name=name,
                token_key_name=kwargs.pop("token_key_name", self._authorizer_keys.get(name)),
                token=kwargs.pop("token", None),
                signature=kwargs.pop("signature", None),
                username=kwargs.pop("username", None),
                password=kwargs.pop("password", None),
                headers=kwargs.pop("headers", None),
                query=kwargs.pop("query", None),
                websockets=websockets,
                credentials_in=kwargs.pop("credentials_in", "headers"),
            )
            port = self._ports["wss" if websockets else "custom_auth"]
            if not websockets:
                kwargs.setdefault("alpn", ["mqtt"])
        else:
            raise ConfigError(f"auth must be 'mtls', 'alpn', 'sigv4', 'custom' or an auth object, not {auth!r}")
        kwargs.setdefault("port", port)
        return Client(ENDPOINT, auth=auth_obj, **kwargs)

    def __repr__(self) -> str:
        if self._ref is None:
            return "<LocalIoTCore stopped>"
        ports = " ".join(f"{k}={v}" for k, v in self._ports.items())
        return f"<LocalIoTCore running endpoint={ENDPOINT!r} host={self._host!r} {ports}>"


class CoreEvents:
    """The async iterator of ``LocalIoTCore.events()``: :class:`CoreEvent` objects from the
    moment it was created on, until the core stops or ``aclose()`` is called.

    Reads run in an executor with a short timeout, so the loop is never blocked; an iteration
    step that is cancelled loses no event (the read in flight is taken up by the next step).
    If the reader falls too far behind, the core drops the oldest events and a warning says
    how many were missed.
    """

    def __init__(self, ref: _native.LocalCoreRef) -> None:
        self._ref: _native.LocalCoreRef | None = ref
        self._cursor = ref.events_follow()
        self._ready: deque[CoreEvent] = deque()
        self._pending: asyncio.Future[tuple[list[str], int, int, bool]] | None = None
        self._closed = False
        self._finalizer = weakref.finalize(self, _release_events, ref)

    def __aiter__(self) -> CoreEvents:
        return self

    async def __anext__(self) -> CoreEvent:
        while not self._ready:
            ref = self._ref
            if ref is None or self._closed:
                raise StopAsyncIteration
            if self._pending is None:
                loop = asyncio.get_running_loop()
                self._pending = loop.run_in_executor(
                    None, ref.events_read, self._cursor, _EVENTS_BATCH, _EVENTS_POLL
                )
            events, cursor, missed, closed = await asyncio.shield(self._pending)
            self._pending = None
            self._cursor = cursor
            if missed:
                logger.warning("awsiot_rs.local: events() fell behind: %d events missed", missed)
            self._ready.extend(CoreEvent.from_json(e) for e in events)
            if closed and not self._ready:
                self._release()
        return self._ready.popleft()

    async def next(self, timeout: float | None = None) -> CoreEvent:
        """The next event, waiting at most ``timeout`` seconds (``TimeoutError``);
        ``StopAsyncIteration`` once the stream has ended."""
        if timeout is None:
            return await self.__anext__()
        try:
            return await asyncio.wait_for(self.__anext__(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no core event within {timeout:g} s") from None

    async def wait_for(
        self, predicate: Callable[[CoreEvent], bool], timeout: float | None = None
    ) -> CoreEvent:
        """The first event for which ``predicate`` is true (others are skipped), waiting at
        most ``timeout`` seconds in all (``TimeoutError``)."""

        async def scan() -> CoreEvent:
            async for ev in self:
                if predicate(ev):
                    return ev
            raise StopAsyncIteration

        if timeout is None:
            return await scan()
        try:
            return await asyncio.wait_for(scan(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no matching core event within {timeout:g} s") from None

    def _release(self) -> None:
        self._closed = True
        self._ref = None
        self._finalizer()

    async def aclose(self) -> None:
        """Ends the stream (the core stops recording for it)."""
        pending, self._pending = self._pending, None
        self._release()
        if pending is not None:
            with contextlib.suppress(Exception):
                await pending

    async def __aenter__(self) -> CoreEvents:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<awsiot_rs.local.CoreEvents {'closed' if self._closed else 'open'} ready={len(self._ready)}>"


def _release_events(ref: _native.LocalCoreRef) -> None:
    with contextlib.suppress(Exception):
        ref.events_release()

