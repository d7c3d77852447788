"""``Subscription``: the messages of one ``subscribe()`` call, as an async iterator or
delivered to a callback."""

from __future__ import annotations

import asyncio
import html
import inspect
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, Union

from . import _native
from ._dispatch import Dispatcher, logger

if TYPE_CHECKING:
    from types import TracebackType

    from ._native import Message

__all__ = ["Callback", "Owner", "Subscription", "html_table"]

#: A subscription callback: plain or ``async``; it receives each ``Message``.
Callback = Callable[["Message"], Union[None, Awaitable[None]]]

_BATCH = 512


_NO_MESSAGES: deque[Any] = deque(maxlen=0)  # the shared empty buffer of idle subscriptions
_OPEN, _PAUSED, _CLOSED = 0, 1, 2

#: A row of :func:`html_table` whose value is this is a section heading.
SECTION: Any = object()


def html_table(title: str, rows: list[tuple[str, Any]]) -> str:
    """A small two-column HTML table for Jupyter's ``_repr_html_`` (every text escaped).
    A row ``(name, SECTION)`` is a heading spanning both columns."""
    out = [
        '<table style="border-collapse:collapse">',
        f'<caption style="text-align:left;font-weight:bold">{html.escape(title)}</caption>',
    ]
    for name, value in rows:
        if value is SECTION:
            out.append(f'<tr><th colspan="2" style="text-align:left">{html.escape(name)}</th></tr>')
        else:
            out.append(
                f'<tr><td style="text-align:left">{html.escape(name)}</td>'
                f'<td style="text-align:left"><code>{html.escape(str(value))}</code></td></tr>'
            )
    out.append("</table>")
    return "".join(out)


class Owner(Protocol):
    """What a subscription needs from the client that made it."""

    @property
    def is_connected(self) -> bool:
        """Whether a connection is up right now (``async with`` exit unsubscribes only then)."""

    def _forget(self, sub: Subscription) -> None:
        """Drops the client's reference to an ended subscription."""


class Subscription:
    """The messages matching one ``subscribe()`` call (or every message, for
    ``Client.messages()``).

    Iterate it with ``async for``. The subscription lives until ``unsubscribe()`` (or leaving
    ``async with``); it survives ``client.disconnect()`` + ``client.connect()`` (re-subscribed).
    While the client is disconnected an iteration ends once the queued messages are taken;
    iterate again after the next ``connect()``. With a callback the client delivers each
    message to it on the event loop thread instead, in order: any callable works, and whatever
    it returns that is awaitable is awaited before the next message.

    Its queue is bounded (``queue_size``): when full, QoS 0 messages are dropped (counted in
    ``stats()["dropped"]``) and QoS 1 messages hold back acknowledgements so the broker slows
    down (no loss). If the broker refuses the filter when a session is restored, the
    subscription ends with ``SubscribeError`` (raised by the iteration, logged for callbacks).
    """

    def __init__(
        self,
        client: Owner,
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
        # An idle subscription shares one empty buffer (760 B saved per subscription); the first
        # batch replaces it with its own deque (never appended to: maxlen 0 would drop items).
        self._buffer: deque[Message] = _NO_MESSAGES
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False
        self._error_raised = False
        #: The task awaiting an awaitable callback result (delivery continues from it).
        self._delivering: asyncio.Task[None] | None = None
        self._scheduled = False
        self._batch = max(1, min(_BATCH, queue_size))
        #: False once a ``pop_batch`` found the native queue open and left it empty: the queue
        #: then reports its next message (or its pause or end) through the notifier
        #: (``_on_ready``), so looking again before that would only take an empty batch.
        self._maybe_more = True
        dispatcher.add_source(ref.id, self)

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
        self._maybe_more = True
        if self._callback is not None:
            if self._delivering is None and not self._scheduled:
                self._deliver()
            return
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _take(self) -> int:
        """Moves a batch from the native queue into the buffer; returns the queue state
        (``_OPEN`` when messages came or may come). A batch is at most ``queue_size``
        messages, so the buffer never holds more than the queue's bound and backpressure
        keeps working."""
        if not self._maybe_more:
            return _OPEN  # empty, and the notifier will tell when that changes
        messages, state = self._ref.pop_batch(self._batch)
        # A short batch from an open queue emptied it, which re-armed its wake-up.
        self._maybe_more = state != _OPEN or len(messages) >= self._batch
        if messages:
            if self._buffer is _NO_MESSAGES:
                self._buffer = deque(messages)
            else:
                self._buffer.extend(messages)
            return _OPEN
        if state == _CLOSED:
            self._finish()
        return state

    def _finish(self) -> None:
        if not self._closed:
            self._closed = True
            self._dispatcher.remove_source(self._ref.id)
            self._client._forget(self)
            error = self._ref.error
            if error is not None and self._callback is not None:
                logger.error("awsiot_rs: subscription %r ended: %s", self._filters, error)

    def _schedule(self) -> None:
        """Continues callback delivery on the next loop turn (other work goes first)."""
        if not self._scheduled:
            self._scheduled = True
            self._dispatcher.loop.call_soon(self._resume_delivery)

    def _resume_delivery(self) -> None:
        self._scheduled = False
        if self._delivering is None:
            self._deliver()

    def _deliver(self) -> None:
        """Runs the callback for up to one batch of messages, then yields to the loop. An
        awaitable result hands delivery to a task that awaits it before the next message."""
        callback = self._callback
        assert callback is not None
        budget = self._batch
        try:
            while budget > 0:
                if not self._buffer and (self._take() != _OPEN or not self._buffer):
                    return
                message = self._buffer.popleft()
                budget -= 1
                try:
                    result = callback(message)
                except Exception:
                    logger.exception("awsiot_rs: subscription callback raised (delivery continues)")
                    continue
                if inspect.isawaitable(result):
                    self._delivering = self._dispatcher.loop.create_task(
                        self._deliver_async(result), name=f"awsiot_rs-callback-{self._ref.id}"
                    )
                    return
            self._schedule()
        except BaseException:
            # KeyboardInterrupt, SystemExit, ...: propagate, but keep the rest of the batch
            # (it is in the buffer) and keep delivering on the next turn.
            self._schedule()
            raise

    async def _deliver_async(self, first: Awaitable[Any]) -> None:
        """Awaits callback results one at a time, in order, until the queue is drained."""
        callback = self._callback
        assert callback is not None
        try:
            try:
                await first
            except Exception:
                logger.exception("awsiot_rs: subscription callback raised (delivery continues)")
            while self._buffer or self._take() == _OPEN:
                if not self._buffer:
                    break
                message = self._buffer.popleft()
                try:
                    result = callback(message)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    logger.exception("awsiot_rs: subscription callback raised (delivery continues)")
        finally:
            self._delivering = None
            if self._buffer:
                self._schedule()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        while True:
            if self._buffer:
                return self._buffer.popleft()
            if self._closed:
                self._raise_error()
                raise StopAsyncIteration
            state = self._take()
            if state != _OPEN:
                if state == _CLOSED:
                    self._raise_error()
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

    def _raise_error(self) -> None:
        """Raises the error the subscription ended with (once)."""
        if self._error_raised:
            return
        error = self._ref.error
        if error is not None:
            self._error_raised = True
            raise error

    def pending(self) -> int:
        """Messages received but not yet taken."""
        return len(self._buffer) + len(self._ref)

    async def unsubscribe(self) -> None:
        """Ends this subscription. Filters no other subscription uses are unsubscribed at
        the broker; returns after UNSUBACK (at once if nothing had to be sent)."""
        if self._ref_closed():
            return
        await self._dispatcher.call(self._ref.close)

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
        return f"<Subscription {self._filters!r} qos={self._granted!r} {state} pending={self.pending()}>"

    def _repr_html_(self) -> str:
        """Jupyter's view: each filter with its granted QoS, the state and the queue."""
        granted = self._granted
        rows: list[tuple[str, Any]] = [("filter", SECTION)] if self._filters else []
        for i, f in enumerate(self._filters):
            rows.append((f, f"QoS {granted[i]}" if i < len(granted) else "not acknowledged yet"))
        if not self._filters:
            rows.append(("filters", "every message (messages())"))
        rows += [
            ("state", "closed" if self._closed else "open"),
            ("delivery", "callback" if self._callback is not None else "async for"),
            ("pending", self.pending()),
            ("dropped", self._ref.dropped),
        ]
        return html_table("awsiot_rs.Subscription", rows)


