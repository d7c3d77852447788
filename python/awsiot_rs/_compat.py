"""What the oldest supported Python (3.9) lacks, in one place. Delete a name here when the
minimum Python has it."""

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
        """``asyncio.timeout`` (3.11) for 3.9 and 3.10: ``delay`` seconds after entering, the
        current task is cancelled and the block raises the builtin ``TimeoutError`` (not
        ``asyncio.TimeoutError``, a different class before 3.11). ``None`` never expires."""
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
