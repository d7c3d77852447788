"""What the oldest supported Python (3.9) lacks, for the test doubles (which never import
``awsiot_rs``; the package has its own copy in ``awsiot_rs._compat``)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

__all__ = ["timeout"]

if sys.version_info >= (3, 11):
    from asyncio import timeout
else:

    @contextlib.asynccontextmanager
    async def timeout(delay: float | None) -> AsyncIterator[None]:
        """``asyncio.timeout`` for 3.9 and 3.10: raises the builtin ``TimeoutError``."""
        task = asyncio.current_task()
        if delay is None or task is None:
            yield
            return
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        handle = asyncio.get_running_loop().call_later(max(delay, 0.0), expire)
        try:
            yield
        except asyncio.CancelledError:
            if expired:
                raise TimeoutError from None
            raise
        finally:
            handle.cancel()
