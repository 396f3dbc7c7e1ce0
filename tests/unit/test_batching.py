"""Group commit: concurrent requests share batches, never a key twice, errors stay their own."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from conveyor.consumer.batching import Coalescer


class Recorder:
    """A ``send`` that records its batches and answers after a gate opens."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def send(self, requests: Sequence[str]) -> list[str | Exception]:
        self.batches.append(list(requests))
        await self.gate.wait()
        return [ValueError(r) if r.startswith("bad") else r.upper() for r in requests]


async def test_a_lone_request_goes_at_once_and_gets_its_result() -> None:
    recorder = Recorder()
    coalescer: Coalescer[str, str] = Coalescer(recorder.send, key=lambda r: r)
    assert await coalescer.submit("a") == "A"
    assert recorder.batches == [["a"]]


async def test_requests_made_while_batches_are_in_flight_share_the_next_batch() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    coalescer: Coalescer[str, str] = Coalescer(recorder.send, key=lambda r: r, max_in_flight=1)
    first = asyncio.create_task(coalescer.submit("a"))
    await asyncio.sleep(0)  # "a" goes alone; the rest queue behind it
    rest = [asyncio.create_task(coalescer.submit(r)) for r in ("b", "c", "d")]
    await asyncio.sleep(0)
    recorder.gate.set()
    assert await asyncio.gather(first, *rest) == ["A", "B", "C", "D"]
    assert recorder.batches == [["a"], ["b", "c", "d"]]


async def test_one_key_never_appears_twice_in_a_batch() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    coalescer: Coalescer[str, str] = Coalescer(recorder.send, key=lambda r: r[0], max_in_flight=1)
    blocker = asyncio.create_task(coalescer.submit("z"))
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(coalescer.submit(r)) for r in ("a1", "b1", "a2", "a3")]
    await asyncio.sleep(0)
    recorder.gate.set()
    await asyncio.gather(blocker, *tasks)
    assert recorder.batches == [["z"], ["a1", "b1"], ["a2"], ["a3"]]


async def test_batches_are_capped() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    coalescer: Coalescer[str, str] = Coalescer(
        recorder.send, key=lambda r: r, max_batch=2, max_in_flight=1
    )
    tasks = [asyncio.create_task(coalescer.submit(str(n))) for n in range(5)]
    await asyncio.sleep(0)
    recorder.gate.set()
    await asyncio.gather(*tasks)
    assert [len(b) for b in recorder.batches] == [1, 2, 2]


async def test_an_exception_result_fails_only_its_own_request() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    coalescer: Coalescer[str, str] = Coalescer(recorder.send, key=lambda r: r, max_in_flight=1)
    blocker = asyncio.create_task(coalescer.submit("x"))
    await asyncio.sleep(0)
    good = asyncio.create_task(coalescer.submit("ok"))
    bad = asyncio.create_task(coalescer.submit("bad"))
    await asyncio.sleep(0)
    recorder.gate.set()
    assert await good == "OK"
    with pytest.raises(ValueError, match="bad"):
        await bad
    await blocker


async def test_a_failed_batch_fails_each_of_its_requests_and_the_next_batch_still_runs() -> None:
    calls: list[list[str]] = []

    async def send(requests: Sequence[str]) -> list[str | Exception]:
        calls.append(list(requests))
        if len(calls) == 1:
            raise ConnectionError("database went away")
        return list(requests)

    coalescer: Coalescer[str, str] = Coalescer(send, key=lambda r: r)
    with pytest.raises(ConnectionError):
        await coalescer.submit("a")
    assert await coalescer.submit("b") == "b"


async def test_a_full_batch_leaves_the_rest_waiting_in_order_and_drops_cancelled_ones() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    coalescer: Coalescer[str, str] = Coalescer(
        recorder.send, key=lambda r: r[0], max_batch=3, max_in_flight=1
    )
    blocker = asyncio.create_task(coalescer.submit("z"))
    await asyncio.sleep(0)
    names = ("a1", "x1", "b1", "a2", "c1", "d1", "a3", "e1")
    tasks = {r: asyncio.create_task(coalescer.submit(r)) for r in names}
    await asyncio.sleep(0)
    tasks["x1"].cancel()
    recorder.gate.set()
    await asyncio.gather(blocker, *tasks.values(), return_exceptions=True)
    assert recorder.batches == [["z"], ["a1", "b1", "c1"], ["a2", "d1", "e1"], ["a3"]]
    assert tasks["a3"].result() == "A3"
