"""The DLQ sink: dead jobs from ``<prefix>.jobs.dlq`` into ``job_dlq``, and their JobFailed.

Workers publish a ``DlqRecord`` for every dead job. :class:`DlqSink` reads them in the
consumer group ``<prefix>.dlq-sink`` and, for each one:

1. In one transaction: inserts a ``job_dlq`` row, or finds the one already there, since
   the row is keyed by the dead job's source coordinates (topic, partition, offset) and
   a redelivered message adds no second row; and, for a new row, marks the job
   ``failed`` with a transition carrying the last error, unless it already ended or a
   worker still holds its lease (the worker records the failure itself; the sink covers
   a worker that died after the DLQ publish, and a job no worker claimed).
2. While the row's ``event_published_at`` is null, publishes one ``JobFailed`` event to
   ``<prefix>.jobs.events`` (key: the job id), waits for the broker's ack, then sets
   ``event_published_at``.
3. Commits the message's offset.

So every dead job gets one row and one event. A crash after the event was acknowledged
but before ``event_published_at`` was written publishes the event again when the
message is redelivered: consumers that must not see it twice dedupe on ``dlq_id``.
Records without a job id (messages the worker could not decode) get a row but no event,
since a ``JobEvent`` needs a job id.

On a rebalance the sink's listener stops handling messages of the revoked partitions and
waits (at most ``REVOKE_WAIT``) for the message in hand to be stored, announced and
committed before the partition is released. Without it the next owner read that message
while this sink was still publishing its JobFailed, found ``event_published_at`` still
null, and published the event a second time.

A DLQ message that does not decode is logged, counted and committed past; it cannot
block the partition. One whose data Postgres refuses (NUL in a text, an out-of-range
field) is stored cleaned (``dlq_rows.cleaned``) rather than skipped. An outage (Postgres,
the registry, the broker) is not the message's fault: the sink seeks back to it, backs off and tries
again, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from opentelemetry.trace import Span

from conveyor.consumer import dlq_rows
from conveyor.consumer.kafka import start_group_consumer
from conveyor.consumer.options import rebalance_timeout
from conveyor.consumer.status import error_json
from conveyor.dlq import PUBLISH_TIMEOUT, RecordPublisher, database_errors
from conveyor.errors import (
    BrokerUnavailableError,
    ConveyorError,
    DeserializationError,
    SerializationError,
)
from conveyor.observability import tracing
from conveyor.schemas.contracts import DLQ_RECORD, JOB_EVENT
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology.model import Topology

log = logging.getLogger("conveyor.dlq_sink")

DEFAULT_SESSION_TIMEOUT_MS = 10_000
DEFAULT_HEARTBEAT_INTERVAL_MS = 3_000
DEFAULT_FETCH_TIMEOUT_MS = 500
MAX_BATCH = 100
MIN_BACKOFF = 0.5
MAX_BACKOFF = 30.0
REVOKE_WAIT = PUBLISH_TIMEOUT + 5.0
"""Seconds a revoke waits for the message in hand (its event publish, then its commit)."""


@dataclasses.dataclass
class DlqSinkStats:
    """What the sink did (read them; they only grow)."""

    handled: int = 0
    """DLQ messages committed past, whatever their outcome."""
    inserted: int = 0
    """New ``job_dlq`` rows."""
    duplicates: int = 0
    """Redelivered messages whose row was already there."""
    jobs_failed: int = 0
    """Jobs the sink marked failed (the worker had not)."""
    events_published: int = 0
    """JobFailed events acknowledged by the broker."""
    undecodable: int = 0
    """DLQ messages that did not decode; skipped."""
    rejected: int = 0
    """Rows stored whose JobFailed event the event contract refused."""
    cleaned: int = 0
    """Messages whose data Postgres refused, stored cleaned instead."""
    retries: int = 0
    """Messages tried again after an outage."""


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: DlqSink) -> None:
        self._sink = sink

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._sink._release(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._sink._assign(assigned)


class DlqSink:
    """Consumes the DLQ topic into ``job_dlq`` and emits one JobFailed per dead job.

    Call :meth:`start`, then :meth:`run` until a stop event is set.

    Args:
        settings: Broker, registry and topic prefix.
        pool: Connections to conveyor's schema (``conveyor.db.create_pool``).
        serde: Decodes DLQ records and encodes events.
        session_timeout_ms: Kafka consumer session timeout.
        heartbeat_interval_ms: Kafka consumer heartbeat interval.
        fetch_timeout_ms: How long one fetch waits; also how soon a stop is noticed.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        pool: asyncpg.Pool[Any],
        serde: Serde,
        session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS,
        heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS,
        fetch_timeout_ms: int = DEFAULT_FETCH_TIMEOUT_MS,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._serde = serde
        self._topology = Topology.from_settings(settings)
        self._session_timeout_ms = session_timeout_ms
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._fetch_timeout_ms = fetch_timeout_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._publisher: RecordPublisher | None = None
        self.stats = DlqSinkStats()
        # Held while one message is stored, announced and committed; a revoke waits on it.
        self._handling = asyncio.Lock()
        self._revoked: set[TopicPartition] = set()  # no more messages of these are handled

    @property
    def group_id(self) -> str:
        """The consumer group, ``<prefix>.dlq-sink``."""
        return f"{self._topology.prefix}.dlq-sink"

    async def start(self) -> None:
        """Registers the event contract, then joins the group on the DLQ topic.

        Raises:
            RegistryUnavailableError: The registry did not answer.
            SerializationError: The registry refused the JobEvent contract.
            BrokerUnavailableError: The consumer could not start.
        """
        events = self._topology.events_topic
        await asyncio.to_thread(self._serde.register, JOB_EVENT, events)
        self._publisher = RecordPublisher(self._settings, serde=self._serde)
        try:
            self._consumer = await start_group_consumer(
                self._settings,
                self._topology.dlq_topic,
                group_id=self.group_id,
                client_id="conveyor-dlq-sink",
                session_timeout_ms=self._session_timeout_ms,
                heartbeat_interval_ms=self._heartbeat_interval_ms,
                # The group waits for the revoke, which waits for the message in hand.
                rebalance_timeout_ms=rebalance_timeout(REVOKE_WAIT, self._session_timeout_ms, None),
                listener=_Listener(self),
            )
        except BrokerUnavailableError:
            await self.close()
            raise

    async def run(self, stop: asyncio.Event) -> None:
        """Handles DLQ messages until ``stop`` is set, then closes the consumer.

        Each message's offset is committed once it is handled, so nothing is left to
        commit at the end; a message cut off by the stop is read again next time.
        """
        if self._consumer is None:
            raise RuntimeError("call DlqSink.start() before run()")
        backoff = MIN_BACKOFF
        try:
            while not stop.is_set():
                batch = await self._consumer.getmany(
                    timeout_ms=self._fetch_timeout_ms, max_records=MAX_BATCH
                )
                if await self._handle_batch(batch, stop):
                    backoff = MIN_BACKOFF
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        finally:
            await self.close()

    async def close(self) -> None:
        """Leaves the group and stops the event producer. Idempotent."""
        consumer, self._consumer = self._consumer, None
        publisher, self._publisher = self._publisher, None
        try:
            if consumer is not None:
                await consumer.stop()
        finally:
            if publisher is not None:
                await publisher.close()

    async def _handle_batch(
        self,
        batch: Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]],
        stop: asyncio.Event,
    ) -> bool:
        """Handles and commits each record; False when an outage left some for later."""
        assert self._consumer is not None
        healthy = True
        for tp, records in batch.items():
            for record in records:
                if stop.is_set():
                    return healthy
                if tp in self._revoked:
                    break  # its next owner reads the rest
                async with self._handling:
                    try:
                        await self._handle(tp, record)
                    except Exception:
                        log.exception(
                            "DLQ message %s[%d]@%d not stored yet; trying again after a pause",
                            tp.topic,
                            tp.partition,
                            record.offset,
                        )
                        self.stats.retries += 1
                        with contextlib.suppress(Exception):  # the partition may be gone
                            self._consumer.seek(tp, record.offset)
                        healthy = False
                        break
                    self.stats.handled += 1
                    await self._commit(tp, record.offset + 1)
        return healthy

    async def _release(self, revoked: set[TopicPartition]) -> None:
        """The revoke: no further message of ``revoked`` is started, and the one in hand
        is stored, announced and committed before the partitions go (at most
        ``REVOKE_WAIT``; past it the next owner may announce it again)."""
        self._revoked |= revoked
        if not revoked:
            return
        try:
            await asyncio.wait_for(self._handling.acquire(), REVOKE_WAIT)
        except TimeoutError:
            log.warning(
                "revoke of %s: a DLQ message still in hand after %.0fs; its JobFailed may "
                "be published again by the next owner",
                sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked),
                REVOKE_WAIT,
            )
            return
        self._handling.release()

    def _assign(self, assigned: set[TopicPartition]) -> None:
        self._revoked -= assigned

    async def _commit(self, tp: TopicPartition, offset: int) -> None:
        assert self._consumer is not None
        try:
            await self._consumer.commit({tp: OffsetAndMetadata(offset, "")})
        except KafkaError as exc:
            # A rebalance took the partition: its next owner reads the message again and
            # finds the row (and the published event) already there.
            log.warning("commit of %s[%d]@%d deferred: %s", tp.topic, tp.partition, offset, exc)

    async def _handle(self, tp: TopicPartition, message: ConsumerRecord[Any, Any]) -> None:
        """Stores one DLQ message in a CONSUMER span that continues the job's trace."""
        attributes = tracing.kafka_attributes(
            operation="process",
            destination=tp.topic,
            partition=tp.partition,
            offset=message.offset,
            group=self.group_id,
            key=message.key,
        )
        with tracing.process_span(
            message.headers, destination=tp.topic, attributes=attributes
        ) as span:
            await self._store_and_announce(tp, message, span)

    async def _store_and_announce(
        self, tp: TopicPartition, message: ConsumerRecord[Any, Any], span: Span
    ) -> None:
        where = f"{tp.topic}[{tp.partition}]@{message.offset}"
        try:
            record = await asyncio.to_thread(
                self._serde.decode, DLQ_RECORD, tp.topic, message.value
            )
        except DeserializationError as exc:
            self.stats.undecodable += 1
            log.error("skipping undecodable DLQ message %s: %s", where, exc)
            return
        span.set_attributes(
            tracing.job_attributes(
                job_id=None if record.get("job_id") is None else str(record["job_id"]),
                job_type=record.get("type"),
                priority=record.get("priority"),
                attempt=record.get("attempts"),
            )
        )
        span.set_attribute("conveyor.dlq.reason", record["error_reason"])
        try:
            try:
                dlq_id, published = await self._store(record)
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                # Never skip a dead job: store what Postgres will take (a second refusal
                # propagates, and the message is tried again after a pause).
                log.warning("DLQ message %s refused by Postgres (%s); stored cleaned", where, exc)
                self.stats.cleaned += 1
                record = dlq_rows.cleaned(record)
                dlq_id, published = await self._store(record)
            if record.get("job_id") is not None and not published:
                await self._publish(record, dlq_id)
        except SerializationError as exc:
            self.stats.rejected += 1
            log.error("no JobFailed event for DLQ message %s: %s", where, exc)

    async def _store(self, record: Mapping[str, Any]) -> tuple[int, bool]:
        """Inserts (or finds) the row; returns its id and whether its event is out."""
        job_id = record.get("job_id")
        max_attempts = record.get("max_attempts")
        if max_attempts is not None and max_attempts < 1:
            max_attempts = None
        coordinates = (record["source_topic"], record["source_partition"], record["source_offset"])
        with database_errors(f"storing the dead job {job_id}"):
            async with self._pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    dlq_rows.INSERT,
                    job_id,
                    record.get("tenant_id"),
                    record.get("type"),
                    record["payload"],
                    record.get("content_type"),
                    record["error_reason"],
                    record["attempts"],
                    dlq_rows.history_json(record.get("error_history") or []),
                    record["dead_at"],
                    record.get("trace_id"),
                    *coordinates,
                    record.get("key"),
                    record.get("priority"),
                    record.get("batch_id"),
                    record.get("dedupe_key"),
                    max_attempts,
                    record.get("duration"),
                    record.get("submitted_at"),
                )
                if row is None:
                    row = await conn.fetchrow(dlq_rows.EXISTING, *coordinates)
                    if row is None:  # deleted between the two statements: insert it again
                        raise ConveyorError(f"the DLQ row of job {job_id} vanished; retrying")
                    self.stats.duplicates += 1
                else:
                    self.stats.inserted += 1
                    if job_id is not None and await self._fail_job(conn, record, max_attempts):
                        self.stats.jobs_failed += 1
        return int(row["id"]), row["event_published_at"] is not None

    @staticmethod
    async def _fail_job(conn: Any, record: Mapping[str, Any], max_attempts: int | None) -> bool:
        done = await conn.fetchval(
            dlq_rows.FAIL_JOB,
            record["job_id"],
            record.get("type"),
            record.get("key"),
            record.get("tenant_id"),
            record.get("priority"),
            record.get("dedupe_key"),
            max_attempts,
            record.get("submitted_at"),
            record["attempts"],
            error_json(dlq_rows.last_error(record)),
        )
        return done is not None

    async def _publish(self, record: Mapping[str, Any], dlq_id: int) -> None:
        assert self._publisher is not None
        job_id = str(record["job_id"])
        await self._publisher.publish(
            JOB_EVENT,
            self._topology.events_topic,
            dlq_rows.job_failed_event(record, dlq_id),
            key=job_id.encode(),
            job_id=job_id,
            headers=tracing.with_current_context([]),
        )
        with database_errors(f"recording the JobFailed event of job {job_id}"):
            await self._pool.execute(dlq_rows.MARK_PUBLISHED, dlq_id)
        self.stats.events_published += 1


__all__ = [
    "DEFAULT_FETCH_TIMEOUT_MS",
    "DEFAULT_HEARTBEAT_INTERVAL_MS",
    "DEFAULT_SESSION_TIMEOUT_MS",
    "DlqSink",
    "DlqSinkStats",
]
