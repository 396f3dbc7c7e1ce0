"""The ledger: every submitted job in Postgres as ``queued`` soon after its submit.

:class:`Ledger` reads the four job topics in its own consumer group
(``<prefix>.ledger``), apart from the workers' groups, so it keeps up however far
behind the workers are. Per fetch it decodes the envelopes (``envelopes``), skips what
cannot be a job (the worker dead-letters those; the ledger never waits on them), and
writes every job in one statement (``rows.INSERT_QUEUED``): a ``queued`` row and its
``queued`` transition for each job that has no row yet, nothing for the others. Offsets
are committed on an interval, on revoke and on stop, and only up to records whose
statement committed, so a crash re-reads records the statement then finds in place.

A newly held partition starts at the further of the ledger's and the worker group's
committed offsets (``offsets.WorkerOffsets``): the jobs below the workers' offset are
finished and have their rows, or had them before the retention purge, which a re-read
from the start of a topic (a new ledger group, expired offsets) must not undo.

An outage (Postgres, the registry for a new schema id) is not the records' fault: the
ledger seeks back to the fetch, backs off and tries again, so nothing is lost.

The worker runs a ledger beside the jobs (``WorkerOptions.run_ledger``);
``conveyor ledger`` runs one on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from conveyor import db
from conveyor.consumer.kafka import aiokafka_security
from conveyor.db import database_errors
from conveyor.errors import BrokerUnavailableError, ConveyorError, DeserializationError
from conveyor.ledger import rows
from conveyor.ledger.envelopes import EnvelopeDecoder, QueuedRow
from conveyor.ledger.offsets import WorkerOffsets
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology.model import PRIORITIES, Topology

log = logging.getLogger("conveyor.ledger")

#: What Postgres says about a row's data, as opposed to an outage: the row is at fault.
_REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)

DEFAULT_SESSION_TIMEOUT_MS = 10_000
DEFAULT_HEARTBEAT_INTERVAL_MS = 3_000
DEFAULT_FETCH_MAX_WAIT_MS = 50
"""How long the broker may hold a fetch that has less than ``DEFAULT_FETCH_MIN_BYTES``."""
DEFAULT_FETCH_MIN_BYTES = 64 * 1024
"""What a fetch waits for (or for ``DEFAULT_FETCH_MAX_WAIT_MS``): at a few jobs per
millisecond a fetch per arrival would cost the broker a request, and Postgres a
statement and a commit, for every job or two; this way a job is visible within about
the wait plus one statement, and the ledger reads in batches."""
DEFAULT_FETCH_TIMEOUT_MS = 200
DEFAULT_MAX_RECORDS = 2_000
"""Most records one fetch (so one statement) takes."""
DEFAULT_COMMIT_INTERVAL = 1.0
MIN_BACKOFF = 0.5
MAX_BACKOFF = 30.0


@dataclasses.dataclass
class LedgerStats:
    """What the ledger did (read them; they only grow)."""

    read: int = 0
    """Job messages read and handled (stored, found in place, or skipped)."""
    inserted: int = 0
    """New ``queued`` rows (each with its transition)."""
    existing: int = 0
    """Jobs that had a row already (a worker was first, or a re-read)."""
    undecodable: int = 0
    """Messages that could not be a job; skipped."""
    refused: int = 0
    """Jobs whose row Postgres refused (data the decoder's checks did not foresee); skipped."""
    statements: int = 0
    """Insert statements run (one per fetch that held jobs)."""
    retries: int = 0
    """Fetches read again after an outage."""


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._ledger._commit(only=revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._ledger._start_points(assigned)


class Ledger:
    """Records every job read from the job topics as ``queued`` in Postgres.

    Call :meth:`start`, then :meth:`run` until a stop event is set.

    Args:
        settings: Broker, registry, database schema and topic prefix.
        pool: Connections to conveyor's schema (``conveyor.db.create_pool``); by default
            the ledger opens its own single connection in :meth:`start` (closed by
            :meth:`close`), so it never waits behind jobs holding a shared pool's
            connections in their transactions.
        serde: Its registry client resolves the envelopes' schema ids.
        group_id: The consumer group; ``<prefix>.ledger`` by default.
        session_timeout_ms: Kafka consumer session timeout.
        heartbeat_interval_ms: Kafka consumer heartbeat interval.
        fetch_max_wait_ms: How long the broker may hold a fetch that found less than
            ``fetch_min_bytes``.
        fetch_min_bytes: What a fetch waits for (``DEFAULT_FETCH_MIN_BYTES``).
        max_records: Most records per fetch, so per statement.
        commit_interval: Seconds between offset commits.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        pool: asyncpg.Pool[Any] | None = None,
        serde: Serde,
        group_id: str | None = None,
        session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS,
        heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS,
        fetch_max_wait_ms: int = DEFAULT_FETCH_MAX_WAIT_MS,
        fetch_min_bytes: int = DEFAULT_FETCH_MIN_BYTES,
        max_records: int = DEFAULT_MAX_RECORDS,
        commit_interval: float = DEFAULT_COMMIT_INTERVAL,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._owns_pool = pool is None
        self._decoder = EnvelopeDecoder(serde.client)
        self._topology = Topology.from_settings(settings)
        self.group_id = group_id or f"{self._topology.prefix}.ledger"
        self.topics = [self._topology.job_topic(p) for p in PRIORITIES]
        self._session_timeout_ms = session_timeout_ms
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._fetch_min_bytes = fetch_min_bytes
        self._max_records = max_records
        self._commit_interval = commit_interval
        self._consumer: AIOKafkaConsumer | None = None
        self._worker_offsets = WorkerOffsets(settings)
        # Next offset to commit per partition: past records whose statement committed.
        self._done: dict[TopicPartition, int] = {}
        self._committed_at = time.monotonic()
        self.stats = LedgerStats()

    async def start(self) -> None:
        """Opens its connection (unless given a pool), then joins the group on the four
        job topics.

        Raises:
            DatabaseUnavailableError: Postgres cannot be reached.
            BrokerUnavailableError: The consumer could not start.
        """
        if self._pool is None:
            self._pool = await db.create_pool(self._settings, min_size=1, max_size=1)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.kafka_bootstrap,
            group_id=self.group_id,
            client_id="conveyor-ledger",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=self._heartbeat_interval_ms,
            fetch_max_wait_ms=self._fetch_max_wait_ms,
            fetch_min_bytes=self._fetch_min_bytes,
            **aiokafka_security(self._settings),
        )
        self._consumer.subscribe(self.topics, listener=_Listener(self))
        try:
            await self._consumer.start()
        except KafkaError as exc:
            await self.close()
            raise BrokerUnavailableError(
                f"cannot consume the job topics from Kafka at {self._settings.kafka_bootstrap}: "
                f"{exc}; check CONVEYOR_KAFKA_BOOTSTRAP and that `conveyor topology apply` "
                "created the topics"
            ) from exc

    async def run(self, stop: asyncio.Event) -> None:
        """Records fetched jobs until ``stop`` is set, then commits and closes."""
        if self._consumer is None:
            raise RuntimeError("call Ledger.start() before run()")
        backoff = MIN_BACKOFF
        try:
            while not stop.is_set():
                batch = await self._consumer.getmany(
                    timeout_ms=DEFAULT_FETCH_TIMEOUT_MS, max_records=self._max_records
                )
                if await self._record(batch):
                    backoff = MIN_BACKOFF
                    if time.monotonic() - self._committed_at >= self._commit_interval:
                        await self._commit()
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        finally:
            with contextlib.suppress(Exception):
                await self._commit()
            await self.close()

    async def close(self) -> None:
        """Leaves the group and closes its own connection. Idempotent."""
        consumer, self._consumer = self._consumer, None
        pool = self._pool if self._owns_pool else None
        if self._owns_pool:
            self._pool = None
        try:
            if consumer is not None:
                await consumer.stop()
        finally:
            self._worker_offsets.close()
            if pool is not None:
                await pool.close()

    async def _record(
        self, batch: Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]]
    ) -> bool:
        """Stores one fetch; False when an outage left it to be read again."""
        if not batch:
            return True
        try:
            if any(self._decoder.needs_registry(r.value) for rs in batch.values() for r in rs):
                # A schema id not seen yet is an HTTP request: never on the event loop.
                found = await asyncio.to_thread(self._decode, batch)
            else:
                found = self._decode(batch)
            unique = rows.distinct(found)
            if unique:
                refused = self.stats.refused
                inserted = await self._insert(unique)
                self.stats.inserted += inserted
                self.stats.existing += len(found) - inserted - (self.stats.refused - refused)
        except (ConveyorError, OSError, asyncpg.PostgresError) as exc:
            log.warning("ledger: %s; reading the fetch again after a pause", exc)
            self.stats.retries += 1
            self._rewind(batch)
            return False
        for tp, records in batch.items():
            if records:
                self._done[tp] = records[-1].offset + 1
                self.stats.read += len(records)
        return True

    async def _insert(self, unique: list[QueuedRow]) -> int:
        """Runs the fetch's statement; returns how many rows it inserted.

        If Postgres refuses the data of some row (what the decoder's checks did not
        foresee), the rows go one statement each and the refused ones are skipped, so
        one bad record never holds the others back.
        """
        assert self._pool is not None
        with database_errors("recording queued jobs"):
            try:
                self.stats.statements += 1
                return rows.inserted_count(
                    await self._pool.execute(rows.INSERT_QUEUED, *rows.arguments(unique))
                )
            except _REFUSED as exc:
                log.warning("ledger: Postgres refused a fetch (%s); storing it row by row", exc)
            inserted = 0
            for row in unique:
                try:
                    self.stats.statements += 1
                    status = await self._pool.execute(rows.INSERT_QUEUED, *rows.arguments([row]))
                except _REFUSED as exc:
                    self.stats.refused += 1
                    log.error(
                        "ledger: skipping %s[%d]@%d, which Postgres refused: %s",
                        row.topic,
                        row.partition,
                        row.offset,
                        exc,
                    )
                    continue
                inserted += rows.inserted_count(status)
        return inserted

    def _decode(
        self, batch: Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]]
    ) -> list[QueuedRow]:
        found: list[QueuedRow] = []
        skipped: list[str] = []
        row = self._decoder.row
        for tp, records in batch.items():
            for record in records:
                try:
                    found.append(
                        row(
                            record.value,
                            topic=tp.topic,
                            partition=tp.partition,
                            offset=record.offset,
                        )
                    )
                except DeserializationError as exc:
                    skipped.append(f"{tp.topic}[{tp.partition}]@{record.offset}: {exc}")
        if skipped:
            self.stats.undecodable += len(skipped)
            log.warning(
                "ledger: skipped %d message(s) that are not jobs (the worker dead-letters "
                "them); first: %s",
                len(skipped),
                skipped[0],
            )
        return found

    def _rewind(self, batch: Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]]) -> None:
        assert self._consumer is not None
        for tp, records in batch.items():
            if records:
                with contextlib.suppress(Exception):  # the partition may be gone
                    self._consumer.seek(tp, records[0].offset)

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commits what was stored, for the partitions still held (or ``only`` those)."""
        consumer = self._consumer
        self._committed_at = time.monotonic()
        if consumer is None:
            return
        held = consumer.assignment()
        offsets = {
            tp: OffsetAndMetadata(offset, "")
            for tp, offset in self._done.items()
            if tp in held and (only is None or tp in only)
        }
        for tp in offsets:
            del self._done[tp]
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # A rebalance took them: the next owner reads those records again and finds
            # their rows in place.
            log.info("ledger: commit deferred: %s", exc)

    async def _start_points(self, assigned: set[TopicPartition]) -> None:
        """Moves each newly held partition on to the worker group's committed offset when
        that is further than the ledger's own: the jobs below it are finished."""
        consumer = self._consumer
        if consumer is None or not assigned:
            return
        # Paused before the first await, so no fetch reads them from the old point meanwhile.
        consumer.pause(*assigned)
        by_topic: dict[str, list[int]] = {}
        for tp in assigned:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        try:
            for topic, partitions in by_topic.items():
                try:
                    await self._skip_finished(topic, partitions)
                except Exception as exc:  # a courtesy: reading from the own offset is safe
                    log.info("ledger: start points of %s not checked: %s", topic, exc)
        finally:
            held = consumer.assignment()
            consumer.resume(*(tp for tp in assigned if tp in held))

    async def _skip_finished(self, topic: str, partitions: list[int]) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        workers_group = self._topology.consumer_group(self._priority_of(topic))
        offsets = self._worker_offsets
        own = await asyncio.to_thread(offsets.committed, self.group_id, topic, partitions)
        workers = await asyncio.to_thread(offsets.committed, workers_group, topic, partitions)
        for partition, offset in workers.items():
            mine = own.get(partition)
            if offset is not None and (mine is None or offset > mine):
                log.info(
                    "ledger: %s[%d] starts at the workers' committed offset %d",
                    topic,
                    partition,
                    offset,
                )
                consumer.seek(TopicPartition(topic, partition), offset)

    def _priority_of(self, topic: str) -> str:
        return PRIORITIES[self.topics.index(topic)]


__all__ = [
    "DEFAULT_COMMIT_INTERVAL",
    "DEFAULT_FETCH_MAX_WAIT_MS",
    "DEFAULT_MAX_RECORDS",
    "Ledger",
    "LedgerStats",
]
