"""Stopping asyncio tasks for good.

On Python 3.11, ``asyncio.wait_for`` returns its inner result instead of raising when the
cancellation of the task awaiting it arrives just as the inner future completes
(CPython gh-86296, fixed in 3.12): the task goes on as if never cancelled. A ``task.cancel()``
followed by ``await task`` then waits for a task that may never end; the records writer did
exactly that once at a daemon's shutdown (CI hung in a test teardown, its writer back in
``queue.get()``). :func:`cancel_and_wait` repeats the cancellation until the task is done.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

#: seconds between two cancellations of a task that swallowed the previous one
RETRY_S = 0.1


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and return once it is done, whatever it swallowed on the way. Its
    exception, if it ended with one, is retrieved (not raised)."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RETRY_S)
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.exception()
