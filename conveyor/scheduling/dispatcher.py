"""The dispatcher: releases due ``scheduled_jobs`` rows to their priority topics, once.

Each round, in one transaction: lock up to ``batch`` due rows that no other dispatcher
holds (``FOR UPDATE SKIP LOCKED``, so any number of dispatchers never release one row
concurrently), move their jobs from ``scheduled`` to ``queued``, publish each message
exactly as it was submitted (same value, key, headers: the same job id) to its priority
topic, wait for every ack, then mark the rows released. A crash or a failed ack before
the commit leaves the rows pending, and a later round publishes them again under the same
job id, which workers dedupe. A row whose job was cancelled is marked skipped and not
published.

Between rounds the dispatcher sleeps until the earliest pending due time (at most
``max_sleep``), and ``LISTEN`` on the schema's channel wakes it early when new rows arrive
(one may be due sooner than what it sleeps for).

A failed round (Postgres or the broker away, a publish not acknowledged) is rolled back and
tried again with backoff, except when the producer hit a fatal error
(:class:`~conveyor.errors.ProducerFatalError`: idempotence broken, it sends no more). Then
no retry can succeed, so the round is rolled back (its rows stay pending, their jobs
``scheduled``) and :meth:`Dispatcher.run` ends with that error, as the retry relay does: the
scheduler stops, ``conveyor scheduler`` exits with it, and a worker's liveness names the
stopped scheduler. Another dispatcher (a new producer) releases the rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from typing import Any

import asyncpg

from conveyor import db
from conveyor.consumer.republish import Republisher
from conveyor.errors import ConveyorError, ProducerFatalError
from conveyor.observability.metrics import WorkerMetrics
from conveyor.scheduling import store
from conveyor.settings import Settings

log = logging.getLogger("conveyor.scheduler")

DEFAULT_BATCH = 500
DEFAULT_MAX_SLEEP = 5.0
DELIVERY_TIMEOUT = 30.0
MIN_BACKOFF = 0.5
MAX_BACKOFF = 30.0
GAUGE_INTERVAL = 5.0
#: Pause when rows are due but other dispatchers hold them all (they release them now).
LOCKED_PAUSE = 0.05
#: How a fatal error of the dispatcher's producer names it.
PRODUCER_NAME = "the scheduler dispatcher's producer"


@dataclasses.dataclass
class DispatcherStats:
    """What the dispatcher did (read them; they only grow)."""

    released: int = 0
    """Rows released (published, acked, and marked in one committed transaction)."""
    skipped: int = 0
    """Rows of cancelled jobs, marked skipped."""
    failures: int = 0
    """Rounds that failed (an outage) and were tried again."""
    lateness: list[float] = dataclasses.field(default_factory=list)
    """Seconds from due time to ack, per released row, when ``record_lateness`` is on."""


class Dispatcher:
    """Releases due delayed jobs to their priority topics.

    Call :meth:`start`, then :meth:`run` until a stop event is set.

    Args:
        settings: Broker, database and schema.
        pool: Connections to conveyor's schema.
        metrics: Where the scheduled gauge and the lateness histogram go, if anywhere.
        batch: Rows released per transaction at most.
        max_sleep: Longest sleep between rounds (a missed notification costs at most this).
        record_lateness: Keep every release's lateness in ``stats.lateness`` (bench, tests).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        pool: asyncpg.Pool[Any],
        metrics: WorkerMetrics | None = None,
        batch: int = DEFAULT_BATCH,
        max_sleep: float = DEFAULT_MAX_SLEEP,
        record_lateness: bool = False,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self._settings = settings
        self._pool = pool
        self._metrics = metrics
        self._batch = batch
        self._max_sleep = max_sleep
        self._record_lateness = record_lateness
        self._republisher: Republisher | None = None
        self._listener: asyncpg.Connection[Any] | None = None
        self._wake = asyncio.Event()
        self._gauge_at = 0.0
        self.stats = DispatcherStats()

    async def start(self) -> None:
        """Creates the producer and listens for new rows.

        Raises:
            DatabaseUnavailableError: Postgres cannot be reached.
            ConfigurationError: The producer configuration was refused.
        """
        self._republisher = Republisher(
            self._settings, delivery_timeout=DELIVERY_TIMEOUT, linger_ms=1, name=PRODUCER_NAME
        )
        await self._listen()

    async def _listen(self) -> None:
        conn = await db.connect(self._settings)
        await conn.add_listener(store.wake_channel(self._settings.database_schema), self._on_notify)
        self._listener = conn

    def _on_notify(self, *_args: object) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Releases due rows until ``stop`` is set, then closes the producer and listener.

        Raises:
            ProducerFatalError: The producer hit a fatal error, so nothing can be published
                again; the round that saw it released nothing. A fatal error reported while
                no round publishes is seen before the next round (within ``max_sleep``).
        """
        republisher = self._republisher
        if republisher is None:
            raise RuntimeError("call Dispatcher.start() before run()")
        backoff = MIN_BACKOFF
        try:
            while not stop.is_set():
                self._wake.clear()
                fatal = republisher.fatal_error
                if fatal is not None:
                    raise fatal
                try:
                    settled = await self.release_due()
                    if settled >= self._batch:
                        continue  # more may be due right now
                    wait = await self._seconds_to_next()
                    if settled == 0 and wait <= 0:
                        wait = LOCKED_PAUSE
                    await self._refresh_gauge()
                    if self._listener is None or self._listener.is_closed():
                        await self._listen()
                except ProducerFatalError:
                    # Not retried: the producer sends no more (it has logged the error once).
                    raise
                except (ConveyorError, asyncpg.PostgresError, OSError) as exc:
                    self.stats.failures += 1
                    log.warning("releasing scheduled jobs failed (%s); trying again", exc)
                    wait, backoff = backoff, min(backoff * 2, MAX_BACKOFF)
                else:
                    backoff = MIN_BACKOFF
                if wait > 0:
                    await _wait_any(stop, self._wake, wait)
        finally:
            await self.close()

    async def _seconds_to_next(self) -> float:
        with db.database_errors("reading the next scheduled due time"):
            seconds = await self._pool.fetchval(store.NEXT_DUE)
        if seconds is None:
            return self._max_sleep
        return min(max(float(seconds), 0.0), self._max_sleep)

    async def _refresh_gauge(self) -> None:
        if self._metrics is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._gauge_at < GAUGE_INTERVAL:
            return
        self._gauge_at = loop.time()
        with db.database_errors("counting scheduled jobs"):
            self._metrics.scheduled_pending.set(await self._pool.fetchval(store.PENDING_COUNT))

    async def release_due(self) -> int:
        """Releases one batch of due rows; returns how many rows it settled.

        Raises:
            DeliveryError: A publish was not acknowledged; nothing of the batch is marked.
            ProducerFatalError: The producer is unusable; nothing of the batch is marked.
            DatabaseUnavailableError: Postgres went away; nothing of the batch is marked.
        """
        assert self._republisher is not None
        with db.database_errors("releasing scheduled jobs"):
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(store.CLAIM_DUE, self._batch)
                if not rows:
                    return 0
                publish = [r for r in rows if r["state"] != "cancelled"]
                skip = [r["job_id"] for r in rows if r["state"] == "cancelled"]
                await conn.execute(store.QUEUE_JOBS, [r["job_id"] for r in publish])
                futures = [
                    self._republisher.send(
                        r["topic"],
                        value=r["message_value"],
                        key=r["message_key"],
                        headers=store.headers_from(r["headers"]),
                    )
                    for r in publish
                ]
                await asyncio.gather(*futures)
                acked = dt.datetime.now(dt.UTC)
                await conn.execute(store.MARK_RELEASED, [r["job_id"] for r in publish], skip)
        self.stats.released += len(publish)
        self.stats.skipped += len(skip)
        for r in publish:
            late = (acked - r["due_at"]).total_seconds()
            if self._metrics is not None:
                self._metrics.release_lateness.labels(r["priority"]).observe(max(late, 0.0))
                self._metrics.scheduled_released.labels(r["priority"]).inc()
            if self._record_lateness:
                self.stats.lateness.append(late)
        return len(rows)

    async def close(self) -> None:
        """Stops listening and flushes the producer. Idempotent."""
        listener, self._listener = self._listener, None
        republisher, self._republisher = self._republisher, None
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.close()
        if republisher is not None:
            await asyncio.to_thread(republisher.close)


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, timeout: float) -> None:
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


__all__ = ["Dispatcher", "DispatcherStats"]
