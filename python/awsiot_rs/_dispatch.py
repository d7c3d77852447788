"""One dispatcher per asyncio loop: turns the native notifier's batched items into future
results, subscription wake-ups and lifecycle callbacks, all on the loop thread.

How the loop learns that items are waiting (the *mode*, chosen once per loop, see
``Dispatcher.mode``):

- ``"reader"``: the notifier's socket is watched with ``loop.add_reader`` (Unix loops);
- ``"threadsafe"``: for loops that cannot watch a file descriptor (Windows' default Proactor
  loop, any loop whose ``add_reader`` raises ``NotImplementedError``): a daemon thread per loop
  blocks in ``Notifier.wait()`` (GIL released) and calls ``loop.call_soon_threadsafe`` once per
  idle→signalled transition of the notifier, never per item. Tokio threads never take the GIL
  in either mode (``src/py/notifier.rs`` explains why this beats calling
  ``call_soon_threadsafe`` from the tokio side).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, Protocol, TypeVar

from . import _native
from .config import ConnectEvent, DisconnectEvent

logger = logging.getLogger("awsiot_rs")

__all__ = ["MAX_ITEMS_PER_WAKEUP", "Dispatcher", "Mode", "dispatcher_for", "flush_logs", "logger"]

#: Items (results, subscription wake-ups, lifecycle events) handled per loop turn at most. The
#: rest waits for the next turn, so a continuous inflow cannot starve other tasks and I/O.
MAX_ITEMS_PER_WAKEUP = 256

_R = TypeVar("_R")

#: How results reach the loop: ``"reader"`` (``loop.add_reader`` on the notifier's socket) or
#: ``"threadsafe"`` (a waiter thread and ``loop.call_soon_threadsafe``).
Mode = Literal["reader", "threadsafe"]


class _EventTarget(Protocol):
    """What the dispatcher calls on a client for its lifecycle items."""

    def _on_lifecycle(self, event: ConnectEvent | DisconnectEvent) -> None: ...

    def _on_credentials_request(self, request: int) -> None: ...


def flush_logs() -> None:
    """Emits the core's queued log records through the ``awsiot_rs`` logger."""
    _native.set_log_level(logger.getEffectiveLevel())
    for level, target, message in _native.drain_logs():
        if logger.isEnabledFor(level):
            logger.log(level, "%s", message, extra={"rust_target": target})


class _Source(Protocol):
    """What the dispatcher wakes when a subscription's queue has messages."""

    def _on_ready(self) -> None: ...


class Dispatcher:
    """Owns the loop's native notifier and routes what it reports.

    Exception safety: items drained from the notifier go to a backlog and are taken one at a
    time, so an exception escaping a callback (``KeyboardInterrupt``, ``SystemExit``,
    ``CancelledError``, any ``BaseException``) costs only the item that raised: it still
    propagates (to the loop, which stops on ``KeyboardInterrupt``/``SystemExit`` and reports the
    others to its exception handler), and the rest of the batch is handled on the next turn.
    The native notifier stays "signalled" (no wake-up byte) until a ``drain()`` comes back
    empty, so whenever a turn ends before that (budget spent, or an exception) the dispatcher
    schedules its own continuation with ``loop.call_soon``: the wake-up is always re-armed.
    This holds in both modes (``mode``): only what carries the wake-up differs.
    """

    #: ``"reader"`` or ``"threadsafe"``, chosen once, when the dispatcher is created.
    mode: Mode

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        native = _native.Notifier()
        self._futures: dict[int, asyncio.Future[Any]] = {}
        # Weak: an entry goes away by itself when its subscription object dies unclosed.
        self._sources: weakref.WeakValueDictionary[int, _Source] = weakref.WeakValueDictionary()
        self._clients: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self._backlog: deque[tuple[Any, ...]] = deque()
        self._continuation: asyncio.Handle | None = None
        self._tokens = itertools.count(1)
        #: An already-completed future: what QoS 0 ``publish`` returns (no allocation per call).
        self.done: asyncio.Future[None] = loop.create_future()
        self.done.set_result(None)
        self._waiter: threading.Thread | None = None
        try:
            # fileno() raises NotImplementedError off Unix (no descriptor there), add_reader on
            # loops that cannot watch file descriptors (Proactor, some third-party loops).
            loop.add_reader(native.fileno(), self._on_readable)
        except NotImplementedError:
            if not native.threadsafe:
                native = _native.Notifier(threadsafe=True)
            self.native = native
            self.mode = "threadsafe"
            # Nothing else on the loop holds this dispatcher (in reader mode its add_reader
            # callback does): the loop keeps it, so that both go away together.
            try:
                loop._awsiot_rs_dispatcher = self  # type: ignore[attr-defined]
            except (AttributeError, TypeError):  # no __dict__: kept for the process's life
                _PINNED.append(self)
            # Ends the waiter thread when the loop (and so this dispatcher) goes away, or at exit.
            weakref.finalize(self, native.close)
            self._ensure_waiter()
        else:
            self.native = native
            self.mode = "reader"

    def call(self, fn: Callable[..., object], *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Calls the native ``fn(*args, token, **kwargs)`` with a fresh token and returns the
        future the native side completes for that token. If ``fn`` raises, the token is
        forgotten and the exception propagates (nothing will ever complete it)."""
        token = next(self._tokens)
        fut: asyncio.Future[Any] = self.loop.create_future()
        self._futures[token] = fut
        try:
            fn(*args, token, **kwargs)
        except BaseException:
            self._futures.pop(token, None)
            raise
        return fut

    def call_with_result(
        self, fn: Callable[..., _R], *args: Any, **kwargs: Any
    ) -> tuple[_R, asyncio.Future[Any]]:
        """``call`` for a native function whose return value is wanted as well:
        ``(fn(*args, token, **kwargs), future)``."""
        token = next(self._tokens)
        fut: asyncio.Future[Any] = self.loop.create_future()
        self._futures[token] = fut
        try:
            result = fn(*args, token, **kwargs)
        except BaseException:
            self._futures.pop(token, None)
            raise
        return result, fut

    def add_source(self, source: int, target: _Source) -> None:
        """Calls ``target._on_ready()`` when subscription ``source`` has messages (``target``
        weakly held: the entry goes away by itself when the subscription object dies
        unclosed; one small weak reference per subscription, no closure)."""
        self._sources[source] = target

    def remove_source(self, source: int) -> None:
        """Stops reporting ``source``."""
        self._sources.pop(source, None)

    def add_client(self, client: _EventTarget) -> int:
        """Registers a client for lifecycle events; returns its token."""
        token = next(self._tokens)
        self._clients[token] = client
        return token

    def _ensure_waiter(self) -> None:
        """Threadsafe mode: starts the waiter thread unless it runs (it does not after a
        ``fork()``: the child has no copy of it)."""
        if self.mode != "threadsafe" or (self._waiter is not None and self._waiter.is_alive()):
            return
        thread = threading.Thread(
            target=_wait_and_schedule,
            args=(self.native, weakref.ref(self)),
            name="awsiot-rs-loop-waker",
            daemon=True,
        )
        thread.start()
        self._waiter = thread

    def _on_readable(self) -> None:
        self._pump()

    def _on_wakeup(self) -> None:
        """Threadsafe mode: scheduled by the waiter thread with ``call_soon_threadsafe``."""
        self._pump()

    def _resume(self) -> None:
        self._continuation = None
        self._pump()

    def _pump(self) -> None:
        """Handles up to ``MAX_ITEMS_PER_WAKEUP`` items, then yields to the loop."""
        backlog = self._backlog
        idle = False
        try:
            for _ in range(MAX_ITEMS_PER_WAKEUP):
                if not backlog:
                    # One statement: the drained items are in the backlog before any other
                    # Python code (or a signal handler) can run.
                    backlog.extend(self.native.drain())
                    if not backlog:
                        idle = True  # an empty drain re-armed the native wake-up
                        return
                self._dispatch(backlog.popleft())
        finally:
            if not idle and self._continuation is None:
                # Budget spent or a callback raised: nothing re-arms the notifier until a
                # drain() comes back empty, so continue on the next turn.
                self._continuation = self.loop.call_soon(self._resume)
            flush_logs()

    def _dispatch(self, item: tuple[Any, ...]) -> None:
        """Handles one notifier item. The item shapes (plain tuples, cheap to make per message)
        are unpacked into names here and nowhere else:

        - ``("ready", source)``: subscription ``source`` has messages;
        - ``("ops", [token, ...])``: futures completed with ``None`` (a run of them, in order: one
          item for many QoS 1 publishes, no tuple per operation);
        - ``("op", token, ok, value)``: the result (``ok``) or exception of future ``token``;
        - ``("connected", client, session_present, reconnect)``,
          ``("disconnected", client, reason, error_or_None)``,
          ``("credentials", client, request)``: lifecycle items of client ``client``.
        """
        kind = item[0]
        if kind == "ops":
            self._complete(item[1])
        elif kind == "ready":
            _, source = item
            target = self._sources.get(source)
            if target is not None:
                try:
                    target._on_ready()
                except Exception:  # pragma: no cover - callbacks guard themselves
                    logger.exception("awsiot_rs: subscription wake-up failed")
        elif kind == "op":
            _, token, ok, value = item
            fut = self._futures.pop(token, None)
            if fut is None or fut.done():
                return  # cancelled or timed out by the caller: the result is not wanted
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
        else:
            self._dispatch_lifecycle(item)

    def _complete(self, tokens: list[int]) -> None:
        """Completes the futures of ``tokens`` with ``None``. Runs no user code (``set_result``
        only schedules the futures' callbacks); should anything escape anyway (a signal handler
        raising between two tokens), the tokens not yet handled go back to the front of the
        backlog, so only the one being handled can be lost, as with any other item."""
        futures = self._futures
        done = 0
        try:
            for token in tokens:
                done += 1
                fut = futures.pop(token, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
        except BaseException:
            if done < len(tokens):
                self._backlog.appendleft(("ops", tokens[done:]))
            raise

    def _dispatch_lifecycle(self, item: tuple[Any, ...]) -> None:
        kind, client_token, *rest = item
        client = self._clients.get(client_token)
        if client is None:
            return
        try:
            if kind == "connected":
                session_present, reconnect = rest
                event = ConnectEvent(session_present=bool(session_present), reconnect=bool(reconnect))
                client._on_lifecycle(event)
            elif kind == "disconnected":
                reason, error = rest
                client._on_lifecycle(DisconnectEvent(reason=str(reason), error=error))
            else:  # "credentials"
                (request,) = rest
                client._on_credentials_request(int(request))
        except Exception:  # pragma: no cover - the client guards its callbacks
            logger.exception("awsiot_rs: lifecycle event handling failed")


def _wait_and_schedule(native: _native.Notifier, ref: weakref.ref[Dispatcher]) -> None:
    """The waiter thread of a threadsafe-mode dispatcher: one ``call_soon_threadsafe`` per
    idle→signalled transition of ``native``. Holds no strong reference to the dispatcher or its
    loop while blocked, so they can go away (which closes ``native`` and ends this thread)."""
    while native.wait():
        failures = 0
        while (outcome := _schedule(ref, log=failures == 0)) is None:
            # The loop refused for another reason than being closed: the wake-up must not be
            # lost (the notifier stays signalled until a drain), so keep trying, gently.
            failures += 1
            time.sleep(min(0.01 * failures, 1.0))
        if not outcome:
            return


def _schedule(ref: weakref.ref[Dispatcher], log: bool) -> bool | None:
    """Asks the dispatcher's loop to pump: ``True`` when done, ``False`` when there is nothing
    to wake any more (dispatcher gone, loop closed), ``None`` on another failure (logged if
    ``log``). The dispatcher is only referenced for the duration of this call."""
    d = ref()
    if d is None:
        return False
    try:
        d.loop.call_soon_threadsafe(d._on_wakeup)
    except Exception:
        if d.loop.is_closed():
            return False  # nothing will ever run there again
        if log:
            logger.exception("awsiot_rs: cannot wake the event loop; retrying")
        return None
    return True


#: Each loop's dispatcher, weakly: a dispatcher references its loop (``loop``, futures), so a
#: strong value would keep every loop ever used alive. The loop keeps its dispatcher instead
#: (its ``add_reader`` callback, or an attribute in threadsafe mode), so the two are collected
#: together once the loop is gone.
_DISPATCHERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.ref[Dispatcher]] = (
    weakref.WeakKeyDictionary()
)
#: Threadsafe-mode dispatchers of loops that cannot hold an attribute.
_PINNED: list[Dispatcher] = []


def dispatcher_for(loop: asyncio.AbstractEventLoop) -> Dispatcher:
    """The dispatcher of ``loop``, created on first use."""
    ref = _DISPATCHERS.get(loop)
    d = ref() if ref is not None else None
    if d is None:
        d = Dispatcher(loop)
        _DISPATCHERS[loop] = weakref.ref(d)
    elif d.mode == "threadsafe":
        d._ensure_waiter()
    return d
