"""The scheduler's intake: delayed jobs from ``<prefix>.jobs.scheduled`` into Postgres.

Producers publish a job with a ``delay`` or ``run_at`` to the scheduled topic (acked like
any submit). :class:`ScheduledIntake` reads it in the consumer group
``<prefix>.scheduler`` and, per fetched batch, in one transaction: stores each message in
``scheduled_jobs`` (keyed by job id, so a message read again after a crash adds nothing)
and records the job ``scheduled`` with its due time in ``jobs``. Only then are the
offsets committed, so a crash re-reads and re-inserts harmlessly, and nothing is lost.

A message that cannot be scheduled (it does not decode, names a schema id the registry
does not know yet, or holds text Postgres refuses) is passed on unchanged to a job topic
(its own priority's when that decoded, else ``normal``), acked before the offset moves:
the worker then waits out a lagging registry or dead-letters the message with its
reason, as for any job message, so nothing is lost or skipped. An outage (Postgres, the
broker) seeks back to the batch and tries again after a pause.

A fatal error of the producer that passes messages on
(:class:`~conveyor.errors.ProducerFatalError`: idempotence broken, it sends no more) is not
retried, since no retry can succeed: :meth:`ScheduledIntake.run` ends with it, leaving the
batch uncommitted for the group's next member, as the retry relay does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from conveyor.consumer.job import JobMessage
from conveyor.consumer.kafka import start_group_consumer
from conveyor.consumer.republish import Republisher
from conveyor.db import database_errors
from conveyor.errors import DeserializationError, ProducerFatalError
from conveyor.scheduling import store
from conveyor.schemas.contracts import JOB_ENVELOPE
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology.model import PRIORITIES, Topology

#: Seconds a message passed on to a job topic may take to be acknowledged.
PASS_ON_TIMEOUT = 30.0

log = logging.getLogger("conveyor.scheduler")

DEFAULT_SESSION_TIMEOUT_MS = 10_000
DEFAULT_HEARTBEAT_INTERVAL_MS = 3_000
DEFAULT_FETCH_TIMEOUT_MS = 200
MAX_BATCH = 500
MIN_BACKOFF = 0.5
MAX_BACKOFF = 30.0
_FALLBACK_PRIORITY = "normal"
#: How a fatal error of the intake's producer names it.
PRODUCER_NAME = "the scheduler intake's producer"


@dataclasses.dataclass
class IntakeStats:
    """What the intake did (read them; they only grow)."""

    stored: int = 0
    """Messages stored (a redelivered one counts again; its row was already there)."""
    undecodable: int = 0
    """Messages that could not be scheduled, passed on to a job topic for the worker."""
    retries: int = 0
    """Batches tried again after an outage."""


@dataclasses.dataclass(frozen=True, slots=True)
class _PassOn:
    """A message that cannot be scheduled, for a job topic as it is."""

    topic: str
    message: ConsumerRecord[Any, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class _Row:
    job_id: Any
    due_at: dt.datetime
    envelope: Mapping[str, Any]
    priority: str
    key: bytes
    value: bytes
    headers: str


class ScheduledIntake:
    """Stores delayed jobs from the scheduled topic in ``scheduled_jobs``.

    Call :meth:`start`, then :meth:`run` until a stop event is set.

    Args:
        settings: Broker, registry and topic prefix.
        pool: Connections to conveyor's schema.
        serde: Decodes job envelopes.
        session_timeout_ms: Kafka consumer session timeout.
        heartbeat_interval_ms: Kafka consumer heartbeat interval.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        pool: asyncpg.Pool[Any],
        serde: Serde,
        session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS,
        heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._serde = serde
        self._topology = Topology.from_settings(settings)
        self._session_timeout_ms = session_timeout_ms
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._republisher: Republisher | None = None
        self.stats = IntakeStats()

    async def start(self) -> None:
        """Joins the group ``<prefix>.scheduler`` on the scheduled topic.

        Raises:
            BrokerUnavailableError: The consumer could not start.
        """
        self._republisher = Republisher(
            self._settings, delivery_timeout=PASS_ON_TIMEOUT, linger_ms=1, name=PRODUCER_NAME
        )
        self._consumer = await start_group_consumer(
            self._settings,
            self._topology.scheduled_topic,
            group_id=self._topology.scheduler_group,
            client_id="conveyor-scheduler",
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=self._heartbeat_interval_ms,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Stores batches until ``stop`` is set, then closes the consumer.

        Raises:
            ProducerFatalError: The producer hit a fatal error, so no message can be passed
                on again; the batch that saw it is not committed. A fatal error reported
                while nothing is passed on ends the run before the next fetch.
        """
        republisher = self._republisher
        if self._consumer is None or republisher is None:
            raise RuntimeError("call ScheduledIntake.start() before run()")
        backoff = MIN_BACKOFF
        try:
            while not stop.is_set():
                fatal = republisher.fatal_error
                if fatal is not None:
                    raise fatal
                batch = await self._consumer.getmany(
                    timeout_ms=DEFAULT_FETCH_TIMEOUT_MS, max_records=MAX_BATCH
                )
                if not batch:
                    continue
                try:
                    await self._store_batch(batch)
                except ProducerFatalError:
                    # Not retried: the producer sends no more (it has logged the error once).
                    # Nothing of the batch is committed; the group's next member reads it.
                    raise
                except Exception:
                    log.exception("scheduled jobs not stored yet; trying again after a pause")
                    self.stats.retries += 1
                    for tp, records in batch.items():
                        with contextlib.suppress(Exception):  # the partition may be gone
                            self._consumer.seek(tp, records[0].offset)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    continue
                backoff = MIN_BACKOFF
                await self._commit(batch)
        finally:
            await self.close()

    async def close(self) -> None:
        """Leaves the group. Idempotent."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
        republisher, self._republisher = self._republisher, None
        if republisher is not None:
            await asyncio.to_thread(republisher.close)

    async def _commit(
        self, batch: Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]]
    ) -> None:
        assert self._consumer is not None
        offsets = {
            tp: OffsetAndMetadata(records[-1].offset + 1, "") for tp, records in batch.items()
        }
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            # A rebalance took a partition: its next owner re-reads and finds the rows there.
            log.warning("commit of scheduled offsets deferred: %s", exc)

    def _decode(self, tp: TopicPartition, message: ConsumerRecord[Any, Any]) -> _Row | _PassOn:
        try:
            envelope = self._serde.decode(JOB_ENVELOPE, tp.topic, message.value)
        except DeserializationError as exc:
            return self._pass_on(tp, message, _FALLBACK_PRIORITY, str(exc))
        priority = envelope.get("priority")
        if priority not in PRIORITIES:
            priority = _FALLBACK_PRIORITY
        problem = JobMessage.from_envelope(
            envelope, topic=tp.topic, partition=tp.partition, offset=message.offset, headers={}
        ).unstorable()
        if problem is not None:
            return self._pass_on(tp, message, str(priority), problem)
        due = envelope.get("not_before") or envelope.get("submitted_at")
        if not isinstance(due, dt.datetime):
            due = dt.datetime.now(dt.UTC)
        return _Row(
            job_id=envelope["job_id"],
            due_at=due,
            envelope=envelope,
            priority=str(priority),
            key=message.key if message.key is not None else str(envelope["job_id"]).encode(),
            value=message.value,
            headers=store.headers_json(message.headers),
        )

    def _pass_on(
        self, tp: TopicPartition, message: ConsumerRecord[Any, Any], priority: str, why: str
    ) -> _PassOn:
        self.stats.undecodable += 1
        topic = self._topology.job_topic(priority)
        log.error(
            "scheduled message %s[%d]@%d cannot be scheduled (%s); passed on to %s, "
            "where the worker dead-letters it",
            tp.topic, tp.partition, message.offset, why, topic,
        )  # fmt: skip
        return _PassOn(topic, message)

    async def _store_batch(
        self, batch: Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]]
    ) -> None:
        decoded = await asyncio.to_thread(
            lambda: [self._decode(tp, m) for tp, records in batch.items() for m in records]
        )
        rows: dict[str, _Row] = {}
        passed: list[_PassOn] = []
        for row in decoded:
            if isinstance(row, _PassOn):
                passed.append(row)
            else:
                rows.setdefault(str(row.job_id), row)
        if passed:
            assert self._republisher is not None
            send = self._republisher.send
            await asyncio.gather(
                *(
                    send(
                        p.topic,
                        value=p.message.value,
                        key=p.message.key,
                        headers=list(p.message.headers or ()),
                    )
                    for p in passed
                )
            )
        if rows:
            await self.store(list(rows.values()))
        self.stats.stored += len(rows)

    async def store(self, rows: Sequence[_Row]) -> None:
        """Inserts the rows and their jobs' ``scheduled`` state in one transaction."""
        envelopes = [r.envelope for r in rows]
        with database_errors("storing scheduled jobs"):
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    store.INSERT_SCHEDULED,
                    [r.job_id for r in rows],
                    [r.due_at for r in rows],
                    [self._topology.job_topic(r.priority) for r in rows],
                    [e["type"] for e in envelopes],
                    [r.priority for r in rows],
                    [e.get("tenant_id") for e in envelopes],
                    [r.key for r in rows],
                    [r.value for r in rows],
                    [r.headers for r in rows],
                    [e.get("schedule_name") for e in envelopes],
                )
                await conn.execute(
                    store.INSERT_JOBS,
                    [r.job_id for r in rows],
                    [e["type"] for e in envelopes],
                    [e.get("key") for e in envelopes],
                    [e.get("tenant_id") for e in envelopes],
                    [r.priority for r in rows],
                    [e.get("batch_id") for e in envelopes],
                    [e.get("dedupe_key") for e in envelopes],
                    [_max_attempts(e) for e in envelopes],
                    [e.get("submitted_at") for e in envelopes],
                    [r.due_at for r in rows],
                )


def _max_attempts(envelope: Mapping[str, Any]) -> int | None:
    value = envelope.get("max_attempts")
    return value if isinstance(value, int) and value >= 1 else None


__all__ = ["IntakeStats", "ScheduledIntake"]
