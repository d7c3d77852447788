"""AWS IoT Device Shadow over MQTT: classic and named shadows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Union

from . import topics
from .errors import ShadowRejected

if TYPE_CHECKING:
    from ._requests import Requester
    from .subscription import Subscription

__all__ = ["Shadow"]

_UNSET: Any = object()


class Shadow:
    """One thing's shadow (``client.shadow("thing")`` or ``client.shadow("thing", "name")``).

    ``get``/``update``/``delete`` subscribe to the ``/accepted`` and ``/rejected`` topics
    (waiting for SUBACK) before the first request, tag each request with a unique
    ``clientToken`` and return the whole ``/accepted`` document as AWS sends it. A
    ``/rejected`` answer raises :class:`ShadowRejected` (``code`` 404 for a missing shadow, 409
    for a version conflict, ...).
    """

    def __init__(self, requester: Requester, thing_name: str, name: str | None = None) -> None:
        topics.shadow(thing_name, "get", name)  # validates the names
        self._requester = requester
        self.thing_name = thing_name
        self.name = name

    def topic(self, op: topics.ShadowOp) -> str:
        """This shadow's topic for ``op`` (``get``, ``update/delta``, ...)."""
        return topics.shadow(self.thing_name, op, self.name)

    async def _call(self, op: str, payload: dict[str, Any] | None, timeout: float | None) -> dict[str, Any]:
        ok, doc, token = await self._requester.request(
            self.topic(op),  # type: ignore[arg-type]
            payload,
            self.topic(f"{op}/accepted"),  # type: ignore[arg-type]
            self.topic(f"{op}/rejected"),  # type: ignore[arg-type]
            timeout=timeout,
        )
        if not ok:
            raise ShadowRejected(doc.get("code"), str(doc.get("message", "")), doc.get("clientToken", token))
        return dict(doc)

    async def get(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The whole shadow document (``state`` with ``desired``/``reported``/``delta``,
        ``metadata``, ``version``, ``timestamp``, ``clientToken``)."""
        return await self._call("get", None, timeout)

    async def update(
        self,
        desired: dict[str, Any] | None = _UNSET,
        reported: dict[str, Any] | None = _UNSET,
        *,
        version: int | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Partially updates the shadow. ``None`` inside a dict deletes that key;
        ``desired=None`` (explicitly) deletes the whole desired section. ``version`` enables
        optimistic locking (a mismatch raises ``ShadowRejected`` with code 409)."""
        state: dict[str, Any] = {}
        if desired is not _UNSET:
            state["desired"] = desired
        if reported is not _UNSET:
            state["reported"] = reported
        if not state:
            raise ValueError("update needs desired= and/or reported=")
        payload: dict[str, Any] = {"state": state}
        if version is not None:
            payload["version"] = int(version)
        return await self._call("update", payload, timeout)

    async def delete(self, *, timeout: float | None = None) -> dict[str, Any]:
        """Deletes the shadow (its version numbering continues afterwards)."""
        return await self._call("delete", None, timeout)

    async def _stream(self, op: topics.ShadowOp) -> AsyncIterator[dict[str, Any]]:
        sub = await self._requester.subscribe(self.topic(op), qos=1)
        latest = -1
        try:
            async for m in sub:
                try:
                    doc = m.json()
                except ValueError:
                    continue
                version = doc.get("version", doc.get("current", {}).get("version", 0)) if isinstance(doc, dict) else 0
                if not isinstance(version, int) or version <= latest:
                    continue  # out of date: AWS does not guarantee order
                latest = version
                yield doc
        finally:
            sub.close_nowait()

    def deltas(self) -> AsyncIterator[dict[str, Any]]:
        """``/update/delta`` documents (desired ≠ reported), newest versions only: a document
        older than one already yielded is discarded."""
        return self._stream("update/delta")

    def documents(self) -> AsyncIterator[dict[str, Any]]:
        """``/update/documents`` documents (``previous``/``current``), newest versions only."""
        return self._stream("update/documents")

    async def on_delta(
        self, callback: Callable[[dict[str, Any]], Union[None, Awaitable[None]]]
    ) -> Subscription:
        """Calls ``callback(document)`` for each delta (on the event loop); returns the
        subscription (``await sub.unsubscribe()`` stops it)."""
        latest = [-1]

        def on_message(m: Any) -> Union[None, Awaitable[None]]:
            doc = m.json()
            version = doc.get("version", 0)
            if version <= latest[0]:
                return None
            latest[0] = version
            return callback(doc)

        return await self._requester.subscribe(self.topic("update/delta"), qos=1, callback=on_message)

    def __repr__(self) -> str:
        return f"<Shadow thing={self.thing_name!r} name={self.name!r}>"
