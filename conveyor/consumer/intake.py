"""From a fetched record to a job in its key's mailbox, or to the DLQ when it is none.

Every fetched record is tracked by offset first, so a partition's commit point waits for
it. A record that decodes to a job Postgres can store goes into its key's mailbox. One
that does not decode, or whose row Postgres would refuse (a NUL in a text field, an id
that is no UUID), is dead-lettered in a task of its own, tried again with backoff until
the DLQ has it; its offset is finished then, so a poison message never blocks its
partition and never pins its commit point.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from conveyor.consumer import failures
from conveyor.consumer.decoding import RegistryWaits
from conveyor.consumer.job import JobMessage
from conveyor.consumer.mailbox import Mailboxes
from conveyor.consumer.offsets import OffsetTracker
from conveyor.consumer.outcome import WorkerStats
from conveyor.consumer.publisher import FailurePublisher
from conveyor.errors import DeserializationError
from conveyor.observability.metrics import WorkerMetrics
from conveyor.schemas.contracts import JOB_ENVELOPE
from conveyor.schemas.serde import Serde
from conveyor.topology.model import Topology

log = logging.getLogger("conveyor.worker")

#: Records decoded between two loop turns (``Intake.prepare_fetch``).
INTAKE_CHUNK = 64

#: What :meth:`Intake.prepare` makes of a record: its job, or why it is none.
Prepared = JobMessage | DeserializationError

#: Backoff between tries to dead-letter a message that cannot run, doubling to the maximum.
DEAD_LETTER_RETRY_INITIAL = 0.5
DEAD_LETTER_RETRY_MAX = 30.0


class Intake:
    """Turns fetched records into jobs, or dead-letters them.

    Args:
        serde: Decodes envelopes.
        publisher: Dead-letters what cannot run.
        offsets: Tracks each record's offset until it is finished.
        stats: Where counters go.
        metrics: Where the dead-letter counter goes.
        topology: Names the priority of a topic.
        tasks: The loop's background tasks; dead-letter tasks join them, so the shutdown
            waits for them.
        holds: ``holds(tp, generation)``: the partition is still held in the
            assignment the record was fetched in.
        generation: The current assignment's number of a partition.
    """

    def __init__(
        self,
        *,
        serde: Serde,
        publisher: FailurePublisher,
        offsets: OffsetTracker,
        stats: WorkerStats,
        metrics: WorkerMetrics,
        topology: Topology,
        tasks: set[asyncio.Task[None]],
        holds: Callable[[TopicPartition, int], bool],
        generation: Callable[[TopicPartition], int],
    ) -> None:
        self._serde = serde
        self._publisher = publisher
        self._offsets = offsets
        self._stats = stats
        self._metrics = metrics
        self._topology = topology
        self._tasks = tasks
        self._holds = holds
        self._generation = generation

    async def prepare_fetch(
        self,
        consumer: AIOKafkaConsumer,
        batch: Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]],
        registry: RegistryWaits,
    ) -> dict[TopicPartition, tuple[int, list[tuple[ConsumerRecord[Any, Any], Prepared]]]]:
        """Decodes a fetch's records (:meth:`prepare`), by partition, with the number of
        the assignment they were fetched in; a partition revoked meanwhile ends early.

        Decoding is most of a fetch's cost: 500 records held the loop for about 15 ms,
        and every handler's timer due meanwhile waited (a 10 ms sleep took 12.9 ms on
        average). So a loop turn comes between chunks of ``INTAKE_CHUNK`` records. The
        caller buffers the jobs only once all are decoded, so the dispatcher never starts
        a job whose row was not read ahead with the rest of its fetch.
        """
        prepared: dict[
            TopicPartition, tuple[int, list[tuple[ConsumerRecord[Any, Any], Prepared]]]
        ] = {}
        count = 0
        for tp, records in batch.items():
            generation = self._generation(tp)
            if not self._holds(tp, generation):
                continue
            items: list[tuple[ConsumerRecord[Any, Any], Prepared]] = []
            prepared[tp] = (generation, items)
            for record in records:
                count += 1
                if not count % INTAKE_CHUNK:
                    await asyncio.sleep(0)
                    if not self._holds(tp, generation):
                        break  # revoked meanwhile: its owner now reads it again
                if not registry.needs_registry(record.value):
                    items.append((record, self.prepare(tp, record)))
                    continue
                # A schema id not read yet: one registry request, in a thread.
                decoded = await registry.decode(tp, record.offset, record.value or b"")
                if not self._holds(tp, generation):
                    break  # revoked meanwhile: its owner now reads it again
                if decoded is None:  # the registry is down or lags: wait, read again
                    registry.hold(consumer, tp)
                    break
                items.append((record, self.prepare(tp, record, decoded)))
        return prepared

    def prepare(
        self,
        tp: TopicPartition,
        record: ConsumerRecord[Any, Any],
        decoded: dict[str, Any] | DeserializationError | None = None,
    ) -> Prepared:
        """Decodes a fetched record into its job, or says why it is none; changes nothing.

        Args:
            decoded: The envelope when it was decoded already (after a registry lookup),
                or why it could not be.
        """
        if isinstance(decoded, DeserializationError):
            return decoded
        try:
            envelope = decoded or self._serde.decode(
                JOB_ENVELOPE, tp.topic, record.value or b"", text_uuids=True
            )
        except DeserializationError as exc:
            return exc
        headers = {k: v for k, v in record.headers or () if isinstance(v, bytes)}
        return JobMessage.from_envelope(
            envelope, topic=tp.topic, partition=tp.partition, offset=record.offset, headers=headers
        )

    def accept(
        self,
        mailboxes: Mailboxes[JobMessage],
        tp: TopicPartition,
        record: ConsumerRecord[Any, Any],
        prepared: Prepared,
        *,
        into: list[JobMessage],
    ) -> None:
        """Buffers a fetched record as a job in its key's mailbox (and in ``into``), or
        dead-letters it when it is not one.

        Args:
            prepared: What :meth:`prepare` made of the record.
        """
        self._offsets.track(tp, record.offset)
        if isinstance(prepared, DeserializationError):
            # Never block a partition on a poison message: it goes to the DLQ as raw bytes,
            # and its offset is finished once the DLQ has it.
            self._stats.undecodable += 1
            log.error(
                "undecodable message %s[%d]@%d: %s",
                tp.topic, tp.partition, record.offset, prepared,
            )  # fmt: skip
            raw_error = failures.attempt_error(prepared, 1)
            headers = {k: v for k, v in record.headers or () if isinstance(v, bytes)}
            self._dead_letter(
                tp,
                record.offset,
                lambda: self._publisher.dead_raw(
                    topic=tp.topic,
                    partition=tp.partition,
                    offset=record.offset,
                    key=record.key,
                    value=record.value or b"",
                    headers=headers,
                    reason=failures.DESERIALIZATION,
                    error=raw_error,
                ),
            )
            return
        job = prepared
        problem = job.unstorable()
        if problem is not None:
            # Its row could never be written, so no claim or outcome could be recorded:
            # it goes to the DLQ (the sink stores it cleaned) as a validation failure.
            self._stats.undecodable += 1
            log.error("job %s cannot be stored: %s", job.job_id, problem)
            error = failures.attempt_error(ValueError(problem), job.attempt)
            self._dead_letter(
                tp, record.offset, lambda: self._publisher.dead(job, [error], failures.VALIDATION)
            )
            return
        mailboxes.add(tp, job.key, record.offset, job)
        into.append(job)

    def _dead_letter(
        self, tp: TopicPartition, offset: int, send: Callable[[], Awaitable[None]]
    ) -> None:
        """Sends a message that cannot run to the DLQ in a task of its own, trying again
        with backoff until the DLQ has it; its offset is finished then, so the partition's
        commit point never stays pinned behind it."""

        async def dead_letter(generation: int) -> None:
            delay = DEAD_LETTER_RETRY_INITIAL
            while True:
                try:
                    await send()
                    break
                except Exception:
                    log.exception(
                        "could not dead-letter %s[%d]@%d; trying again in %.1fs",
                        tp.topic, tp.partition, offset, delay,
                    )  # fmt: skip
                if not self._holds(tp, generation):
                    return  # the partition's next owner reads the message again
                await asyncio.sleep(delay)
                delay = min(delay * 2, DEAD_LETTER_RETRY_MAX)
            self._stats.dead_lettered += 1
            self._metrics.dead_lettered.labels(self._topology.priority_of(tp.topic) or "").inc()
            if self._holds(tp, generation):
                self._offsets.finish(tp, offset)

        task = asyncio.create_task(dead_letter(self._generation(tp)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


__all__ = [
    "DEAD_LETTER_RETRY_INITIAL",
    "DEAD_LETTER_RETRY_MAX",
    "INTAKE_CHUNK",
    "Intake",
    "Prepared",
]
