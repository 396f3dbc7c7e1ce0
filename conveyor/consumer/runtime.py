"""The worker's event loop: fetch into key mailboxes, dispatch by weight, commit safely.

One aiokafka consumer per priority topic, each in its own group
(``<prefix>.workers.<priority>``), so deployments scale per topic. Fetched jobs go
into per-(partition, key) mailboxes; free concurrency slots go to ready jobs by
priority weight; a partition's committed offset only ever advances past finished
jobs. On revoke, not-started jobs are dropped (the next owner reads them again),
running ones get a bounded wait, and what finished is committed before the
partition is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Hashable, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from conveyor.consumer.commits import Committer
from conveyor.consumer.decoding import RegistryWaits
from conveyor.consumer.execution import HANDLER_DONE, JobRunner
from conveyor.consumer.intake import Intake
from conveyor.consumer.job import JobMessage
from conveyor.consumer.kafka import job_consumer, report_lag
from conveyor.consumer.mailbox import Entry, Mailboxes
from conveyor.consumer.offsets import OffsetTracker
from conveyor.consumer.options import WorkerOptions
from conveyor.consumer.outcome import WorkerStats
from conveyor.consumer.publisher import FailurePublisher
from conveyor.consumer.recording import Recorded, Recording
from conveyor.consumer.scheduler import WeightedScheduler
from conveyor.observability.metrics import WorkerMetrics
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology.model import PRIORITY_WEIGHTS, Topology

log = logging.getLogger("conveyor.worker")

_HALTED = "the retry/DLQ publisher is unusable"


def _tp(key: Hashable) -> TopicPartition:
    """Narrows a mailbox or tracker key back to the TopicPartition the loop put there."""
    assert isinstance(key, TopicPartition)
    return key


class _Revoker(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: ConsumerLoop, priority: str) -> None:
        self._loop = loop
        self._priority = priority

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._loop.release(self._priority, revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._loop.assigned(self._priority, assigned)


class ConsumerLoop:
    """Fetching, dispatching and committing for the priorities one worker serves.

    Args:
        settings: Broker and topic settings.
        priorities: The priorities served, in declaration order.
        concurrency: Jobs running at once, across all priorities and partitions.
        runner: Runs each job to a durable outcome.
        serde: Decodes envelopes.
        publisher: Dead-letters messages that do not decode.
        stats: Where counters go.
        metrics: Where gauges and counters for Prometheus go.
        options: Tuning (intervals, limits, timeouts).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        priorities: Sequence[str],
        concurrency: int,
        runner: JobRunner,
        serde: Serde,
        publisher: FailurePublisher,
        stats: WorkerStats,
        metrics: WorkerMetrics,
        options: WorkerOptions,
    ) -> None:
        self._settings = settings
        self._topology = Topology.from_settings(settings)
        self._priorities = list(priorities)
        self._concurrency = concurrency
        self._runner = runner
        self._serde = serde
        self._publisher = publisher
        self._stats = stats
        self._metrics = metrics
        self._options = options
        self._scheduler = WeightedScheduler({p: PRIORITY_WEIGHTS[p] for p in self._priorities})
        self._mailboxes: dict[str, Mailboxes[JobMessage]] = {
            p: Mailboxes() for p in self._priorities
        }
        self._offsets = OffsetTracker()
        self._consumers: dict[str, AIOKafkaConsumer] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._joined: set[str] = set()
        self._owned: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._running_per_tp: defaultdict[TopicPartition, int] = defaultdict(int)
        # Bumped on every assignment: a job dispatched under an older assignment of a
        # partition (revoked, then assigned back) must not finish offsets of the new one.
        self._generation: defaultdict[TopicPartition, int] = defaultdict(int)
        # Set when an assignment of a partition ends, so its in-place retries stop.
        self._lost: dict[TopicPartition, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._committer = Committer(
            self._consumers, offsets=self._offsets, topology=self._topology, owned=self.owned_now
        )
        self._wake = asyncio.Event()
        self._finished = asyncio.Event()
        self._in_flight = 0
        self._stopping = False
        self._recording = Recording(self._consumers, self._paused, stats)
        self._registry_waits = RegistryWaits(serde, unknown_schema_wait=options.unknown_schema_wait)
        self._intake = Intake(
            serde=serde,
            publisher=publisher,
            offsets=self._offsets,
            stats=stats,
            metrics=metrics,
            topology=self._topology,
            tasks=self._tasks,
            holds=lambda tp, generation: tp in self._owned and self._generation[tp] == generation,
            generation=lambda tp: self._generation[tp],
        )
        # One fetch never adds more than the pause threshold, so a partition's buffer stays
        # below twice the limit whatever the backlog.
        self._fetch_records = min(500, options.max_buffered_per_partition)

    @property
    def in_flight(self) -> int:
        """Jobs running now."""
        return self._in_flight

    @property
    def owned(self) -> frozenset[TopicPartition]:
        """The partitions this worker holds now."""
        return frozenset(self._owned)

    def owned_now(self) -> set[TopicPartition]:
        """The partitions this worker holds now (the live set, not a copy)."""
        return self._owned

    @property
    def joined(self) -> bool:
        """Every priority's consumer has joined its group (its assignment may be empty)."""
        return self._joined == set(self._priorities)

    @property
    def alive(self) -> bool:
        """No fetch, dispatch or commit loop has ended (true before they start)."""
        return not any(task.done() for task in self._loops)

    async def start(self) -> None:
        """Creates one consumer per priority and starts them together.

        Starting waits for the group join, so the consumers start concurrently: one
        join's wait (the broker's initial rebalance delay) rather than one per priority.
        """
        for priority in self._priorities:
            self._consumers[priority] = job_consumer(
                self._settings,
                self._topology,
                priority,
                self._options,
                listener=_Revoker(self, priority),
            )
        await asyncio.gather(*(c.start() for c in self._consumers.values()))

    async def close(self) -> None:
        """Stops every consumer without committing: for a start that failed part-way."""
        for consumer in self._consumers.values():
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def run(self, stop: asyncio.Event) -> None:
        """Fetches and dispatches until ``stop`` is set, then shuts down gracefully."""
        loops = [asyncio.create_task(self._fetch(p, c)) for p, c in self._consumers.items()]
        loops.append(asyncio.create_task(self._dispatch()))
        loops.append(
            asyncio.create_task(
                self._committer.periodically(self._priorities, self._options.commit_interval)
            )
        )
        self._loops = loops[:]  # the loops whose death makes the worker unhealthy
        loops.append(
            asyncio.create_task(
                report_lag(
                    self._consumers,
                    owned=self.owned_now,
                    offsets=self._offsets,
                    topology=self._topology,
                    metrics=self._metrics,
                    interval=self._options.metrics_interval,
                )
            )
        )
        try:
            await stop.wait()
        finally:
            self._stopping = True
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await self._shutdown()

    # -- fetching ---------------------------------------------------------------------

    async def _fetch(self, priority: str, consumer: AIOKafkaConsumer) -> None:
        mailboxes = self._mailboxes[priority]
        while True:
            self._halt_if_publisher_broken(priority, consumer)
            if not self._recording.store_down:
                self._registry_waits.resume_due(consumer, self._paused)
            batch = await consumer.getmany(
                timeout_ms=self._options.fetch_timeout_ms, max_records=self._fetch_records
            )
            prepared = await self._intake.prepare_fetch(consumer, batch, self._registry_waits)
            fetched: list[JobMessage] = []
            for tp, (generation, items) in prepared.items():
                if tp not in self._owned or self._generation[tp] != generation:
                    continue  # revoked while the fetch was decoded: its owner reads it again
                for record, item in items:
                    self._intake.accept(mailboxes, tp, record, item, into=fetched)
                if mailboxes.buffered(tp) >= self._options.max_buffered_per_partition:
                    consumer.pause(tp)
                    self._paused.add(tp)
            self._runner.prefetch(fetched)
            if batch:
                buffered = sum(m.total_buffered for m in self._mailboxes.values())
                self._stats.max_buffered = max(self._stats.max_buffered, buffered)
                self._wake.set()

    def _halt_if_publisher_broken(self, priority: str, consumer: AIOKafkaConsumer) -> None:
        """Stops taking jobs once the retry/DLQ publisher hit a fatal error.

        Every failure would then fail to publish and be retried forever; liveness fails
        (``WorkerProbes``), so the pod is restarted with a new producer, and until then
        this consumer fetches nothing more (a new assignment is paused here too).
        """
        problem = self._publisher.problem
        if problem is None:
            return
        unpaused = consumer.assignment() - consumer.paused()
        if unpaused:
            consumer.pause(*unpaused)
            log.error("%s: stopped fetching %s jobs: %s", _HALTED, priority, problem)

    # -- dispatching --------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._in_flight < self._concurrency and not self._stopping:
                ready = [p for p in self._priorities if self._mailboxes[p].ready_count]
                priority = self._scheduler.pick(ready)
                if priority is None:
                    break
                entry = self._mailboxes[priority].pop_ready()
                if entry is None:
                    break
                self._in_flight += 1
                self._metrics.in_flight_of(priority).inc()
                self._stats.max_in_flight = max(self._stats.max_in_flight, self._in_flight)
                self._running_per_tp[_tp(entry.tp)] += 1
                generation = self._generation[_tp(entry.tp)]
                task = asyncio.create_task(self._execute(priority, entry, generation))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _execute(self, priority: str, entry: Entry[JobMessage], generation: int) -> None:
        tp = _tp(entry.tp)
        mailboxes = self._mailboxes[priority]
        lost = self._lost_event(tp)
        held = [True, True]  # still holds its concurrency slot; still holds its key

        def handler_done() -> None:
            # A short job's slot and key are freed when its handler returns: completions
            # then batch while other handlers run (the key's next job among them),
            # instead of every slot and key waiting for its own write.
            if held[0]:
                held[0] = False
                self._in_flight -= 1
                self._metrics.in_flight_of(priority).dec()
            if held[1]:
                held[1] = False
                mailboxes.hand_off(entry)
            self._wake.set()

        HANDLER_DONE.set(handler_done)
        recorded: Recorded | None = None  # None: cancelled at shutdown, read again later
        try:
            # Every outcome (fenced included: the new owner handles its own delivery) means
            # this delivery never needs to be read again. An outcome that could not be
            # recorded (an outage, a refused write) is tried again with backoff
            # (``Recording``) until it is recorded or the partition is lost.
            recorded = await self._recording.run(
                self._runner, entry, lost, handed_off=lambda: not held[1]
            )
        finally:
            if recorded is not Recorded.AGAIN:
                mailboxes.release(entry)
            elif not mailboxes.requeue(entry):  # released: the partition was dropped
                self._recording.forget((entry.item.job_id,))
            if held[0]:
                self._in_flight -= 1
                self._metrics.in_flight_of(priority).dec()
            self._running_per_tp[tp] -= 1
            if (
                recorded is Recorded.DONE
                and tp in self._owned
                and self._generation[tp] == generation
            ):
                self._offsets.finish(tp, entry.offset)
            self._maybe_resume(priority, tp)
            self._finished.set()
            self._wake.set()

    async def reach_broker(self) -> None:
        """Asks the broker for the end offset of one job partition: a readiness check that
        fails while the broker cannot be reached, which the group state alone does not show.

        Raises:
            KafkaError: The broker did not answer.
        """
        for priority, consumer in self._consumers.items():
            await consumer.end_offsets([TopicPartition(self._topology.job_topic(priority), 0)])
            return

    @property
    def record_problem(self) -> str | None:
        """Why job outcomes are not being recorded now, or None (a readiness check)."""
        return self._recording.problem

    @property
    def registry_problem(self) -> str | None:
        """Which partitions wait for the schema registry, or None (a readiness check)."""
        return self._registry_waits.problem

    def _lost_event(self, tp: TopicPartition) -> asyncio.Event:
        event = self._lost.get(tp)
        if event is None:
            event = self._lost[tp] = asyncio.Event()
        return event

    def _maybe_resume(self, priority: str, tp: TopicPartition) -> None:
        if tp in self._paused and (
            self._mailboxes[priority].buffered(tp) <= self._options.max_buffered_per_partition // 2
        ):
            self._paused.discard(tp)
            if tp in self._owned:
                self._consumers[priority].resume(tp)

    # -- rebalancing --------------------------------------------------------------------

    def assigned(self, priority: str, assigned: set[TopicPartition]) -> None:
        """Takes ownership of newly assigned partitions."""
        self._owned.update(assigned)
        self._joined.add(priority)
        if self._recording.store_down:
            self._consumers[priority].pause(*assigned)
        for tp in assigned:
            self._generation[tp] += 1
            self._lost[tp] = asyncio.Event()  # this assignment's; the old one stays set
        self._count_assigned(priority)
        count = len(assigned)
        log.info("assigned %s: %d partition%s", priority, count, "" if count == 1 else "s")
        log.debug("assigned %s: %s", priority, sorted(tp.partition for tp in assigned))

    async def release(self, priority: str, revoked: set[TopicPartition]) -> None:
        """Drops not-started jobs, waits (bounded) for running ones, commits, then lets go."""
        if not revoked:
            return
        self._stats.rebalances += 1
        for tp in revoked:
            dropped = self._mailboxes[priority].drop(tp)
            self._recording.forget(entry.item.job_id for entry in dropped)
            self._lost_event(tp).set()  # in-place retries stop instead of waiting out backoff
        deadline = asyncio.get_running_loop().time() + self._options.revoke_timeout
        while any(self._running_per_tp[tp] for tp in revoked):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                log.warning(
                    "revoke: jobs still running on %s after %.0fs; their completions "
                    "will be fenced if another worker claims them",
                    revoked,
                    self._options.revoke_timeout,
                )
                break
            self._finished.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished.wait(), remaining)
        await self._committer.commit_now(priority, only=revoked)
        for tp in revoked:
            self._owned.discard(tp)
            self._paused.discard(tp)
            self._offsets.forget(tp)
        self._count_assigned(priority)

    def _count_assigned(self, priority: str) -> None:
        topic = self._topology.job_topic(priority)
        held = sum(1 for tp in self._owned if tp.topic == topic)
        self._metrics.assigned_partitions.labels(priority).set(held)

    # -- shutdown -----------------------------------------------------------------------

    async def _shutdown(self) -> None:
        for consumer in self._consumers.values():
            consumer.pause(*consumer.assignment())
        if self._tasks:
            _done, pending = await asyncio.wait(
                set(self._tasks), timeout=self._options.shutdown_grace
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for priority in self._priorities:
            with contextlib.suppress(Exception):
                await self._committer.commit(priority)
        for consumer in self._consumers.values():
            with contextlib.suppress(Exception):
                await consumer.stop()
