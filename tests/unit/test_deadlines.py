"""One timer for many equal delays: each callback runs once due, in order, unless
discarded first."""

from __future__ import annotations

import asyncio

from conveyor.consumer.deadlines import Deadlines


async def test_callbacks_run_in_order_when_due_and_discarded_ones_never() -> None:
    deadlines = Deadlines(0.05)
    loop = asyncio.get_running_loop()
    called: list[tuple[str, float]] = []
    done = asyncio.Event()

    def call(name: str) -> None:
        called.append((name, loop.time()))
        if name == "c":
            done.set()

    start = loop.time()
    deadlines.add("a", lambda: call("a"))
    deadlines.add("b", lambda: call("b"))
    deadlines.discard("a")  # the head goes: the timer set for it must still reach b
    await asyncio.sleep(0)
    c_added = loop.time()
    deadlines.add("c", lambda: call("c"))
    assert called == []
    await asyncio.wait_for(done.wait(), 10)
    assert [name for name, _ in called] == ["b", "c"]
    assert called[0][1] >= start + 0.05
    assert called[1][1] >= c_added + 0.05
    assert len(deadlines) == 0


async def test_a_callback_added_after_all_ran_gets_a_timer_again() -> None:
    deadlines = Deadlines(0.01)
    calls = asyncio.Queue[int]()
    deadlines.add(1, lambda: calls.put_nowait(1))
    assert await asyncio.wait_for(calls.get(), 10) == 1
    deadlines.add(2, lambda: calls.put_nowait(2))
    assert await asyncio.wait_for(calls.get(), 10) == 2
    deadlines.discard(2)  # already called: nothing to drop
    assert len(deadlines) == 0
