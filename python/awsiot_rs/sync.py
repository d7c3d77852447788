"""Blocking use of awsiot_rs: scripts, threads, notebooks.

``awsiot_rs.sync.Client`` takes the same arguments as :class:`awsiot_rs.Client` and has the
same operations without ``await``::

    from awsiot_rs import MtlsAuth
    from awsiot_rs.sync import Client

    with Client(endpoint, client_id="sensor-1", auth=MtlsAuth("device.pem.crt", "private.pem.key")) as client:
        sub = client.subscribe("Sensor/+/room1", qos=1)        # returns after SUBACK
        client.publish("Sensor/moisture/room1", {"temp": 10}, qos=1)   # returns at PUBACK
        msg = sub.get(timeout=5)                               # or: for msg in sub: ...
        print(msg.topic, msg.json())

How it works: it is a thin layer over the asyncio client, not a second implementation. Every
sync client of the process shares one background thread running one asyncio event loop
(started at first use, stopped at interpreter exit after disconnecting the clients still
connected). A blocking call submits the matching coroutine of the asyncio client to that loop
and waits for its result, so it raises exactly the same exceptions, and it works from any
number of threads at once and from code that already runs an event loop (a Jupyter cell, a
coroutine under ``asyncio.run``), whose loop is simply blocked for the duration of the call.

Callbacks (``subscribe(callback=...)``, ``on_connect``, ``on_disconnect``, ``Shadow.on_delta``)
run on the background loop thread. A blocking call made there (from a callback) would wait for
the very loop it blocks, so it raises ``RuntimeError`` instead; in a callback use
``client.publish_nowait(...)``, or make the callback ``async`` and await the asyncio client
(``client.aio``). Calls that never wait (``publish_nowait``, ``stats``, the properties) work
from every thread, callbacks included.

After ``os.fork()`` the child has no background thread: a sync client created before the fork
raises ``RuntimeError`` in the child (as the asyncio client does), and a client created in the
child works.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from . import client as _client
from ._compat import timeout as _timeout
from ._dispatch import logger
from .auth import CustomAuth, MtlsAuth, PathLike, SigV4Auth
from .config import ConnectResult, OfflineQueue, Payload, PolicyViolationCheck, Reconnect, Will
from .errors import ClientClosedError, QueueFullError

if TYPE_CHECKING:
    from types import TracebackType

    from ._native import Message
    from .jobs import Jobs as _AsyncJobs
    from .provisioning import (
        CreateCertificateFromCsrResponse,
        CreateKeysAndCertificateResponse,
        FleetProvisioning as _AsyncFleetProvisioning,
        RegisterThingResponse,
    )
    from .shadow import Shadow as _AsyncShadow
    from .subscription import Callback, Subscription as _AsyncSubscription

__all__ = ["Client", "FleetProvisioning", "Jobs", "Shadow", "Subscription", "SyncIterator"]

_T = TypeVar("_T")
_UNSET: Any = object()

#: Messages a sync ``Subscription`` takes from the loop per crossing, at most.
_PREFETCH = 256
#: Seconds the interpreter-exit hook spends disconnecting open clients, then stopping the loop.
_EXIT_DISCONNECT_TIMEOUT = 1.0
_EXIT_JOIN_TIMEOUT = 0.5

_FORK_MESSAGE = (
    "this awsiot_rs.sync object was created in another process: a client cannot be used across "
    "fork() (the child has no copy of the background event loop thread); create a new "
    "awsiot_rs.sync.Client in the child"
)
_ON_LOOP_MESSAGE = (
    "a blocking awsiot_rs.sync call was made on the awsiot_rs background event loop thread "
    "(from a callback, on_connect or on_disconnect?): it would wait for the loop it blocks and "
    "deadlock. In a callback use client.publish_nowait(...), or make the callback async and "
    "await the asyncio client (client.aio), or hand the work to another thread"
)


# -- the shared background loop ----------------------------------------------------------------


class _LoopThread:
    """One asyncio event loop running forever on one daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._stopping = False
        self.thread = threading.Thread(target=self._main, name="awsiot_rs-sync-loop", daemon=True)
        self.thread.start()  # the thread's ident is known once start() returns

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            while not self._stopping:
                try:
                    self.loop.run_forever()
                except BaseException:  # noqa: BLE001 - e.g. SystemExit raised by a callback
                    # asyncio lets KeyboardInterrupt/SystemExit out of run_forever; every sync
                    # client of the process depends on this loop, so it keeps running.
                    logger.exception("awsiot_rs.sync: an exception escaped a callback on the background loop")
        finally:
            asyncio.set_event_loop(None)

    def stop(self, timeout: float) -> None:
        """Stops the loop and waits up to ``timeout`` seconds for the thread to end."""
        self._stopping = True
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout)


_lock = threading.Lock()
_runner: _LoopThread | None = None
_stopped = False
#: Incremented in a forked child: objects created before the fork can tell without getpid().
_generation = 0
#: The asyncio clients behind the sync clients of this process (disconnected at exit).
_clients: weakref.WeakSet[_client.Client] = weakref.WeakSet()


def _get_runner() -> _LoopThread:
    global _runner
    r = _runner
    if r is not None:
        return r
    with _lock:
        if _stopped:
            raise RuntimeError("the awsiot_rs.sync event loop has been stopped (the interpreter is exiting)")
        if _runner is None:
            _runner = _LoopThread()
        return _runner


def _at_exit() -> None:
    """Disconnects the sync clients still connected (DISCONNECT is sent) and stops the loop,
    in at most about 1.5 s."""
    global _stopped
    with _lock:
        _stopped = True
        r = _runner
    if r is None or not r.thread.is_alive():
        return
    clients = list(_clients)

    async def disconnect_all() -> None:
        tasks = [asyncio.ensure_future(c.disconnect()) for c in clients]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_EXIT_DISCONNECT_TIMEOUT)
            for t in pending:
                t.cancel()
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                logger.debug("awsiot_rs.sync: disconnect at exit failed: %s", t.exception())

    fut = asyncio.run_coroutine_threadsafe(disconnect_all(), r.loop)
    try:
        fut.result(_EXIT_DISCONNECT_TIMEOUT + 0.25)
    except BaseException:  # noqa: BLE001 - exiting: nothing to report to
        fut.cancel()
    r.stop(_EXIT_JOIN_TIMEOUT)


def _after_fork_in_child() -> None:
    """The child has no loop thread: forget it (a new one starts at first use)."""
    global _lock, _runner, _generation, _clients
    _lock = threading.Lock()  # it may have been held by another thread at fork time
    _runner = None
    _generation += 1
    _clients = weakref.WeakSet()


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Bridge:
    """Runs work on the shared loop for the objects of one sync client and waits for it."""

    __slots__ = ("_generation",)

    def __init__(self) -> None:
        self._generation = _generation

    def check(self) -> _LoopThread:
        """The loop to use; raises ``RuntimeError`` after a fork or on the loop thread."""
        if self._generation != _generation:
            raise RuntimeError(_FORK_MESSAGE)
        r = _get_runner()
        if threading.get_ident() == r.thread.ident:
            raise RuntimeError(_ON_LOOP_MESSAGE)
        return r

    def check_process(self) -> None:
        """Raises ``RuntimeError`` in a forked child (for calls that do not wait)."""
        if self._generation != _generation:
            raise RuntimeError(_FORK_MESSAGE)

    def wait(self, factory: Callable[[], Awaitable[_T]]) -> _T:
        """Calls ``factory()`` on the loop thread, awaits what it returns there and returns
        its result (or raises its exception) here. Interrupting the wait (``Ctrl-C``) cancels
        the awaiting on the loop, as cancelling a task does in asyncio.

        A future returned by ``factory`` is awaited as is (no task per call: a QoS 0
        ``publish`` returns an already completed one); a coroutine runs as a task."""
        r = self.check()
        result: concurrent.futures.Future[_T] = concurrent.futures.Future()
        started: list[asyncio.Future[_T]] = []

        def transfer(fut: asyncio.Future[_T]) -> None:
            if not fut.cancelled():
                fut.exception()  # retrieved here, whether or not the caller still waits
            try:
                if fut.cancelled():
                    result.cancel()
                elif (exc := fut.exception()) is not None:
                    result.set_exception(exc)
                else:
                    result.set_result(fut.result())
            except concurrent.futures.InvalidStateError:
                pass  # the caller gave up waiting (cancelled) in the meantime

        def start() -> None:
            if result.cancelled():
                return
            try:
                fut = asyncio.ensure_future(factory())
            except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    result.set_exception(e)
                return
            started.append(fut)
            if fut.done():
                transfer(fut)
            else:
                fut.add_done_callback(transfer)

        r.loop.call_soon_threadsafe(start)
        try:
            return result.result()
        except BaseException:
            if result.cancel():
                r.loop.call_soon_threadsafe(lambda: [f.cancel() for f in started])
            raise

    def call(self, fn: Callable[[], _T]) -> _T:
        """Calls ``fn()`` on the loop thread (for code that must run there but does not wait)."""

        async def run() -> _T:
            return fn()

        return self.wait(run)


# -- subscriptions and streams ----------------------------------------------------------------


class Subscription:
    """The messages of one ``subscribe()`` call (or every message, for ``Client.messages()``),
    blocking.

    Iterate it (``for msg in sub:``) or call ``get(timeout=...)``. Like the asyncio
    subscription, it lives until ``unsubscribe()`` (or leaving ``with sub:``) and survives
    ``disconnect()`` + ``connect()``; while the client is disconnected an iteration ends once
    the queued messages are taken. With a callback, messages go to the callback (on the
    background loop thread) instead. Safe to use from several threads.
    """

    def __init__(self, bridge: _Bridge, aio: _AsyncSubscription) -> None:
        self._bridge = bridge
        self._aio = aio
        self._ready: deque[Message] = deque()

    @property
    def aio(self) -> _AsyncSubscription:
        """The asyncio ``Subscription`` behind this one (use it only on the background loop)."""
        return self._aio

    @property
    def topic_filters(self) -> list[str]:
        """The filters of this subscription (empty for ``messages()``)."""
        return self._aio.topic_filters

    @property
    def granted_qos(self) -> list[int]:
        """The QoS the broker granted, one entry per filter."""
        return self._aio.granted_qos

    @property
    def closed(self) -> bool:
        """Whether the subscription has ended and every queued message was taken."""
        return self._aio.closed and not self._ready

    def pending(self) -> int:
        """Messages received but not yet taken."""
        return len(self._ready) + self._aio.pending()

    async def _fill(self, timeout: float | None) -> bool:
        """On the loop: waits (at most ``timeout``) for one message, then takes the ones
        already there too (up to ``_PREFETCH``). False when the iteration has ended. A message
        is never lost to a timeout: it stays queued until it is taken."""
        aio = self._aio
        async with _timeout(timeout):
            try:
                first = await aio.__anext__()
            except StopAsyncIteration:
                return False
        self._ready.append(first)
        for _ in range(_PREFETCH - 1):
            if aio.pending() == 0:
                break
            try:
                self._ready.append(await aio.__anext__())
            except StopAsyncIteration:
                break
        return True

    def _next(self, timeout: float | None) -> Message | None:
        while True:
            try:
                return self._ready.popleft()
            except IndexError:
                pass
            if not self._bridge.wait(lambda: self._fill(timeout)):
                return None

    def get(self, timeout: float | None = None) -> Message:
        """The next message, waiting at most ``timeout`` seconds (forever when None).

        Raises ``TimeoutError`` when none came in time, ``ClientClosedError`` when the
        subscription has ended (unsubscribed) or the client is disconnected and nothing is
        queued, and ``SubscribeError`` if the broker refused the filter on a reconnect."""
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0 or None")
        message = self._next(timeout)
        if message is None:
            if self._aio.closed:
                raise ClientClosedError(f"the subscription {self.topic_filters!r} has ended: no more messages")
            raise ClientClosedError("the client is not connected: no more messages until the next connect()")
        return message

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        message = self._next(None)
        if message is None:
            raise StopIteration
        return message

    def unsubscribe(self) -> None:
        """Ends this subscription; filters no other subscription uses are unsubscribed at the
        broker (returns after UNSUBACK)."""
        self._bridge.wait(self._aio.unsubscribe)

    def close_nowait(self) -> None:
        """Ends this subscription without waiting for the broker."""
        self._bridge.call(self._aio.close_nowait)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bridge.wait(lambda: self._aio.__aexit__(exc_type, exc, tb))

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<awsiot_rs.sync.Subscription {self.topic_filters!r} {state} pending={self.pending()}>"


class _End:
    """What a stream's pump queues last: the end of the stream, or the error it ended with."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


def _cancel_soon(task: asyncio.Task[Any]) -> None:
    """Cancels ``task`` on its loop, from any thread."""
    task.get_loop().call_soon_threadsafe(task.cancel)


class SyncIterator(Generic[_T]):
    """A blocking iterator over one of the asyncio API's streams (``Shadow.deltas()``,
    ``Shadow.documents()``, ``Jobs.notify()``, ``Jobs.notify_next()``).

    The stream starts on the background loop as soon as the iterator is created: its
    SUBSCRIBE is queued before the constructor returns, so it goes out ahead of any later
    operation of the same client (a ``shadow.update()`` made next finds the delta subscription
    in place at the broker). Items wait in a one-item hand-over
    queue, so a slow reader slows the subscription down (its own bounded queue applies).
    ``close()`` (or leaving ``with``, or dropping the iterator) ends it and releases its
    subscription.
    """

    def __init__(self, bridge: _Bridge, stream: AsyncIterator[_T]) -> None:
        self._bridge = bridge
        self._ended: _End | None = None

        async def start() -> tuple[asyncio.Queue[_T | _End], asyncio.Task[None]]:
            queue: asyncio.Queue[_T | _End] = asyncio.Queue(maxsize=1)
            task = asyncio.ensure_future(self._pump(stream, queue))
            await asyncio.sleep(0)  # the pump's first step runs: its SUBSCRIBE is queued
            return queue, task

        self._queue, self._task = bridge.wait(start)
        # Dropped without close(): stop the pump (and release the subscription) on the loop.
        self._finalizer = weakref.finalize(self, _cancel_soon, self._task)
        self._finalizer.atexit = False

    @staticmethod
    async def _pump(stream: AsyncIterator[_T], queue: asyncio.Queue[_T | _End]) -> None:
        """On the loop: moves the stream's items into ``queue``, then its end."""
        try:
            async for item in stream:
                await queue.put(item)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - handed to the reader
            await queue.put(_End(e))
        else:
            await queue.put(_End(None))
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    def _next(self, timeout: float | None) -> _T | _End:
        if self._ended is not None:
            return self._ended

        async def next_item() -> _T | _End:
            async with _timeout(timeout):
                return await self._queue.get()

        item = self._bridge.wait(next_item)
        if isinstance(item, _End):
            self._ended = item
        return item

    def __iter__(self) -> Iterator[_T]:
        return self

    def __next__(self) -> _T:
        item = self._next(None)
        if isinstance(item, _End):
            if item.error is not None:
                raise item.error
            raise StopIteration
        return item

    def get(self, timeout: float | None = None) -> _T:
        """The next item, waiting at most ``timeout`` seconds (``TimeoutError``; nothing is
        lost); raises ``ClientClosedError`` when the stream has ended (closed, or the client
        disconnected)."""
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0 or None")
        item = self._next(timeout)
        if isinstance(item, _End):
            if item.error is not None:
                raise item.error
            raise ClientClosedError("the stream has ended: no more items")
        return item

    def close(self) -> None:
        """Ends the stream (its subscription is released)."""
        if self._ended is None:
            self._ended = _End(None)
        task = self._task

        async def stop() -> None:
            task.cancel()
            await asyncio.wait([task])

        self._bridge.wait(stop)

    def __enter__(self) -> SyncIterator[_T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- services ------------------------------------------------------------------------------


class Shadow:
    """One thing's Device Shadow, blocking (``client.shadow("thing")`` or
    ``client.shadow("thing", "name")``). Same behaviour and exceptions as
    :class:`awsiot_rs.Shadow` (``ShadowRejected`` for a ``/rejected`` answer)."""

    def __init__(self, bridge: _Bridge, aio: _AsyncShadow) -> None:
        self._bridge = bridge
        self._aio = aio

    @property
    def aio(self) -> _AsyncShadow:
        """The asyncio ``Shadow`` behind this one."""
        return self._aio

    @property
    def thing_name(self) -> str:
        """The thing's name."""
        return self._aio.thing_name

    @property
    def name(self) -> str | None:
        """The shadow's name (None for the classic shadow)."""
        return self._aio.name

    def get(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The whole shadow document (``state``, ``metadata``, ``version``, ``timestamp``,
        ``clientToken``)."""
        return self._bridge.wait(lambda: self._aio.get(timeout=timeout))

    def update(
        self,
        desired: dict[str, Any] | None = _UNSET,
        reported: dict[str, Any] | None = _UNSET,
        *,
        version: int | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Partially updates the shadow and returns the ``/update/accepted`` document. ``None``
        inside a dict deletes that key; ``desired=None`` deletes the whole section;
        ``version`` enables optimistic locking (``ShadowRejected`` with code 409)."""
        kwargs: dict[str, Any] = {"version": version, "timeout": timeout}
        if desired is not _UNSET:
            kwargs["desired"] = desired
        if reported is not _UNSET:
            kwargs["reported"] = reported
        return self._bridge.wait(lambda: self._aio.update(**kwargs))

    def delete(self, *, timeout: float | None = None) -> dict[str, Any]:
        """Deletes the shadow."""
        return self._bridge.wait(lambda: self._aio.delete(timeout=timeout))

    def deltas(self) -> SyncIterator[dict[str, Any]]:
        """``/update/delta`` documents, newest versions only, as a blocking iterator."""
        return SyncIterator(self._bridge, self._aio.deltas())

    def documents(self) -> SyncIterator[dict[str, Any]]:
        """``/update/documents`` documents, newest versions only, as a blocking iterator."""
        return SyncIterator(self._bridge, self._aio.documents())

    def on_delta(self, callback: Callable[[dict[str, Any]], None | Awaitable[None]]) -> Subscription:
        """Calls ``callback(document)`` for each delta, on the background loop thread; returns
        the subscription (``unsubscribe()`` stops it)."""
        return Subscription(self._bridge, self._bridge.wait(lambda: self._aio.on_delta(callback)))

    def __repr__(self) -> str:
        return f"<awsiot_rs.sync.Shadow thing={self.thing_name!r} name={self.name!r}>"


class FleetProvisioning:
    """The fleet provisioning MQTT API, blocking (``client.fleet_provisioning()``). Same
    results and exceptions as :class:`awsiot_rs.FleetProvisioning`
    (``ProvisioningRejected``)."""

    def __init__(self, bridge: _Bridge, aio: _AsyncFleetProvisioning) -> None:
        self._bridge = bridge
        self._aio = aio

    @property
    def fmt(self) -> str:
        """``"json"`` or ``"cbor"``."""
        return self._aio.fmt

    def create_keys_and_certificate(self, *, timeout: float | None = None) -> CreateKeysAndCertificateResponse:
        """AWS creates a key pair and a certificate (``.save(cert_path, key_path)`` writes them)."""
        return self._bridge.wait(lambda: self._aio.create_keys_and_certificate(timeout=timeout))

    def create_certificate_from_csr(
        self, csr_pem: str | bytes, *, timeout: float | None = None
    ) -> CreateCertificateFromCsrResponse:
        """AWS signs your certificate signing request."""
        return self._bridge.wait(lambda: self._aio.create_certificate_from_csr(csr_pem, timeout=timeout))

    def register_thing(
        self,
        template_name: str,
        parameters: dict[str, str] | None = None,
        *,
        certificate_ownership_token: str,
        timeout: float | None = None,
    ) -> RegisterThingResponse:
        """Registers the thing with a provisioning template and activates the certificate."""
        return self._bridge.wait(
            lambda: self._aio.register_thing(
                template_name, parameters, certificate_ownership_token=certificate_ownership_token, timeout=timeout
            )
        )

    def __repr__(self) -> str:
        return f"<awsiot_rs.sync.FleetProvisioning fmt={self.fmt!r}>"


class Jobs:
    """One thing's jobs, blocking (``client.jobs("thing")``). Same results and exceptions as
    :class:`awsiot_rs.Jobs` (``JobRejected``)."""

    def __init__(self, bridge: _Bridge, aio: _AsyncJobs) -> None:
        self._bridge = bridge
        self._aio = aio

    @property
    def thing_name(self) -> str:
        """The thing's name."""
        return self._aio.thing_name

    def get_pending(self, *, timeout: float | None = None) -> dict[str, Any]:
        """GetPendingJobExecutions: ``inProgressJobs`` and ``queuedJobs`` summaries."""
        return self._bridge.wait(lambda: self._aio.get_pending(timeout=timeout))

    def start_next(
        self,
        *,
        status_details: dict[str, str] | None = None,
        step_timeout_minutes: int | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any] | None:
        """StartNextPendingJobExecution: the execution now ``IN_PROGRESS``, or None."""
        return self._bridge.wait(
            lambda: self._aio.start_next(
                status_details=status_details, step_timeout_minutes=step_timeout_minutes, timeout=timeout
            )
        )

    def describe(
        self, job_id: str = "$next", *, include_job_document: bool = True, timeout: float | None = None
    ) -> dict[str, Any] | None:
        """DescribeJobExecution (``$next``: the next pending one); None when there is none."""
        return self._bridge.wait(
            lambda: self._aio.describe(job_id, include_job_document=include_job_document, timeout=timeout)
        )

    def update(
        self,
        job_id: str,
        status: str,
        *,
        status_details: dict[str, str] | None = None,
        expected_version: int | None = None,
        include_job_execution_state: bool = True,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """UpdateJobExecution (``IN_PROGRESS``, ``SUCCEEDED``, ``FAILED``, ``REJECTED``)."""
        return self._bridge.wait(
            lambda: self._aio.update(
                job_id,
                status,
                status_details=status_details,
                expected_version=expected_version,
                include_job_execution_state=include_job_execution_state,
                timeout=timeout,
            )
        )

    def notify(self) -> SyncIterator[dict[str, Any]]:
        """JobExecutionsChanged notifications, as a blocking iterator."""
        return SyncIterator(self._bridge, self._aio.notify())

    def notify_next(self) -> SyncIterator[dict[str, Any]]:
        """NextJobExecutionChanged notifications, as a blocking iterator."""
        return SyncIterator(self._bridge, self._aio.notify_next())

    def __repr__(self) -> str:
        return f"<awsiot_rs.sync.Jobs thing={self.thing_name!r}>"


# -- the client ----------------------------------------------------------------------------


class Client:
    """A blocking MQTT 3.1.1 client for AWS IoT Core: :class:`awsiot_rs.Client` without
    ``await``.

    Same arguments, same operations, same exceptions; ``with Client(...) as client:``
    connects and disconnects. See the module documentation for threads, callbacks (they run on
    the shared background loop thread) and ``fork()``.
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
        reconnect: Reconnect | None = Reconnect(),
        offline_queue: OfflineQueue = OfflineQueue(),
        operation_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        limits: Literal["aws", "mqtt"] = "aws",
        log_file: PathLike | None = None,
        inflight: int = 100,
        max_subscriptions: int | None = None,
        policy_violation: PolicyViolationCheck | None = PolicyViolationCheck(),
        proxy: str | None = None,
        on_connect: _client.LifecycleCallback | None = None,
        on_disconnect: _client.LifecycleCallback | None = None,
    ) -> None:
        self._bridge = _Bridge()
        self._aio = _client.Client(
            endpoint,
            client_id=client_id,
            port=port,
            auth=auth,
            ca=ca,
            tls=tls,
            alpn=alpn,
            username=username,
            password=password,
            keep_alive=keep_alive,
            clean_session=clean_session,
            will=will,
            reconnect=reconnect,
            offline_queue=offline_queue,
            operation_timeout=operation_timeout,
            connect_timeout=connect_timeout,
            limits=limits,
            log_file=log_file,
            inflight=inflight,
            max_subscriptions=max_subscriptions,
            policy_violation=policy_violation,
            proxy=proxy,
            on_connect=on_connect,
            on_disconnect=on_disconnect,
        )
        self._entered = False

    @property
    def aio(self) -> _client.Client:
        """The asyncio :class:`awsiot_rs.Client` behind this one. Await its methods only on the
        background loop thread, i.e. from ``async`` callbacks."""
        return self._aio

    # -- properties -------------------------------------------------------------------------

    @property
    def client_id(self) -> str:
        """The MQTT client id (generated as ``awsiot-rs-<hex>`` when not given)."""
        return self._aio.client_id

    @property
    def is_connected(self) -> bool:
        """Whether a connection is up right now."""
        return self._aio.is_connected

    @property
    def session_present(self) -> bool:
        """The session-present flag of the last CONNACK."""
        return self._aio.session_present

    def stats(self) -> dict[str, int]:
        """Counters (``messages_sent``, ``messages_received``, ``bytes_sent``,
        ``bytes_received``, ``inflight``, ``queued``, ``dropped``, ``reconnects``,
        ``unrouted``), as :meth:`awsiot_rs.Client.stats`."""
        return self._aio.stats()

    # -- connection -------------------------------------------------------------------------

    def connect(self) -> ConnectResult:
        """Connects; raises if this first attempt fails (``ConnectError``, ``TlsError``,
        ``AuthError``, ...). Once connected, automatic reconnect keeps the connection up."""
        result = self._bridge.wait(self._aio.connect)
        _clients.add(self._aio)
        return result

    def disconnect(self) -> None:
        """Sends DISCONNECT and fails queued operations with ``ClientClosedError``; open
        subscriptions stay (re-subscribed by the next ``connect()``)."""
        self._bridge.wait(self._aio.disconnect)

    def __enter__(self) -> Client:
        if self._entered:
            raise RuntimeError("this Client is already in a 'with' block (not re-entrant)")
        self.connect()
        self._entered = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.disconnect()
        finally:
            self._entered = False

    # -- publish ----------------------------------------------------------------------------

    def publish(self, topic: str, payload: Payload = b"", *, qos: int = 0, retain: bool = False) -> None:
        """Publishes a message: QoS 1 returns at its PUBACK, QoS 0 once accepted for sending.
        ``payload`` may be bytes-like, ``str`` (UTF-8) or ``dict``/``list`` (JSON)."""
        if qos == 0:
            # QoS 0 completes once queued: the same core call as publish_nowait, made from this
            # thread; only a momentarily full submission queue needs the loop to wait for room.
            self._bridge.check()
            try:
                self._aio.publish_nowait(topic, payload, qos=0, retain=retain)
                return
            except QueueFullError as e:
                if not e.retry_when_writable:
                    raise
        self._bridge.wait(lambda: self._aio.publish(topic, payload, qos=qos, retain=retain))

    def publish_many(
        self, messages: Iterable[tuple[str, Payload]], *, qos: int = 0, retain: bool = False
    ) -> None:
        """Publishes many ``(topic, payload)`` messages with one crossing into the core; QoS 1
        returns when all are acknowledged (raising the first error if one failed)."""
        items = list(messages)
        self._bridge.wait(lambda: self._aio.publish_many(items, qos=qos, retain=retain))

    def publish_nowait(self, topic: str, payload: Payload = b"", *, qos: int = 0, retain: bool = False) -> None:
        """Fire-and-forget publish: validates, queues and returns without waiting (QoS 1 is
        still acknowledged and retried). Raises ``QueueFullError`` / ``DisconnectedError``
        instead of waiting. Works from every thread, callbacks included."""
        self._bridge.check_process()
        self._aio.publish_nowait(topic, payload, qos=qos, retain=retain)

    # -- subscribe --------------------------------------------------------------------------

    def subscribe(
        self,
        topic_filter: str | Iterable[str],
        *,
        qos: int = 1,
        callback: Callback | None = None,
        queue_size: int = 10000,
    ) -> Subscription:
        """Subscribes to one filter or a list of filters and returns after SUBACK
        (``SubscribeError`` if the broker refused). Iterate the result, or pass ``callback``
        (plain or ``async``; it runs on the background loop thread)."""
        filters = topic_filter if isinstance(topic_filter, str) else list(topic_filter)
        sub = self._bridge.wait(
            lambda: self._aio.subscribe(filters, qos=qos, callback=callback, queue_size=queue_size)
        )
        return Subscription(self._bridge, sub)

    def unsubscribe(self, topic_filter: str | Iterable[str]) -> None:
        """Unsubscribes filters at the broker (returns after UNSUBACK)."""
        filters = topic_filter if isinstance(topic_filter, str) else list(topic_filter)
        self._bridge.wait(lambda: self._aio.unsubscribe(filters))

    def messages(self, *, queue_size: int = 10000) -> Subscription:
        """Every message this client receives, whatever the subscription. May be opened before
        ``connect()`` (a persistent session's stored messages then have a taker)."""
        return Subscription(self._bridge, self._bridge.call(lambda: self._aio.messages(queue_size=queue_size)))

    # -- services ---------------------------------------------------------------------------

    def shadow(self, thing_name: str, name: str | None = None) -> Shadow:
        """The Device Shadow of ``thing_name`` (classic when ``name`` is None)."""
        return Shadow(self._bridge, self._aio.shadow(thing_name, name))

    def fleet_provisioning(self, fmt: str = "json") -> FleetProvisioning:
        """The fleet provisioning MQTT API (CreateKeysAndCertificate, CreateCertificateFromCsr,
        RegisterThing); ``fmt="cbor"`` uses the CBOR topics."""
        return FleetProvisioning(self._bridge, self._aio.fleet_provisioning(fmt))

    def jobs(self, thing_name: str) -> Jobs:
        """The jobs MQTT API of ``thing_name``."""
        return Jobs(self._bridge, self._aio.jobs(thing_name))

    def __repr__(self) -> str:
        return "<awsiot_rs.sync" + repr(self._aio)[len("<awsiot_rs") :]
