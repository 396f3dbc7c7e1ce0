"""Jobs that run before they are claimed: one status write for a short job.

Most jobs finish in milliseconds. Claiming such a job before its handler (a row marked
``processing`` under a lease) and completing it after doubles its status writes, for a
state nobody can watch. So the worker reads what the job's row says (``known``) and,
when nothing holds it, runs the handler unclaimed. The rows of a fetch's jobs are read in
one statement as the fetch arrives (``prefetch``), so a job finds its answer waiting when
it starts and its concurrency slot never waits on that read; an answer older than
``PREFETCH_FRESH`` is read again (the jobs starting together share one statement).
A handler that returns within ``claim_after`` is recorded by ``complete``: its row,
complete, with its queued, processing and complete transitions, in one statement shared
with the others finishing then. Anything else claims the job first,
as every job once did: a handler still running at ``claim_after``, one that touches
``ctx.db`` or reports progress, a failure, a cancel (:class:`DeferredClaim`).

Fencing without a lease: the completion writes only where no worker ended the job or
holds its lease, and no later attempt was counted. A worker that lost the partition
(a rebalance, or one presumed dead after a ``kill -9`` of its neighbour's view) and
still finishes the job either finds it complete (the new owner finished it: its own
result is dropped) or claimed by the new owner (it then claims it back like any
redelivery, and the new owner's completion is fenced): at most one completion commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import asyncpg

from conveyor.consumer import queries
from conveyor.consumer.batching import Coalescer, outcome_of_one
from conveyor.consumer.claims import Lease, claim_args
from conveyor.consumer.job import JobMessage, canonical_id
from conveyor.consumer.status import StatusStore
from conveyor.db import database_errors
from conveyor.errors import ConveyorError

#: How long a handler runs unclaimed before its job is claimed (shown processing).
CLAIM_AFTER = 0.05

#: Seconds a row read ahead for a fetched job may stand for the row when the job starts.
#: A job waits in the worker's buffer for at most about this long under a backlog; what
#: may change meanwhile is covered elsewhere: a cancel reaches the worker on the control
#: topic too (and is remembered for a job that starts later), and an ending elsewhere
#: fences the completion, as it does for a change just after a read made at the start.
PREFETCH_FRESH = 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class Known:
    """What a job's row said just before the job ran.

    Args:
        state: The row's state.
        attempts: The attempts it counts.
        leased: A worker holds the job's lease.
        cancel_requested: Someone asked to cancel it while it was processing.
    """

    state: str
    attempts: int
    leased: bool
    cancel_requested: bool

    def runs_unclaimed(self, attempt: int) -> bool:
        """Whether attempt ``attempt`` may run without a claim: queued, held by nobody,
        and not older than the row's attempts."""
        return (
            self.state == "queued"
            and not self.leased
            and not self.cancel_requested
            and attempt >= self.attempts
        )


@dataclasses.dataclass(frozen=True, slots=True)
class _Done:
    job: JobMessage
    started_at: dt.datetime
    result: str


class UnclaimedStore:
    """Reads and completes jobs that run unclaimed, in shared statements.

    Args:
        pool: The status writes' pool (``conveyor.db.create_pool``, custom plans).
        clock: Monotonic seconds, for the age of rows read ahead.
    """

    def __init__(
        self, pool: asyncpg.Pool[Any], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._reads: Coalescer[str, Known | None] = Coalescer(self._read_many, key=canonical_id)
        self._completions: Coalescer[_Done, str | None] = Coalescer(
            self._complete_many, key=lambda done: done.job.job_id
        )
        # Rows read ahead, by job id: when the read was sent, and the read.
        self._ahead: OrderedDict[str, tuple[float, asyncio.Future[dict[str, Known]]]] = (
            OrderedDict()
        )
        # Jobs with a delivery running here (``delivering``), by job id: the deliveries
        # of the same job waiting for it to end (``take_turn``).
        self._delivering: dict[str, list[asyncio.Future[None]]] = {}

    def delivering(self, job_id: str) -> None:
        """Marks a delivery of ``job_id`` as running here, until :meth:`delivered`.

        A duplicate of the job fetched meanwhile is not read ahead: that read would
        show the row as it was before this delivery's outcome, and the duplicate, which
        waits for this one (:meth:`take_turn`), would take it for a job still to run.
        """
        self._delivering.setdefault(job_id, [])

    async def take_turn(self, job_id: str) -> None:
        """Waits until no other delivery of ``job_id`` runs here, then marks this one's.

        A key is handed on when its job's handler returns, before the job's outcome is
        written (``Mailboxes.hand_off``). A duplicate of the job waiting in that key's
        mailbox (a second submit of one dedupe key) would then start, read the row as it
        was before the outcome, and run the handler a second time. So it waits here for
        that outcome first; then its read shows it. Without another delivery of the job
        running here, this takes no loop turn.
        """
        while (waiting := self._delivering.get(job_id)) is not None:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiting.append(waiter)
            await waiter
        self.delivering(job_id)

    def delivered(self, job_id: str) -> None:
        """Ends what :meth:`delivering` began: the delivery's outcome is written; the
        deliveries of the same job waiting for it go on."""
        for waiter in self._delivering.pop(job_id):
            if not waiter.done():
                waiter.set_result(None)

    def prefetch(self, job_ids: Iterable[str]) -> None:
        """Reads the rows of jobs just fetched, in one statement sent now, for ``known``.

        A failed read is not an error here: ``known`` then reads again, and reports it.
        """
        now = self._clock()
        while self._ahead:  # drop what went stale unused (a revoked partition's jobs)
            oldest = next(iter(self._ahead.values()))
            if now - oldest[0] <= PREFETCH_FRESH:
                break
            self._ahead.popitem(last=False)
        wanted = [
            job_id
            for job_id in dict.fromkeys(job_ids)
            if job_id not in self._ahead and job_id not in self._delivering
        ]
        if not wanted:
            return
        read = asyncio.ensure_future(self._read_rows(wanted))
        read.add_done_callback(_retrieve)
        for job_id in wanted:
            self._ahead[job_id] = (now, read)

    async def known(self, job_id: str) -> Known | None:
        """What the job's row says now (or read ahead at most ``PREFETCH_FRESH`` seconds
        ago); None when it has none.

        Raises:
            DatabaseUnavailableError: The connection to Postgres was lost.
        """
        ahead = self._ahead.pop(job_id, None)
        if ahead is not None and self._clock() - ahead[0] <= PREFETCH_FRESH:
            read = ahead[1]
            if read.done():  # the usual case: no shield, no wait
                if not read.cancelled() and read.exception() is None:
                    return read.result().get(canonical_id(job_id))
            else:
                with contextlib.suppress(Exception):  # read again below, which reports it
                    return (await asyncio.shield(read)).get(canonical_id(job_id))
        return await self._reads.submit(job_id)

    async def _read_many(self, job_ids: Sequence[str]) -> list[Known | Exception | None]:
        by_id = await self._read_rows(job_ids)
        return [by_id.get(canonical_id(job_id)) for job_id in job_ids]

    async def _read_rows(self, job_ids: Sequence[str]) -> dict[str, Known]:
        """The rows of ``job_ids`` that exist, by canonical job id."""
        with database_errors(f"reading {len(job_ids)} job(s)"):
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(queries.KNOWN_MANY, list(job_ids))
        # Columns in Known's order: text, int and bools as asyncpg decodes them.
        return {row[0]: Known(row[1], row[2], row[3], row[4]) for row in rows}

    async def complete(self, job: JobMessage, result: str, started_at: dt.datetime) -> str | None:
        """Records a job that ran unclaimed complete, unless something else moved it.

        Args:
            job: The delivery.
            result: The handler's result as JSON (``status.result_json``).
            started_at: When the handler started (aware; the worker's clock). The row's
                ``finished_at`` is the write's time.

        Returns:
            None when recorded; else the job's state: final when it ended meanwhile
            (nothing is written), ``queued`` or ``processing`` when a worker holds it or
            counted a later attempt (claim it to record this run's outcome).

        Raises:
            DatabaseUnavailableError: The connection to Postgres was lost.
        """
        return await self._completions.submit(_Done(job, started_at, result))

    async def _complete_many(self, items: Sequence[_Done]) -> list[str | Exception | None]:
        jobs = [item.job for item in items]
        try:
            with database_errors(f"completing {len(items)} job(s)"):
                async with self._pool.acquire() as conn:
                    done = await conn.fetch(
                        queries.COMPLETE_UNCLAIMED_MANY,
                        *(list(column) for column in zip(*map(claim_args, jobs), strict=True)),
                        [item.started_at for item in items],
                        [item.result for item in items],
                    )
                    written = {row[0] for row in done}
                    ids = [canonical_id(job.job_id) for job in jobs]
                    missed = [job_id for job_id in ids if job_id not in written]
                    rows = await conn.fetch(queries.STATES, missed, None) if missed else []
        except asyncpg.PostgresError:
            if len(items) == 1:
                raise
            # One job's result was refused: complete each alone, so only that one fails.
            return [await outcome_of_one(self._complete_many([item])) for item in items]
        states = {str(row["job_id"]): str(row["state"]) for row in rows}
        return [None if job_id in written else states.get(job_id, "") for job_id in ids]


def _retrieve(read: asyncio.Future[Any]) -> None:
    """Marks a read-ahead's failure seen: ``known`` reads again and reports its own."""
    if not read.cancelled():
        read.exception()


class NotClaimedError(ConveyorError):
    """The job could not be claimed: it ended, or a later attempt runs (``state``)."""

    def __init__(self, job_id: str, state: str) -> None:
        super().__init__(f"job {job_id} is {state} and was not claimed; this run is dropped")
        self.state = state


class DeferredClaim:
    """The claim of a job that started unclaimed, made once, when first needed.

    Args:
        status: Claims the job.
        job: The delivery.
    """

    def __init__(self, status: StatusStore, job: JobMessage) -> None:
        self._status = status
        self._job = job
        self._claim: asyncio.Future[Lease | str] | None = None
        self._on_refused: Callable[[], None] | None = None

    @property
    def started(self) -> bool:
        """The claim was asked for (it may still be on its way)."""
        return self._claim is not None

    def when_refused(self, callback: Callable[[], None]) -> None:
        """Calls ``callback`` if the claim, once made, is refused (the job ended)."""
        self._on_refused = callback

    def start(self) -> None:
        """Starts the claim unless it started already (a timer calls this)."""
        if self._claim is None:
            self._claim = asyncio.ensure_future(self._status.claim(self._job))
            self._claim.add_done_callback(self._claimed)

    def _claimed(self, claim: asyncio.Future[Lease | str]) -> None:
        if claim.cancelled() or claim.exception() is not None:
            return
        if isinstance(claim.result(), str) and self._on_refused is not None:
            self._on_refused()

    async def settled(self) -> Lease | str:
        """The claim's lease, or the state that refused it; claims now if not yet.

        Raises:
            DatabaseUnavailableError: The connection to Postgres was lost.
        """
        self.start()
        assert self._claim is not None
        # Shielded: a cancel of the handler must not cancel a claim other code awaits.
        return await asyncio.shield(self._claim)

    async def lease(self) -> Lease:
        """The lease, for writes that need one (``ctx.db``, progress).

        Raises:
            NotClaimedError: The job ended meanwhile, or a later attempt runs.
            DatabaseUnavailableError: The connection to Postgres was lost.
        """
        claimed = await self.settled()
        if isinstance(claimed, str):
            raise NotClaimedError(self._job.job_id, claimed)
        return claimed


__all__ = [
    "CLAIM_AFTER",
    "PREFETCH_FRESH",
    "DeferredClaim",
    "Known",
    "NotClaimedError",
    "UnclaimedStore",
]
