"""The handlers running here and the interrupts aimed at them, for a handler that runs in
its delivery's own task (``inline``): only the handler is ever interrupted."""

from __future__ import annotations

import asyncio

from conveyor.consumer.cancels import RunningJobs


async def test_an_early_cancel_of_an_inline_handler_marks_it_without_cancelling_its_task() -> None:
    jobs = RunningJobs()
    assert jobs.cancel("job-1", "typo") is False  # not running yet: remembered
    current = asyncio.current_task()
    assert current is not None
    running = jobs.start("job-1", current, inline=True)
    assert (running.cancel_requested, running.cancel_reason) == (True, "typo")
    assert running.interrupts == 0
    assert current.cancelling() == 0
    jobs.finish("job-1")


async def test_an_inline_handler_that_ended_is_never_interrupted() -> None:
    jobs = RunningJobs()
    current = asyncio.current_task()
    assert current is not None
    running = jobs.start("job-2", current, inline=True)
    jobs.finish("job-2")
    running.refuse()  # the claim was refused while the outcome is being written
    assert jobs.cancel("job-2") is False
    assert (running.refused, running.interrupts, current.cancelling()) == (False, 0, 0)
    await asyncio.sleep(0)  # no cancel pending: this await is not interrupted


async def test_interrupts_are_counted_so_an_inline_task_can_undo_them() -> None:
    jobs = RunningJobs()
    handler = asyncio.Event()

    async def delivery() -> int:
        current = asyncio.current_task()
        assert current is not None
        running = jobs.start("job-3", current, inline=True)
        try:
            await handler.wait()
        except asyncio.CancelledError:
            pass
        finally:
            jobs.finish("job-3")
            for _ in range(running.interrupts):
                current.uncancel()
        await asyncio.sleep(0)  # the outcome's write: not interrupted
        return current.cancelling()

    task = asyncio.create_task(delivery())
    await asyncio.sleep(0)
    assert jobs.cancel("job-3", "stop") is True
    assert await task == 0
