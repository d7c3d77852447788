"""AWS IoT jobs over MQTT."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from . import topics
from .errors import JobRejected

if TYPE_CHECKING:
    from ._requests import Requester

__all__ = ["Jobs"]


class Jobs:
    """One thing's jobs (``client.jobs("thing")``): pending executions, start-next, describe,
    update, and ``notify``/``notify-next`` streams. ``/rejected`` raises :class:`JobRejected`
    (``VersionMismatch`` on an ``expected_version`` conflict)."""

    def __init__(self, requester: Requester, thing_name: str) -> None:
        topics.jobs(thing_name, "get")
        self._requester = requester
        self.thing_name = thing_name

    async def _call(self, op: str, job_id: str | None, payload: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        def t(suffix: str) -> str:
            return topics.jobs(self.thing_name, op + suffix, job_id)

        ok, doc, token = await self._requester.request(t(""), payload, t("/accepted"), t("/rejected"), timeout=timeout)
        if not ok:
            raise JobRejected(doc.get("code"), str(doc.get("message", "")), doc.get("clientToken", token))
        return dict(doc)

    async def get_pending(self, *, timeout: float | None = None) -> dict[str, Any]:
        """GetPendingJobExecutions: ``inProgressJobs`` and ``queuedJobs`` summaries."""
        return await self._call("get", None, {}, timeout)

    async def start_next(
        self,
        *,
        status_details: dict[str, str] | None = None,
        step_timeout_minutes: int | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any] | None:
        """StartNextPendingJobExecution: the execution now ``IN_PROGRESS`` (with its job
        document), or ``None`` when nothing is pending."""
        payload: dict[str, Any] = {}
        if status_details is not None:
            payload["statusDetails"] = status_details
        if step_timeout_minutes is not None:
            payload["stepTimeoutInMinutes"] = step_timeout_minutes
        doc = await self._call("start-next", None, payload, timeout)
        execution = doc.get("execution")
        return dict(execution) if isinstance(execution, dict) else None

    async def describe(
        self, job_id: str = "$next", *, include_job_document: bool = True, timeout: float | None = None
    ) -> dict[str, Any] | None:
        """DescribeJobExecution (``$next``: the next pending one); ``None`` when there is none."""
        doc = await self._call("get", job_id, {"includeJobDocument": include_job_document}, timeout)
        execution = doc.get("execution")
        return dict(execution) if isinstance(execution, dict) else None

    async def update(
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
        payload: dict[str, Any] = {"status": status, "includeJobExecutionState": include_job_execution_state}
        if status_details is not None:
            payload["statusDetails"] = status_details
        if expected_version is not None:
            payload["expectedVersion"] = expected_version
        return await self._call("update", job_id, payload, timeout)

    async def _stream(self, op: str) -> AsyncIterator[dict[str, Any]]:
        sub = await self._requester.subscribe(topics.jobs(self.thing_name, op), qos=1)
        try:
            async for m in sub:
                try:
                    yield m.json()
                except ValueError:
                    continue
        finally:
            sub.close_nowait()

    def notify(self) -> AsyncIterator[dict[str, Any]]:
        """JobExecutionsChanged notifications."""
        return self._stream("notify")

    def notify_next(self) -> AsyncIterator[dict[str, Any]]:
        """NextJobExecutionChanged notifications."""
        return self._stream("notify-next")
