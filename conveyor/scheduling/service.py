"""``Scheduler``: the scheduling service, run beside the jobs or alone (``conveyor scheduler``).

It runs three loops that share one stop event:

- the intake (:mod:`conveyor.scheduling.intake`): delayed jobs from the scheduled topic
  into ``scheduled_jobs``;
- the dispatcher (:mod:`conveyor.scheduling.dispatcher`): due rows to their priority
  topics, once;
- the recurring loop (:mod:`conveyor.scheduling.recurring`): each tick of each cron
  schedule submitted once.

Any number of schedulers may run (every worker has one by default): the intake shares the
topic's partitions through one consumer group, dispatchers never release one row twice
(``SKIP LOCKED``), and recurring ticks advance under a row lock.

An outage is retried inside each loop; a loop that ends with an error (its producer's
fatal error, :class:`~conveyor.errors.ProducerFatalError`, which no retry can mend) stops
the other two, and :meth:`Scheduler.run` raises it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg

from conveyor.observability.metrics import WorkerMetrics
from conveyor.scheduling.dispatcher import Dispatcher
from conveyor.scheduling.intake import ScheduledIntake
from conveyor.scheduling.recurring import RecurringLoop
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings


class Scheduler:
    """The intake, dispatcher and recurring loop of one process.

    Call :meth:`start`, then :meth:`run` until a stop event is set.

    Args:
        settings: Broker, database, registry and topic settings.
        pool: Connections to conveyor's schema.
        serde: Decodes envelopes and encodes recurring ticks.
        metrics: Where the scheduled gauge and lateness histogram go.
        session_timeout_ms: Kafka consumer session timeout of the intake.
        heartbeat_interval_ms: Kafka consumer heartbeat interval of the intake.
        record_lateness: Keep each release's lateness (``dispatcher.stats.lateness``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        pool: asyncpg.Pool[Any],
        serde: Serde,
        metrics: WorkerMetrics | None = None,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        record_lateness: bool = False,
    ) -> None:
        self.intake = ScheduledIntake(
            settings,
            pool=pool,
            serde=serde,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
        )
        self.dispatcher = Dispatcher(
            settings, pool=pool, metrics=metrics, record_lateness=record_lateness
        )
        self.recurring = RecurringLoop(settings, pool=pool, serde=serde)

    async def start(self) -> None:
        """Starts the three loops' clients; a failure closes what started.

        Raises:
            BrokerUnavailableError: The intake could not join its group.
            DatabaseUnavailableError: Postgres cannot be reached.
        """
        try:
            await self.intake.start()
            await self.dispatcher.start()
            await self.recurring.start()
        except BaseException:
            await self.close()
            raise

    async def run(self, stop: asyncio.Event) -> None:
        """Runs the three loops until ``stop`` is set; if one fails, stops the others and
        raises its error (liveness then names the scheduler).

        Raises:
            ProducerFatalError: A loop's producer hit a fatal error; nothing it did not
                publish was committed or advanced.
        """
        inner = asyncio.Event()
        tasks = [
            asyncio.create_task(self.intake.run(inner)),
            asyncio.create_task(self.dispatcher.run(inner)),
            asyncio.create_task(self.recurring.run(inner)),
        ]
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            inner.set()
            stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopper
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def close(self) -> None:
        """Closes every loop's clients. Idempotent."""
        await self.intake.close()
        await self.dispatcher.close()
        await self.recurring.close()


__all__ = ["Scheduler"]
