"""``Client``: the asyncio AWS IoT Core client."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, Union

from . import _native
from ._dispatch import Dispatcher, dispatcher_for, flush_logs, logger
from ._requests import Requester
from .auth import Credentials, CustomAuth, MtlsAuth, PathLike, SigV4Auth, read_pem_file
from .config import (
    ConnectEvent,
    ConnectResult,
    DisconnectEvent,
    OfflineQueue,
    Payload,
    PolicyViolationCheck,
    Reconnect,
    Will,
    encode_payload,
)
from .errors import ClientClosedError, ConfigError, QueueFullError
from .jobs import Jobs
from .provisioning import FleetProvisioning
from .shadow import Shadow
from .subscription import SECTION, Callback, Subscription, html_table

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Client", "LifecycleCallback", "derive_alpn"]

#: ``on_connect`` / ``on_disconnect``: plain or ``async`` callables taking the event.
LifecycleCallback = Callable[[Any], Union[None, Awaitable[None]]]

_UNSET: Any = object()
_NoneType = type(None)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Marks a future's exception as retrieved (its error was reported another way)."""
    if not fut.cancelled():
        fut.exception()


def _seconds(name: str, value: float) -> float:
    """``value`` as a float, refusing what is not a number (the core checks the range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number of seconds, not {type(value).__name__}")
    return float(value)


def _auth_options(auth: MtlsAuth | SigV4Auth | CustomAuth | None) -> dict[str, Any]:
    """The auth object as ``_native.ClientRef`` keyword arguments (``mtls=``, ``sigv4=`` or
    ``custom_auth=``)."""
    return {} if auth is None else auth._native_options()


def derive_alpn(auth: MtlsAuth | SigV4Auth | CustomAuth | None, port: int) -> list[str]:
    """The ALPN protocols offered when ``alpn`` is not given: ``x-amzn-mqtt-ca`` for mutual TLS
    on port 443, ``mqtt`` for a custom authorizer over MQTT (not WebSocket) on 443, else none
    (AWS IoT needs no ALPN on 8883 or for WebSocket). The core decides; this asks it."""
    return _native.ClientRef.default_alpn(port, **_auth_options(auth))


class Client:
    """An MQTT 3.1.1 client for AWS IoT Core.

    Use ``async with Client(...) as client:`` (connects, then disconnects on exit) or call
    ``await client.connect()`` / ``await client.disconnect()``. All I/O methods are
    coroutines and must run on the event loop that connected the client; callbacks always run
    on that loop's thread. Configuration errors raise ``ConfigError`` here, before any I/O.
    See the README for every argument.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        client_id: str | None = None,
        port: int | None = None,
        auth: MtlsAuth | SigV4Auth | CustomAuth | None = None,
        ca: PathLike | bytes | None = None,
        tls: bool = True,
        alpn: list[str] | None = None,
        username: str | None = None,
        password: str | None = None,
        keep_alive: float = 30.0,
        clean_session: bool = True,
        will: Will | None = None,
        reconnect: Reconnect | None = _UNSET,
        offline_queue: OfflineQueue = _UNSET,
        operation_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        limits: Literal["aws", "mqtt"] = "aws",
        log_file: PathLike | None = None,
        inflight: int = 100,
        max_subscriptions: int | None = None,
        policy_violation: PolicyViolationCheck | None = _UNSET,
        proxy: str | None = None,
        on_connect: LifecycleCallback | None = None,
        on_disconnect: LifecycleCallback | None = None,
    ) -> None:
        if reconnect is _UNSET:
            reconnect = Reconnect()
        if policy_violation is _UNSET:
            policy_violation = PolicyViolationCheck()
        if offline_queue is _UNSET:
            offline_queue = OfflineQueue()
        # Only what is clearer said in Python is checked here: which object each argument is,
        # and callables. The core converts and checks every value and bound once (ConfigError
        # naming the argument and what it allows), before any I/O.
        for name, value, kinds in (
            ("auth", auth, (MtlsAuth, SigV4Auth, CustomAuth, _NoneType)),
            ("will", will, (Will, _NoneType)),
            ("reconnect", reconnect, (Reconnect, _NoneType)),
            ("offline_queue", offline_queue, (OfflineQueue,)),
            ("policy_violation", policy_violation, (PolicyViolationCheck, _NoneType)),
        ):
            if not isinstance(value, kinds):
                allowed = " or ".join(k.__name__ for k in kinds).replace("NoneType", "None")
                raise ConfigError(f"{name} must be {allowed}, not {type(value).__name__}")
        for name, cb in (("on_connect", on_connect), ("on_disconnect", on_disconnect)):
            if cb is not None and not callable(cb):
                raise ConfigError(f"{name} must be callable")
        if ca is not None and not isinstance(ca, (bytes, bytearray)):
            ca = read_pem_file(ca, "CA")
        self._native = _native.ClientRef(
            endpoint,
            port=port,
            client_id=client_id,
            tls=tls,
            ca_pem=None if ca is None else bytes(ca),
            alpn=alpn,
            username=username,
            password=password,
            keep_alive=keep_alive,
            clean_session=clean_session,
            will=None if will is None else replace(will, payload=encode_payload(will.payload)),
            limits=limits,
            operation_timeout=operation_timeout,
            connect_timeout=connect_timeout,
            reconnect=reconnect,
            offline_queue=offline_queue,
            log_file=log_file,
            inflight=inflight,
            max_subscriptions=max_subscriptions,
            policy_violation=policy_violation,
            proxy=proxy,
            **_auth_options(auth),
        )
        self._credentials_provider = auth.provider if isinstance(auth, SigV4Auth) else None
        self._endpoint = endpoint
        self._port = self._native.port
        self._operation_timeout = float(operation_timeout)
        self._connect_timeout = float(connect_timeout)
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._dispatcher: Dispatcher | None = None
        self._client_token = 0
        # Made on first use: most clients never hold either (432 B per client saved).
        self._subscriptions: set[Subscription] | None = None
        self._tasks: set[asyncio.Task[Any]] | None = None
        self._entered = False
        self._qos0_count = 0
        flush_logs()

    # -- properties -------------------------------------------------------------------------

    @property
    def client_id(self) -> str:
        """The MQTT client id (generated as ``awsiot-rs-<hex>`` when not given)."""
        return self._native.client_id

    @property
    def is_connected(self) -> bool:
        """Whether a connection is up right now."""
        return self._native.is_connected

    @property
    def session_present(self) -> bool:
        """The session-present flag of the last CONNACK."""
        return self._native.session_present

    def stats(self) -> dict[str, int]:
        """Counters: ``messages_sent``, ``messages_received``, ``bytes_sent``,
        ``bytes_received``, ``inflight``, ``queued``, ``dropped``, ``reconnects`` and
        ``unrouted`` (messages no subscription or ``messages()`` stream took: acknowledged,
        counted here and logged at WARNING)."""
        return self._native.stats()

    # -- connection -------------------------------------------------------------------------

    def _require_dispatcher(self) -> Dispatcher:
        d = self._dispatcher
        if d is None:
            raise ClientClosedError("the client is not connected: call connect() first")
        return d

    def _bind(self, loop: asyncio.AbstractEventLoop) -> Dispatcher:
        """Routes this client's results and events through ``loop``'s dispatcher."""
        d = self._dispatcher
        if d is None or d.loop is not loop:
            d = dispatcher_for(loop)
            self._dispatcher = d
            self._client_token = d.add_client(self)
            self._native.bind(d.native, self._client_token)
        return d

    async def connect(self) -> ConnectResult:
        """Connects; raises if this first attempt fails (``ConnectError``, ``TlsError``,
        ``AuthError``, ...). Once connected, automatic reconnect keeps the connection up.
        Subscriptions and ``messages()`` streams kept from before are re-subscribed."""
        d = self._bind(asyncio.get_running_loop())
        fut = d.call(self._native.connect)
        try:
            session_present = await fut
        except asyncio.CancelledError:
            # Stop the attempt (and any reconnect loop) that nobody waits for any more.
            d.call(self._native.disconnect)
            raise
        return ConnectResult(session_present=bool(session_present))

    async def disconnect(self) -> None:
        """Sends DISCONNECT and fails queued operations with ``ClientClosedError``. Open
        subscriptions and ``messages()`` streams stay: iterations in progress end once their
        queued messages are taken, and the next ``connect()`` re-subscribes them (end one for
        good with ``unsubscribe()``). Does nothing if not connected. The client can connect
        again later."""
        d = self._dispatcher
        if d is None:
            return
        await d.call(self._native.disconnect)
        # Let subscriptions see their closed queues.
        await asyncio.sleep(0)

    async def __aenter__(self) -> Client:
        if self._entered:
            raise RuntimeError("this Client is already in an 'async with' block (not re-entrant)")
        self._entered = True
        try:
            await self.connect()
        except BaseException:
            self._entered = False
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.disconnect()
        finally:
            self._entered = False

    # -- publish ----------------------------------------------------------------------------

    def publish(
        self, topic: str, payload: Payload = b"", *, qos: int = 0, retain: bool = False
    ) -> Awaitable[None]:
        """Publishes a message; await the result. ``payload`` may be bytes-like, ``str``
        (UTF-8) or a ``dict``/``list`` (sent as JSON). QoS 1 completes at its PUBACK; QoS 0 once
        accepted for sending (waiting for room if the submission queue is full). Bad input
        raises before anything is sent (``TopicError``, ``PayloadTooLarge``, ``ConfigError``
        for QoS 2).

        This is a plain method returning an awaitable (not a coroutine function), so
        ``asyncio.gather(*(client.publish(...) for ...))`` needs no task per call.
        """
        data = encode_payload(payload)
        d = self._dispatcher
        if d is None:
            self._native.publish(topic, data, qos, retain, None)  # validates, then refuses
            raise ClientClosedError("the client is not connected: call connect() first")
        try:
            fut = self._submit(d, topic, data, qos, retain)
        except QueueFullError as e:
            if not e.retry_when_writable:
                raise
            return self._publish_when_writable(d, topic, data, qos, retain)
        if fut is not None:
            return fut
        self._qos0_count += 1
        if self._qos0_count % 256 == 0:
            return asyncio.sleep(0)  # let other tasks run during long QoS 0 bursts
        return d.done

    def _submit(
        self, d: Dispatcher, topic: str, data: bytes, qos: int, retain: bool
    ) -> asyncio.Future[Any] | None:
        """Queues one publish. Returns the future of a QoS 1 publish (``None`` for QoS 0,
        which is done once queued); raises ``QueueFullError`` when the queue is full."""
        if qos == 0:
            self._native.publish(topic, data, 0, retain, None)
            return None
        return d.call(self._native.publish, topic, data, qos, retain)

    async def _publish_when_writable(
        self, d: Dispatcher, topic: str, data: bytes, qos: int, retain: bool
    ) -> None:
        """The slow path of ``publish``: wait for room in the submission queue, then submit."""
        while True:
            await d.call(self._native.wait_writable)
            try:
                fut = self._submit(d, topic, data, qos, retain)
            except QueueFullError as e:
                if not e.retry_when_writable:
                    raise
                continue
            if fut is not None:
                await fut
            return

    def publish_many(
        self,
        messages: Iterable[tuple[str, Payload]],
        *,
        qos: int = 0,
        retain: bool = False,
    ) -> Awaitable[None]:
        """Publishes many ``(topic, payload)`` messages with one crossing into the core; await
        the result. Every message is validated before any is sent. QoS 1 completes when all are
        acknowledged (raising the first error if one failed); QoS 0 once all are queued."""
        items = [(topic, encode_payload(payload)) for topic, payload in messages]
        d = self._dispatcher
        if d is None:
            self._native.publish_many(items, qos, retain, None)  # validates, then raises
            raise ClientClosedError("the client is not connected: call connect() first")
        if qos == 0:
            n = self._native.publish_many(items, 0, retain, None)
            if n == len(items):
                return d.done
            return self._publish_many_rest(d, items[n:], 0, retain, [])
        n, fut = d.call_with_result(self._native.publish_many, items, qos, retain)
        if n == len(items):
            return fut
        return self._publish_many_rest(d, items[n:], qos, retain, [fut], offset=n)

    async def _publish_many_rest(
        self,
        d: Dispatcher,
        items: list[tuple[str, bytes]],
        qos: int,
        retain: bool,
        waiting: list[asyncio.Future[Any]],
        offset: int = 0,
    ) -> None:
        """The slow path of ``publish_many``: wait for room, submit the rest, await them all.
        Each chunk's future fails only for a real error of one of its messages (its message
        names the failed indexes in the whole batch)."""
        try:
            while items:
                await d.call(self._native.wait_writable)
                if qos:
                    n, fut = d.call_with_result(self._native.publish_many, items, qos, retain, offset=offset)
                    waiting.append(fut)
                else:
                    n = self._native.publish_many(items, 0, retain, None, offset)
                items = items[n:]
                offset += n
        except BaseException:
            for w in waiting:  # their outcome is superseded by this error: mark it retrieved
                w.add_done_callback(_retrieve)
            raise
        results = await asyncio.gather(*waiting, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    def publish_nowait(
        self, topic: str, payload: Payload = b"", *, qos: int = 0, retain: bool = False
    ) -> None:
        """Fire-and-forget publish for high rates: validates and queues, then returns. QoS 1 is
        still acknowledged and retried; nobody awaits it. Raises ``QueueFullError`` /
        ``DisconnectedError`` instead of waiting, per ``offline_queue``."""
        self._native.publish(topic, encode_payload(payload), qos, retain, None)

    # -- subscribe --------------------------------------------------------------------------

    async def subscribe(
        self,
        topic_filter: str | Iterable[str],
        *,
        qos: int = 1,
        callback: Callback | None = None,
        queue_size: int = 10000,
    ) -> Subscription:
        """Subscribes to one filter or a list of filters and returns after SUBACK.

        Without ``callback``, iterate the returned ``Subscription``. With ``callback`` (plain
        or ``async``), each message is passed to it on the event loop thread; exceptions it
        raises are logged and delivery continues. A broker refusal raises ``SubscribeError``.
        """
        filters = [topic_filter] if isinstance(topic_filter, str) else list(topic_filter)
        if callback is not None and not callable(callback):
            raise ConfigError("callback must be callable")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ConfigError(f"queue_size must be an integer >= 1, not {queue_size!r}")
        self._native.validate_subscribe(filters, qos)
        d = self._require_dispatcher()
        ref, fut = d.call_with_result(self._native.subscribe, filters, qos, queue_size)
        sub = Subscription(self, ref, d, filters, callback, queue_size)
        if callback is not None:
            if self._subscriptions is None:
                self._subscriptions = set()
            self._subscriptions.add(sub)  # the client keeps callback subscriptions alive
        try:
            granted = await fut
        except BaseException:
            self._forget(sub)
            sub.close_nowait()
            raise
        sub._granted = list(granted)
        return sub

    async def unsubscribe(self, topic_filter: str | Iterable[str]) -> None:
        """Unsubscribes filters at the broker (returns after UNSUBACK); subscriptions left
        without filters end."""
        filters = [topic_filter] if isinstance(topic_filter, str) else list(topic_filter)
        d = self._require_dispatcher()
        await d.call(self._native.unsubscribe, filters)

    def messages(self, *, queue_size: int = 10000) -> Subscription:
        """Every message this client receives, whatever the subscription, as an async
        iterator (it sends nothing to the broker).

        It may be opened before ``connect()`` (call it from a coroutine on the loop that will
        connect): a persistent session's stored messages, which the broker sends right after
        CONNACK, then have a taker. The stream survives ``disconnect()`` + ``connect()``."""
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ConfigError(f"queue_size must be an integer >= 1, not {queue_size!r}")
        d = self._dispatcher
        if d is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise ClientClosedError(
                    "messages() before connect() must be called on the event loop that will connect "
                    "(from a coroutine), so its messages have a loop to go to"
                ) from None
            d = self._bind(loop)
        ref = self._native.messages(queue_size)
        return Subscription(self, ref, d, [], None, queue_size)

    async def _request(
        self,
        topic: str,
        payload: dict[str, Any] | None,
        accepted: str,
        rejected: str,
        *,
        use_token: bool = True,
        timeout: float | None = None,
        cbor: bool = False,
    ) -> tuple[bool, Any, str | None]:
        """A correlated service request (used by ``shadow()``, ``fleet_provisioning()`` and
        ``jobs()``): returns ``(accepted, document, client_token)``."""
        d = self._require_dispatcher()
        text = json.dumps(payload, separators=(",", ":")) if payload is not None else None
        t = self._operation_timeout if timeout is None else _seconds("timeout", timeout)
        fut = d.call(self._native.request, topic, text, accepted, rejected, use_token, t, cbor=cbor)
        ok, doc_text, client_token = await fut
        return bool(ok), json.loads(doc_text), client_token

    def shadow(self, thing_name: str, name: str | None = None) -> Shadow:
        """The Device Shadow of ``thing_name`` (classic when ``name`` is None)."""
        return Shadow(Requester(self._request, self.subscribe), thing_name, name)

    def fleet_provisioning(self, fmt: str = "json") -> FleetProvisioning:
        """The fleet provisioning MQTT API (CreateKeysAndCertificate, CreateCertificateFromCsr,
        RegisterThing)."""
        return FleetProvisioning(Requester(self._request, self.subscribe), fmt)

    def jobs(self, thing_name: str) -> Jobs:
        """The jobs MQTT API of ``thing_name``."""
        return Jobs(Requester(self._request, self.subscribe), thing_name)

    def _forget(self, sub: Subscription) -> None:
        if self._subscriptions is not None:
            self._subscriptions.discard(sub)

    def _keep_task(self, task: asyncio.Task[Any]) -> None:
        """Holds a task the client started until it ends (the loop keeps only weak ones)."""
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)

    def _drop_task(self, task: asyncio.Task[Any]) -> None:
        if self._tasks is not None:
            self._tasks.discard(task)

    # -- lifecycle events -------------------------------------------------------------------

    def _on_credentials_request(self, request: int) -> None:
        """Runs the SigV4 credentials provider on the loop and answers the core."""
        provider = self._credentials_provider
        if provider is None:
            _native.fail_credentials(request, "no credentials provider is configured")
            return

        async def run() -> None:
            try:
                result = provider()
                if inspect.isawaitable(result):
                    # The connection attempt waits at most connect_timeout for the answer; a
                    # provider that never answers must not leave a task behind per attempt.
                    result = await asyncio.wait_for(result, self._connect_timeout)
                if not isinstance(result, Credentials):
                    raise TypeError(f"the credentials provider returned {type(result).__name__}, not Credentials")
                _native.provide_credentials(
                    request, result.access_key, result.secret_key, result.session_token, result.expiry_timestamp()
                )
            except Exception as e:  # the attempt fails with AuthError naming the cause
                _native.fail_credentials(request, f"the credentials provider raised {type(e).__name__}: {e}")

        task = asyncio.ensure_future(run())
        self._keep_task(task)
        task.add_done_callback(self._drop_task)

    def _on_lifecycle(self, event: ConnectEvent | DisconnectEvent) -> None:
        """Runs ``on_connect`` / ``on_disconnect`` for ``event`` (from the dispatcher)."""
        callback = self._on_connect if isinstance(event, ConnectEvent) else self._on_disconnect
        if callback is None:
            return
        try:
            result = callback(event)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._keep_task(task)
                task.add_done_callback(self._lifecycle_done)
        except Exception:
            logger.exception("awsiot_rs: lifecycle callback raised")

    def _lifecycle_done(self, task: asyncio.Task[Any]) -> None:
        self._drop_task(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("awsiot_rs: lifecycle callback raised", exc_info=task.exception())

    def __repr__(self) -> str:
        return (
            f"<awsiot_rs.Client endpoint={self._endpoint!r} port={self._port} "
            f"client_id={self.client_id!r} state={self._native.state}>"
        )

    def _repr_html_(self) -> str:
        """Jupyter's view: endpoint, client id, state and the ``stats()`` counters (never
        credentials: the auth object and the proxy are not shown)."""
        rows: list[tuple[str, Any]] = [
            ("endpoint", f"{self._endpoint}:{self._port}"),
            ("client id", self.client_id),
            ("state", self._native.state),
            ("session present", self.session_present),
            ("stats()", SECTION),
        ]
        rows += list(self.stats().items())
        return html_table("awsiot_rs.Client", rows)
