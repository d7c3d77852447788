"""AWS IoT Device Shadow over MQTT: classic and named shadows."""

from __future__ import annotations

import datetime
import html
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Union

from . import topics
from .errors import ShadowRejected

if TYPE_CHECKING:
    from ._requests import Requester
    from .subscription import Subscription

__all__ = ["Shadow", "ShadowDocument"]

_UNSET: Any = object()

#: Characters of one value shown in a ``ShadowDocument`` table cell.
_CELL_CHARS = 60
#: State keys shown in a ``ShadowDocument`` table (the rest are counted).
_MAX_ROWS = 50


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists and scalars are leaves)."""
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def _cell(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return text if len(text) <= _CELL_CHARS else text[: _CELL_CHARS - 1] + "…"


class ShadowDocument(dict[str, Any]):
    """A shadow document exactly as AWS sent it: a plain ``dict`` (``doc["state"]``,
    ``doc["version"]``, ...) that Jupyter also shows as a table of its state keys, with one
    column per section (``desired``, ``reported``, ``delta``), and its version."""

    __slots__ = ()

    def _state(self) -> tuple[dict[str, Any], list[str]]:
        """The state and the sections to show as columns."""
        doc: Any = self
        if "state" not in doc and isinstance(doc.get("current"), dict):
            doc = doc["current"]  # /update/documents: show the current document
        state = doc.get("state")
        if not isinstance(state, dict):
            return {}, []
        sections = [s for s in ("desired", "reported", "delta") if isinstance(state.get(s), dict)]
        if sections:
            return state, sections
        return {"delta": state}, ["delta"]  # a /update/delta message: the state is the delta

    def _repr_html_(self) -> str:
        state, sections = self._state()
        columns: dict[str, dict[str, Any]] = {section: {} for section in sections}
        for section in sections:
            _flatten("", state[section], columns[section])
        keys = sorted({k for c in columns.values() for k in c})
        title = "Shadow document"
        current = self.get("current")
        version = self.get("version", current.get("version") if isinstance(current, dict) else None)
        if version is not None:
            title += f", version {version}"
        timestamp = self.get("timestamp")
        if isinstance(timestamp, (int, float)) and not isinstance(timestamp, bool):
            when = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
            title += f", {when:%Y-%m-%d %H:%M:%S} UTC"
        out = [
            '<table style="border-collapse:collapse">',
            f'<caption style="text-align:left;font-weight:bold">{html.escape(title)}</caption>',
            '<tr><th style="text-align:left">key</th>',
        ]
        out += [f'<th style="text-align:left">{html.escape(s)}</th>' for s in sections]
        out.append("</tr>")
        for key in keys[:_MAX_ROWS]:
            out.append(f'<tr><td style="text-align:left"><code>{html.escape(key)}</code></td>')
            for s in sections:
                cell = html.escape(_cell(columns[s][key])) if key in columns[s] else ""
                out.append(f'<td style="text-align:left"><code>{cell}</code></td>')
            out.append("</tr>")
        if len(keys) > _MAX_ROWS:
            out.append(f'<tr><td colspan="{len(sections) + 1}">… {len(keys) - _MAX_ROWS} more keys</td></tr>')
        if not keys:
            out.append(f'<tr><td colspan="{len(sections) + 1}">(empty state)</td></tr>')
        out.append("</table>")
        return "".join(out)


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
        return ShadowDocument(doc)

    async def get(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The whole shadow document (``state`` with ``desired``/``reported``/``delta``,
        ``metadata``, ``version``, ``timestamp``, ``clientToken``), as a
        :class:`ShadowDocument` (a ``dict`` that Jupyter shows as a table)."""
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
                yield ShadowDocument(doc)
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
            return callback(ShadowDocument(doc))

        return await self._requester.subscribe(self.topic("update/delta"), qos=1, callback=on_message)

    def __repr__(self) -> str:
        return f"<Shadow thing={self.thing_name!r} name={self.name!r}>"
