"""Group commit: concurrent single-job writes coalesced into one statement.

Many jobs run at once, and each claims and completes its row. Sent one by one, every
write is a round trip and a commit (a WAL flush) of its own. ``Coalescer`` gathers the
requests made while a batch is in flight and sends them as the next batch, so under
load one statement carries dozens of jobs, and alone a request goes at once: there is no
timer, so no latency is added.

Requests for the same key (a job id) never share a batch: a later one waits for the
next, so one statement never touches a row twice. When Postgres refuses a batch's
statement, its sender runs each request alone so only the bad one fails;
:func:`outcome_of_one` turns each such batch of one into its result or its error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Requests one statement carries at most.
MAX_BATCH = 128


class Coalescer(Generic[T, R]):
    """Runs ``send`` on batches of requests; each caller awaits its own result.

    Args:
        send: Runs one batch and returns one result per request, in order; a result that
            is an exception is raised to that request's caller alone. If ``send`` raises,
            every request of the batch gets the exception.
        key: The identity of a request; two with the same key never share a batch.
        max_batch: Requests per batch at most.
        max_in_flight: Batches sent at once at most (each on its own connection).
    """

    def __init__(
        self,
        send: Callable[[Sequence[T]], Awaitable[Sequence[R | Exception]]],
        *,
        key: Callable[[T], Hashable],
        max_batch: int = MAX_BATCH,
        max_in_flight: int = 2,
    ) -> None:
        self._send = send
        self._key = key
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._in_flight = 0

    async def submit(self, request: T) -> R:
        """Queues ``request`` for the next batch and returns its result."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        self._pump()
        return await future

    def _pump(self) -> None:
        while self._waiting and self._in_flight < self._max_in_flight:
            batch = self._take()
            self._in_flight += 1
            asyncio.get_running_loop().create_task(self._run(batch))

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        """The next batch, in arrival order; requests it cannot carry keep their places.

        Only as many requests are looked at as it takes to fill the batch: under load
        thousands may wait, and a walk over all of them per batch cost more than the
        batch's statement.
        """
        batch: list[tuple[T, asyncio.Future[R]]] = []
        keys: set[Hashable] = set()
        skipped: list[tuple[T, asyncio.Future[R]]] = []
        waiting = self._waiting
        taken = 0
        for entry in waiting:
            if len(batch) >= self._max_batch:
                break
            taken += 1
            if entry[1].cancelled():
                continue
            key = self._key(entry[0])
            if key in keys:
                skipped.append(entry)
            else:
                batch.append(entry)
                keys.add(key)
        self._waiting = skipped + waiting[taken:] if skipped else waiting[taken:]
        return batch

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            if not batch:
                return
            try:
                results = await self._send([request for request, _ in batch])
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._in_flight -= 1
            self._pump()


async def outcome_of_one(batch: Awaitable[list[R | Exception]]) -> R | Exception:
    """The one result of a batch of one, or the exception it raised."""
    try:
        [result] = await batch
    except Exception as exc:
        return exc
    return result
