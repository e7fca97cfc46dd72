"""cancel_and_wait: a task that swallows a cancellation (as ``asyncio.wait_for`` can on Python
3.11 when its inner future completes at the same moment, CPython gh-86296) is still stopped."""

from __future__ import annotations

import asyncio

import pytest

from telephony.tasks import cancel_and_wait


async def _swallows_once(queue: asyncio.Queue[int], swallowed: list[bool]) -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        swallowed.append(True)  # what the lost cancellation looks like to the task
    await queue.get()  # and on it goes, back to waiting for work (the records writer)


@pytest.mark.asyncio
async def test_a_task_that_swallowed_its_cancellation_is_stopped() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    swallowed: list[bool] = []
    task = asyncio.create_task(_swallows_once(queue, swallowed))
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task), 2.0)
    assert swallowed == [True] and task.cancelled()
    # what the old shutdown did would still be waiting
    again = asyncio.create_task(_swallows_once(queue, []))
    await asyncio.sleep(0)
    again.cancel()
    done, _ = await asyncio.wait({again}, timeout=0.3)
    assert not done
    await cancel_and_wait(again)


@pytest.mark.asyncio
async def test_a_task_that_fails_or_finishes_is_left_as_it_ended() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await cancel_and_wait(task)  # its exception is retrieved, not raised
    assert isinstance(task.exception(), ValueError)
