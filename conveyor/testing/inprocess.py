"""``TestWorker``: a real ``Worker``'s handlers, run in the test's event loop without a broker.

The in-process mode reuses the worker's own parts and replaces only the services:

- the real ``JobRunner`` (``conveyor.consumer.execution``) runs each job: payload
  decoding and validation, the handler call with its timeout, retry classification and
  backoff (``conveyor.consumer.failures``), the retry or DLQ publish and the status
  writes, in the order the worker makes them;
- the real ``Producer``/``AsyncProducer`` and ``FailurePublisher`` encode every message
  in Confluent wire format (a mock schema registry), and send it to a
  :class:`~conveyor.testing.memlog.MemoryLog` instead of Kafka;
- the worker's entity mailboxes and weighted scheduler pick what runs next, so one key's
  jobs run one at a time, in order, and priorities share ``concurrency`` 4:3:2:1;
- job status lives in :class:`~conveyor.testing.memstatus.MemoryStatus` and reads back as
  the ``JobStatus`` ``JobStore`` gives; dead jobs become ``DlqEntry`` rows;
- delayed and ``run_at`` jobs are held as the scheduler holds them (``scheduled``, with
  their due time, cancellable) and released to their priority topic when due; that
  scheduler, the retry relay and the DLQ sink are
  :class:`~conveyor.testing.memservices.MemoryServices`;
- a :class:`~conveyor.testing.clock.FakeClock` decides when a retry or a delayed job is
  due, and wakes in-place retries (``ordering="key"``), so backoff costs no real time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self, cast

import asyncpg
from confluent_kafka.schema_registry import SchemaRegistryClient

from conveyor import dlq_replay
from conveyor.consumer import failures
from conveyor.consumer.execution import JobRunner
from conveyor.consumer.job import JobMessage
from conveyor.consumer.mailbox import Entry, Mailboxes
from conveyor.consumer.publisher import FailurePublisher
from conveyor.consumer.scheduler import WeightedScheduler
from conveyor.consumer.worker import Worker
from conveyor.dlq import DlqEntry
from conveyor.errors import ConveyorError, DeserializationError
from conveyor.jobstatus import JobStatus
from conveyor.producer.aio import AsyncProducer
from conveyor.producer.sync import Producer
from conveyor.schemas.contracts import JOB_ENVELOPE
from conveyor.schemas.payload import PayloadCodec
from conveyor.schemas.serde import Serde
from conveyor.testing.clock import FakeClock
from conveyor.testing.database import TestPool
from conveyor.testing.memdlq import MemoryDlq
from conveyor.testing.memlog import MemoryDelivery, MemoryLog
from conveyor.testing.memservices import MemoryServices
from conveyor.testing.memstatus import MemoryStatus, canonical
from conveyor.topology.model import PRIORITIES, PRIORITY_WEIGHTS, Topology

#: How far :meth:`TestWorker.settle` may skip the clock before it gives up.
DEFAULT_SETTLE_LIMIT = 366 * 86400.0


class TestWorker:
    """Runs a ``Worker``'s handlers in process, over an in-memory log, on a fake clock.

    Use it as ``async with TestWorker(worker) as tw``: jobs submitted through
    ``tw.producer()`` run on ``await tw.drain()``; ``await tw.advance(seconds)`` moves the
    clock so retries and delayed jobs fall due.

    Args:
        worker: The worker whose handlers, priorities and concurrency are used. It is
            not started: nothing connects to Kafka, Postgres or a registry.
        db: An asyncpg connection inside a transaction (the ``conveyor_db`` fixture) for
            ``ctx.db``; each job runs in a savepoint on it. Without one, a handler that
            uses ``ctx.db`` makes :meth:`drain` raise ``NoTestDatabaseError``.
        clock: The clock; a new :class:`FakeClock` by default.
    """

    __test__ = False  # not a test class, whatever pytest's name pattern says

    def __init__(
        self,
        worker: Worker,
        *,
        db: asyncpg.Connection[Any] | None = None,
        clock: FakeClock | None = None,
    ) -> None:
        self.worker = worker
        self.settings = worker.settings
        self.clock = clock or FakeClock()
        self.topology = Topology.from_settings(self.settings)
        self.log = MemoryLog(self.clock, self._partitions)
        self.status_store = MemoryStatus(self.clock, worker_id=worker.worker_id)
        #: ``JobFailed`` events, as the DLQ sink would publish them.
        self.events: list[dict[str, Any]] = []
        self._registry_client = SchemaRegistryClient.new_client(
            {"url": f"mock://conveyor-testing-{uuid.uuid4().hex}"}
        )
        self._serde = Serde(self.settings, client=self._registry_client)
        codec = PayloadCodec(self._serde, self.settings.topic_prefix)
        for spec in worker.registry:
            if spec.schema is not None:
                codec.register_type(spec.type, spec.schema)
        worker.metrics.know_types(spec.type for spec in worker.registry)
        self._publisher = FailurePublisher(
            self.settings, serde=self._serde, core=MemoryDelivery(self.log)
        )
        self._pool = TestPool(db)
        self._runner = JobRunner(
            status=self.status_store,
            pool=cast(Any, self._pool),
            registry=worker.registry,
            codec=codec,
            stats=worker.stats,
            metrics=worker.metrics,
            consumer_groups={
                self.topology.job_topic(p): self.topology.consumer_group(p) for p in PRIORITIES
            },
            lease_seconds=worker.options.lease_seconds,
            publisher=self._publisher,
            sleep=self.clock.sleep,
        )
        self._scheduler = WeightedScheduler({p: PRIORITY_WEIGHTS[p] for p in worker.priorities})
        self._mailboxes: dict[str, Mailboxes[JobMessage]] = {
            p: Mailboxes() for p in worker.priorities
        }
        self._dlq = MemoryDlq()
        self._services = MemoryServices(
            log=self.log,
            serde=self._serde,
            topology=self.topology,
            clock=self.clock,
            status=self.status_store,
            dlq=self._dlq,
            events=self.events,
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failures: list[BaseException] = []
        self._changed = self.clock.parked

    # -- submitting -------------------------------------------------------------------

    def producer(self, *, schemas: Mapping[str, Any] | None = None) -> Producer:
        """A real ``Producer`` whose messages go to this worker's in-memory log.

        Args:
            schemas: Payload schemas by job type, as ``Producer`` takes them.
        """
        return Producer(
            self.settings, schemas=schemas, serde=self._serde, core=MemoryDelivery(self.log)
        )

    def async_producer(self, *, schemas: Mapping[str, Any] | None = None) -> AsyncProducer:
        """A real ``AsyncProducer`` whose messages go to this worker's in-memory log.

        Args:
            schemas: Payload schemas by job type, as ``AsyncProducer`` takes them.
        """
        return AsyncProducer(
            self.settings, schemas=schemas, serde=self._serde, core=MemoryDelivery(self.log)
        )

    # -- running ----------------------------------------------------------------------

    async def drain(self) -> int:
        """Runs jobs until none is due at the clock's current time.

        Jobs waiting out a backoff or a delay stay where they are; :meth:`advance` or
        :meth:`settle` moves the clock to them.

        Returns:
            How many deliveries ran.

        Raises:
            NoTestDatabaseError: A handler used ``ctx.db`` and no ``db`` was given.
            ConveyorError: The runner could not record a job's outcome (its error is
                chained).
        """
        ran = 0
        while True:
            self._changed.clear()
            self._services.schedule()
            await self._services.relay()
            await self._fetch()
            self._services.sink()
            ran += self._dispatch()
            self._raise_failures()
            if not self._tasks or len(self._tasks) <= self.clock.sleepers:
                return ran
            await self._changed.wait()

    async def advance(self, seconds: float | dt.timedelta) -> None:
        """Moves the clock ``seconds`` on, running what falls due along the way, in order.

        Raises:
            ValueError: ``seconds`` is negative.
        """
        remaining = seconds.total_seconds() if isinstance(seconds, dt.timedelta) else seconds
        if remaining < 0:
            raise ValueError(f"the clock only moves forward, got {seconds}")
        await self.drain()
        while (step := self._services.next_due()) is not None and step <= remaining:
            await self.clock.skip(step)
            remaining -= step
            await self.drain()
        await self.clock.skip(remaining)
        await self.drain()

    async def settle(self, *, limit: float = DEFAULT_SETTLE_LIMIT) -> float:
        """Runs everything, skipping the clock to each retry or delayed job until none is left.

        Args:
            limit: Seconds the clock may skip in all.

        Returns:
            The seconds skipped.

        Raises:
            ConveyorError: Work is still pending after skipping ``limit`` seconds.
        """
        skipped = 0.0
        await self.drain()
        while True:
            step = self._services.next_due()
            if step is None:
                if not self._tasks:
                    return skipped
                # A job parked on the clock came due by real time after the drain
                # returned (so it is not waiting for a skip): let it run, then look again.
                await self.drain()
                continue
            if skipped + step > limit:
                raise ConveyorError(f"jobs are still pending after skipping {limit:.0f} s")
            await self.clock.skip(step)
            skipped += step
            await self.drain()

    # -- reading ----------------------------------------------------------------------

    async def status(self, job_id: str) -> JobStatus:
        """The job's status, as ``JobStore.status`` gives it.

        Raises:
            ValueError: ``job_id`` is not a UUID.
        """
        return self.status_store.status(job_id)

    async def cancel(self, job_id: str, *, reason: str | None = None) -> str:
        """Cancels a job, as ``JobStore.cancel`` does; interrupts it if it is running.

        Returns:
            ``cancelled``, ``processing`` (interrupted; recorded once its task ends), or
            the final state the job already had.
        """
        state = self.status_store.request_cancel(job_id, reason)
        if state == "processing":
            # As the control command does: interrupt it if it runs, else remember the
            # cancel for a handler about to start.
            self._runner.cancel(canonical(job_id))
        return state

    async def dlq_list(
        self, *, type: str | None = None, tenant: str | None = None, pending_only: bool = True
    ) -> list[DlqEntry]:
        """DLQ entries, oldest first, as ``JobStore.dlq_list`` gives them."""
        return self._dlq.list(type=type, tenant=tenant, pending_only=pending_only)

    async def dlq_show(self, entry_id: int) -> DlqEntry:
        """One DLQ entry.

        Raises:
            DlqEntryNotFound: No entry has this id.
        """
        return self._dlq.show(entry_id)

    async def replay(self, entry_id: int) -> str:
        """Resubmits a dead job as attempt 1, once, as ``JobStore.replay`` does.

        Returns:
            The job id (the dead job's own: its status and history continue).

        Raises:
            DlqEntryNotFound: No entry has this id.
            ReplayRefused: The entry was replayed already, holds no job, or its job is
                not failed now.
        """
        entry = await self.dlq_show(entry_id)
        dlq_replay.check_replayable(entry)
        job_id = str(entry.original_job_id)
        state = self.status_store.status(job_id).state
        dlq_replay.check_job_failed(entry, None if state == "unknown" else state)
        envelope = dlq_replay.replay_envelope(entry, submitted_at=self.clock.now())
        self.status_store.requeue(
            job_id,
            envelope,
            {"type": "Replayed", "message": f"replayed from DLQ entry {entry.id}"},
        )
        topic = self.topology.job_topic(envelope["priority"])
        self.log.append(
            topic,
            (entry.key or job_id).encode(),
            self._serde.encode(JOB_ENVELOPE, topic, envelope),
            dlq_replay.replay_headers(job_id, envelope["type"], envelope["priority"]),
        )
        self._dlq.mark_replayed(entry, self.clock.now())
        return job_id

    # -- the loop's steps -------------------------------------------------------------

    def _partitions(self, topic: str) -> int:
        try:
            return self.topology.spec(topic).partitions
        except KeyError:
            return 1

    async def _fetch(self) -> None:
        """The consumers: decodes new job records into the key mailboxes."""
        for priority, mailboxes in self._mailboxes.items():
            topic = self.topology.job_topic(priority)
            for record in self._services.unread(topic):
                self._services.consumed(record)
                try:
                    envelope = self._serde.decode(JOB_ENVELOPE, topic, record.value)
                except DeserializationError as exc:
                    await self._publisher.dead_raw(
                        topic=topic,
                        partition=record.partition,
                        offset=record.offset,
                        key=record.key,
                        value=record.value,
                        headers=record.headers,
                        reason=failures.DESERIALIZATION,
                        error=failures.attempt_error(exc, 1),
                    )
                    self.worker.stats.undecodable += 1
                    continue
                job = JobMessage.from_envelope(
                    envelope,
                    topic=topic,
                    partition=record.partition,
                    offset=record.offset,
                    headers=record.headers,
                )
                mailboxes.add((topic, record.partition), job.key, record.offset, job)

    def _dispatch(self) -> int:
        started = 0
        while len(self._tasks) < self.worker.concurrency:
            ready = [p for p, boxes in self._mailboxes.items() if boxes.ready_count]
            priority = self._scheduler.pick(ready)
            if priority is None:
                break
            entry = self._mailboxes[priority].pop_ready()
            if entry is None:
                break
            task = asyncio.create_task(self._runner.run(entry.item))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._done, priority=priority, entry=entry))
            started += 1
        return started

    def _done(self, task: asyncio.Task[Any], *, priority: str, entry: Entry[JobMessage]) -> None:
        self._tasks.discard(task)
        self._mailboxes[priority].release(entry)
        if not task.cancelled() and task.exception() is not None:
            self._failures.append(cast(BaseException, task.exception()))
        self._changed.set()

    def _raise_failures(self) -> None:
        refused, self._pool.refused = self._pool.refused, None
        if refused is not None:
            raise refused
        if self._failures:
            first, self._failures = self._failures[0], []
            raise ConveyorError(f"a job's outcome could not be recorded: {first!r}") from first

    # -- lifecycle --------------------------------------------------------------------

    async def close(self) -> None:
        """Cancels jobs still waiting on the clock and releases the mock registry."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._serde.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
