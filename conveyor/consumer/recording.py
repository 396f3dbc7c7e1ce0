"""Outcomes that could not be recorded are tried again, never dropped.

A job's offset may be committed only once its outcome is durable. When recording fails
(Postgres down, a write refused, a publish not acknowledged) the job is run again with
backoff until its outcome is recorded or its partition goes to another worker (who reads
it again). Dropping it, as the worker once did, pinned the partition's commit point for
good and grew the lag. A job that still holds its key's mailbox is run again in place,
holding it. A job that handed its key off when its handler returned (a short job that ran
unclaimed: the key's next job may be running already) waits out the backoff and goes
back to the front of its key's mailbox instead (``Recorded.AGAIN``), so two jobs of one
key never run at once.

While Postgres itself is unreachable the worker stops fetching, since every job it read
would only wait, and readiness says why; the first outcome recorded afterwards resumes
fetching. A job re-run this way may run its handler again: its ``ctx.db`` writes still
commit once, with the completion, as for any redelivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable, Iterable, Mapping

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from conveyor.consumer.execution import JobRunner
from conveyor.consumer.job import JobMessage
from conveyor.consumer.mailbox import Entry
from conveyor.consumer.outcome import WorkerStats
from conveyor.errors import DatabaseUnavailableError

log = logging.getLogger("conveyor.worker")

#: Backoff between tries to record an outcome, doubling up to the maximum.
RECORD_RETRY_INITIAL = 0.5
RECORD_RETRY_MAX = 30.0


class Recorded(enum.Enum):
    """How ``Recording.run`` ended."""

    DONE = "done"
    """The outcome is durable: the offset may be finished."""
    LOST = "lost"
    """The partition went to another worker first, who reads the job again."""
    AGAIN = "again"
    """Not recorded, and the key was handed off: run the job again once its key is free."""


def store_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means Postgres is unreachable, rather than one job's write refused."""
    return isinstance(
        exc,
        DatabaseUnavailableError
        | OSError
        | asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.CannotConnectNowError,
    )


class Recording:
    """Retries unrecorded outcomes and pauses fetching while the store is unreachable.

    Args:
        consumers: The worker's consumers by priority (paused and resumed here).
        paused: Partitions paused because their buffers are full; never resumed here.
        stats: Counts ``unrecorded``.
    """

    def __init__(
        self,
        consumers: Mapping[str, AIOKafkaConsumer],
        paused: set[TopicPartition],
        stats: WorkerStats,
    ) -> None:
        self._consumers = consumers
        self._paused = paused
        self._stats = stats
        self._failing: set[str] = set()
        self.problem: str | None = None
        """Why outcomes are not being recorded now, or None."""
        self.store_down = False
        """Postgres is unreachable: fetching is paused."""
        # The next backoff of jobs that went back to their mailboxes, by job id.
        self._delays: dict[str, float] = {}

    async def run(
        self,
        runner: JobRunner,
        entry: Entry[JobMessage],
        lost: asyncio.Event,
        handed_off: Callable[[], bool],
    ) -> Recorded:
        """Runs the job until its outcome is durable.

        Args:
            runner: Runs the job.
            entry: The job's mailbox entry.
            lost: Set when the job's partition is revoked.
            handed_off: Whether the job has handed its key off (then a failed recording
                returns ``Recorded.AGAIN`` after the backoff instead of running it again).
        """
        job = entry.item
        delay = self._delays.pop(job.job_id, RECORD_RETRY_INITIAL)
        while True:
            try:
                await runner.run(job, lost=lost)
            except asyncio.CancelledError:
                raise  # shutdown: not finished, so not committed; redelivered later
            except Exception as exc:
                self._failed(job.job_id, exc)
                log.warning(
                    "job %s at %s[%d]@%d was not recorded, trying again in %.1fs: %r",
                    job.job_id, job.topic, job.partition, entry.offset, delay, exc,
                    exc_info=not store_outage(exc),  # a bug or a refusal: show where
                )  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), delay)
                if lost.is_set():
                    self.forget((job.job_id,))
                    return Recorded.LOST  # the partition's next owner reads the job again
                delay = min(delay * 2, RECORD_RETRY_MAX)
                if handed_off():
                    self._delays[job.job_id] = delay
                    return Recorded.AGAIN
                continue
            self._succeeded(job.job_id)
            return Recorded.DONE

    def forget(self, job_ids: Iterable[str]) -> None:
        """Stops counting jobs as unrecorded: their partition went to another worker."""
        for job_id in job_ids:
            self._failing.discard(job_id)
            self._delays.pop(job_id, None)
        if not self._failing:
            self.problem = None

    def _failed(self, job_id: str, exc: Exception) -> None:
        self._stats.unrecorded += 1
        self._failing.add(job_id)
        self.problem = f"job outcomes cannot be recorded: {type(exc).__name__}: {exc}"
        if store_outage(exc) and not self.store_down:
            self.store_down = True
            log.warning("the job store is unreachable; fetching paused until it answers")
            for consumer in self._consumers.values():
                consumer.pause(*consumer.assignment())

    def _succeeded(self, job_id: str) -> None:
        self._failing.discard(job_id)
        if not self._failing:
            self.problem = None
        if self.store_down:
            self.store_down = False
            log.info("the job store answers again; fetching resumed")
            for consumer in self._consumers.values():
                consumer.resume(*(tp for tp in consumer.assignment() if tp not in self._paused))
