"""``Subscription``: the messages of one ``subscribe()`` call, as an async iterator or
delivered to a callback."""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Union

from . import _native
from ._dispatch import Dispatcher, logger

if TYPE_CHECKING:
    from types import TracebackType

    from ._native import Message
    from .client import Client

__all__ = ["Callback", "Subscription"]

#: A subscription callback: plain or ``async``; it receives each ``Message``.
Callback = Callable[["Message"], Union[None, Awaitable[None]]]

_BATCH = 512


class Subscription:
    """The messages matching one ``subscribe()`` call (or every message, for
    ``Client.messages()``).

    Iterate it with ``async for``; the iteration ends when the subscription is closed (by
    ``unsubscribe()``, ``client.disconnect()``, or leaving ``async with``). With a callback
    the client delivers each message to it on the event loop thread instead.

    Its queue is bounded (``queue_size``): when full, QoS 0 messages are dropped (counted in
    ``stats()["dropped"]``) and QoS 1 messages hold back acknowledgements so the broker slows
    down (no loss).
    """

    def __init__(
        self,
        client: Client,
        ref: _native.SubscriptionRef,
        dispatcher: Dispatcher,
        topic_filters: list[str],
        callback: Callback | None,
        queue_size: int,
    ) -> None:
        self._client = client
        self._ref = ref
        self._dispatcher = dispatcher
        self._filters = topic_filters
        self._granted: list[int] = []
        self._callback = callback
        self._buffer: deque[Message] = deque()
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False
        self._callback_task: asyncio.Task[None] | None = None
        self._is_async_callback = callback is not None and inspect.iscoroutinefunction(callback)
        self._batch = max(1, min(_BATCH, queue_size))
        dispatcher.add_source(ref.id, self._on_ready)

    @property
    def topic_filters(self) -> list[str]:
        """The filters of this subscription (empty for ``messages()``)."""
        return list(self._filters)

    @property
    def granted_qos(self) -> list[int]:
        """The QoS the broker granted, one entry per filter."""
        return list(self._granted)

    @property
    def closed(self) -> bool:
        """Whether the subscription has ended and every queued message was taken."""
        return self._closed

    def _on_ready(self) -> None:
        if self._callback is not None and not self._is_async_callback:
            self._run_sync_callbacks()
            return
        if self._is_async_callback and (self._callback_task is None or self._callback_task.done()):
            # One task per subscription awaits the callbacks in order.
            self._callback_task = self._dispatcher.loop.create_task(
                self._run_async_callbacks(), name=f"awsiot_rs-callback-{self._ref.id}"
            )
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _take(self) -> bool:
        """Moves a batch from the native queue into the buffer; returns False once closed.
        A batch is at most ``queue_size`` messages, so the buffer never holds more than the
        queue's bound and backpressure keeps working."""
        messages, closed = self._ref.pop_batch(self._batch)
        if messages:
            self._buffer.extend(messages)
        elif closed:
            self._finish()
            return False
        return True

    def _finish(self) -> None:
        if not self._closed:
            self._closed = True
            self._dispatcher.remove_source(self._ref.id)
            self._client._forget(self)

    def _run_sync_callbacks(self) -> None:
        callback = self._callback
        assert callback is not None
        while True:
            messages, closed = self._ref.pop_batch(self._batch)
            for m in messages:
                try:
                    callback(m)
                except Exception:
                    logger.exception("awsiot_rs: subscription callback raised (delivery continues)")
            if not messages:
                if closed:
                    self._finish()
                return

    async def _run_async_callbacks(self) -> None:
        callback = self._callback
        assert callback is not None
        async for m in self:
            try:
                result = callback(m)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("awsiot_rs: subscription callback raised (delivery continues)")

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        while True:
            if self._buffer:
                return self._buffer.popleft()
            if self._closed or not self._take():
                raise StopAsyncIteration
            if self._buffer:
                continue
            waiter: asyncio.Future[None] = self._dispatcher.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def pending(self) -> int:
        """Messages received but not yet taken."""
        return len(self._buffer) + len(self._ref)

    async def unsubscribe(self) -> None:
        """Ends this subscription. Filters no other subscription uses are unsubscribed at
        the broker; returns after UNSUBACK (at once if nothing had to be sent)."""
        if self._ref_closed():
            return
        token, fut = self._dispatcher.new_future()
        try:
            self._ref.close(token)
        except BaseException:
            self._dispatcher.discard(token)
            raise
        await fut

    def _ref_closed(self) -> bool:
        return self._closed

    def close_nowait(self) -> None:
        """Ends this subscription without waiting for the broker."""
        if not self._closed:
            self._ref.close(None)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._closed and self._client.is_connected:
            await self.unsubscribe()
        else:
            self.close_nowait()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Subscription {self._filters!r} {state} pending={self.pending()}>"


