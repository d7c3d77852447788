"""One dispatcher per asyncio loop: turns the native notifier's batched items into future
results, subscription wake-ups and lifecycle callbacks, all on the loop thread."""

from __future__ import annotations

import asyncio
import itertools
import logging
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from . import _native

logger = logging.getLogger("awsiot_rs")

__all__ = ["Dispatcher", "dispatcher_for", "flush_logs", "logger"]


class _EventTarget(Protocol):
    def _on_lifecycle(self, item: tuple[Any, ...]) -> None: ...


def flush_logs() -> None:
    """Emits the core's queued log records through the ``awsiot_rs`` logger."""
    _native.set_log_level(logger.getEffectiveLevel())
    for level, target, message in _native.drain_logs():
        if logger.isEnabledFor(level):
            logger.log(level, "%s", message, extra={"rust_target": target})


class Dispatcher:
    """Owns the loop's native notifier and routes what it reports."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.native = _native.Notifier()
        self._futures: dict[int, asyncio.Future[Any]] = {}
        self._sources: dict[int, weakref.WeakMethod[Callable[[], None]]] = {}
        self._clients: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self._tokens = itertools.count(1)
        #: An already-completed future: what QoS 0 ``publish`` returns (no allocation per call).
        self.done: asyncio.Future[None] = loop.create_future()
        self.done.set_result(None)
        loop.add_reader(self.native.fileno(), self._on_readable)

    def new_future(self) -> tuple[int, asyncio.Future[Any]]:
        """A fresh token and the future the native side will complete for it."""
        token = next(self._tokens)
        fut: asyncio.Future[Any] = self.loop.create_future()
        self._futures[token] = fut
        return token, fut

    def discard(self, token: int) -> None:
        """Forgets a token whose native call raised before it was submitted."""
        self._futures.pop(token, None)

    def add_source(self, source: int, on_ready: Callable[[], None]) -> None:
        """Calls ``on_ready()`` when subscription ``source`` has messages (weakly held)."""
        self._sources[source] = weakref.WeakMethod(on_ready)

    def remove_source(self, source: int) -> None:
        """Stops reporting ``source``."""
        self._sources.pop(source, None)

    def add_client(self, client: _EventTarget) -> int:
        """Registers a client for lifecycle events; returns its token."""
        token = next(self._tokens)
        self._clients[token] = client
        return token

    def _on_readable(self) -> None:
        try:
            while True:
                items = self.native.drain()
                if not items:
                    return
                self._dispatch(items)
        finally:
            flush_logs()

    def _dispatch(self, items: list[tuple[Any, ...]]) -> None:
        for item in items:
            kind = item[0]
            if kind == "ready":
                ref = self._sources.get(item[1])
                callback = ref() if ref is not None else None
                if callback is not None:
                    try:
                        callback()
                    except Exception:  # pragma: no cover - callbacks guard themselves
                        logger.exception("awsiot_rs: subscription wake-up failed")
            elif kind == "op":
                fut = self._futures.pop(item[1], None)
                if fut is None or fut.done():
                    continue  # cancelled or timed out by the caller: the result is not wanted
                if item[2]:
                    fut.set_result(item[3])
                else:
                    fut.set_exception(item[3])
            else:
                client = self._clients.get(item[1])
                if client is not None:
                    client._on_lifecycle(item)


_DISPATCHERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Dispatcher] = (
    weakref.WeakKeyDictionary()
)


def dispatcher_for(loop: asyncio.AbstractEventLoop) -> Dispatcher:
    """The dispatcher of ``loop``, created on first use."""
    d = _DISPATCHERS.get(loop)
    if d is None:
        d = Dispatcher(loop)
        _DISPATCHERS[loop] = d
    return d
