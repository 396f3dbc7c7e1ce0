"""The retry relay: holds each retry message until it is due, then puts it back on its job topic.

A failed ``ordering="none"`` job is published to a retry topic (``<prefix>.jobs.retry.<delay>``)
with ``attempt + 1`` and a ``not_before``. The relay is one consumer in group
``<prefix>.relay`` on every retry topic. Its fetch loop puts each partition's records, in
offset order, into that partition's pending queue and kicks its drain
(:mod:`conveyor.consumer.relay_drain`: due records are republished to their job topic,
acknowledged before they count as done; a partition whose head is not due yet is paused
until it is, while the fetch loop keeps polling the others). This module is the relay's
lifecycle around it: the consumer and producer, assignment, commits and stop.

The committed offset of a partition is the one after its last republished (or skipped)
record: committed periodically, on revoke and on stop. A revoked partition's pending queue
is dropped uncommitted, so its next owner reads those records again; delivery is at least
once, and the worker's dedupe and lease fencing absorb a rare duplicate.

A failed republish is tried again after ``relay_drain.RETRY_BACKOFF``, except when the
producer hit a fatal error (:class:`~conveyor.errors.ProducerFatalError`: idempotence
broken, it sends no more). Then no retry can succeed, so the relay stops and
:meth:`RetryRelay.run` raises that error, having committed only what was acknowledged:
``conveyor relay`` exits with it, and a worker's ``/healthz`` fails naming the stopped
relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from conveyor.consumer.kafka import aiokafka_security
from conveyor.consumer.options import rebalance_timeout
from conveyor.consumer.relay_drain import RelayDrain
from conveyor.consumer.relay_items import HeldPartition, Item
from conveyor.consumer.relay_options import REVOKE_SLACK, RelayOptions, RelayStats
from conveyor.consumer.republish import Republisher
from conveyor.errors import BrokerUnavailableError, ConfigurationError
from conveyor.observability import logs
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology.model import Topology

__all__ = ["REVOKE_SLACK", "RelayOptions", "RelayStats", "RetryRelay"]

log = logging.getLogger("conveyor.relay")

#: Records one fetch may return; with ``max_held_per_partition`` it bounds memory.
FETCH_MAX_RECORDS = 500
#: librdkafka batches for at most this long; small, because every ms is added to the delay.
LINGER_MS = 1


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, relay: RetryRelay) -> None:
        self._relay = relay

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._relay._release(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._relay._assign(assigned)


class RetryRelay:
    """Consumes the retry topics and republishes each message to its job topic when due.

    Args:
        settings: Broker settings, the topic prefix and the retry ladder.
        serde: Decodes envelopes (only ``not_before`` and ``priority`` are read).
        options: Tuning; defaults suit Apache Kafka in production.
    """

    def __init__(
        self, settings: Settings, *, serde: Serde, options: RelayOptions | None = None
    ) -> None:
        self._settings = settings
        self._serde = serde
        self._options = options or RelayOptions()
        self._topology = Topology.from_settings(settings)
        self.group_id = f"{settings.topic_prefix}.relay"
        self.stats = RelayStats()
        self._partitions: dict[TopicPartition, HeldPartition] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._republisher: Republisher | None = None
        self._drain: RelayDrain | None = None  # republishes what the consumer fetched
        self._commit_lock = asyncio.Lock()

    @property
    def retry_topics(self) -> tuple[str, ...]:
        """The topics the relay consumes, by increasing delay."""
        return tuple(rung.name for rung in self._topology.retry_topics)

    @property
    def committed(self) -> dict[TopicPartition, int]:
        """The offset last committed per owned partition (what a restart resumes from)."""
        return {
            tp: state.committed
            for tp, state in self._partitions.items()
            if state.committed is not None
        }

    @property
    def owned(self) -> frozenset[TopicPartition]:
        """The retry partitions this relay holds now."""
        return frozenset(self._partitions)

    async def start(self) -> None:
        """Subscribes to every retry topic and creates the producer.

        Raises:
            BrokerUnavailableError: Kafka did not answer.
            ConfigurationError: The producer configuration was refused.
        """
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.kafka_bootstrap,
            group_id=self.group_id,
            client_id="conveyor-relay",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self._options.session_timeout_ms,
            heartbeat_interval_ms=self._options.heartbeat_interval_ms,
            # A revoke waits up to delivery_timeout + 5 s for republishes in flight, then
            # commits: the group must wait that long for this member to rejoin.
            rebalance_timeout_ms=rebalance_timeout(
                self._options.delivery_timeout + REVOKE_SLACK,
                self._options.session_timeout_ms,
                None,
            ),
            group_instance_id=self._settings.worker_instance_id,  # static membership
            **aiokafka_security(self._settings),
        )
        consumer.subscribe(list(self.retry_topics), listener=_Listener(self))
        try:
            await consumer.start()
        except KafkaError as exc:
            await consumer.stop()
            raise BrokerUnavailableError(
                f"the retry relay could not reach Kafka at {self._settings.kafka_bootstrap}: "
                f"{exc}; check CONVEYOR_KAFKA_BOOTSTRAP"
            ) from exc
        try:
            republisher = Republisher(
                self._settings,
                delivery_timeout=self._options.delivery_timeout,
                linger_ms=LINGER_MS,
                name="the retry relay's producer",
            )
        except ConfigurationError:
            await consumer.stop()
            raise
        self._republisher = republisher
        self._drain = RelayDrain(
            consumer,
            republisher,
            serde=self._serde,
            topology=self._topology,
            options=self._options,
            stats=self.stats,
        )
        self._consumer = consumer

    async def run(self, stop: asyncio.Event) -> None:
        """Relays until ``stop`` is set, then commits and closes the consumer and producer.

        Raises:
            ProducerFatalError: The producer hit a fatal error, so nothing can be
                republished again; what was acknowledged is committed, nothing after it.
            BrokerUnavailableError: The consumer lost Kafka.
        """
        if self._consumer is None:
            await self.start()
        stopped = asyncio.create_task(stop.wait())
        loops = [
            asyncio.create_task(self._fetch()),
            asyncio.create_task(self._commit_periodically()),
            asyncio.create_task(self._until_broken()),
        ]
        try:
            # A loop only ends by failing; then the relay stops rather than idle unnoticed.
            await asyncio.wait([stopped, *loops], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopped, *loops):
                task.cancel()
            results = await asyncio.gather(*loops, return_exceptions=True)
            await self._shutdown()
        for result in results:
            if isinstance(result, KafkaError):
                raise BrokerUnavailableError(f"the retry relay lost Kafka: {result}") from result
            if isinstance(result, Exception):
                raise result

    # -- fetching -------------------------------------------------------------------------

    async def _fetch(self) -> None:
        consumer = self._require_consumer()
        drain = self._require_drain()
        while True:
            batch = await consumer.getmany(
                timeout_ms=self._options.fetch_timeout_ms, max_records=FETCH_MAX_RECORDS
            )
            for tp, records in batch.items():
                state = self._partitions.get(tp)
                if state is None or state.released:
                    continue
                state.pending.extend(Item(record) for record in records)
                if len(state.pending) >= self._options.max_held_per_partition:
                    drain.set_paused(state, True)
                drain.kick(state)
            if batch:
                held = sum(len(s.pending) for s in self._partitions.values())
                self.stats.held_max = max(self.stats.held_max, held)

    async def _until_broken(self) -> None:
        """Ends the run once the producer is unusable: no republish can succeed again.

        A republish that failed so wakes it at once; the producer's own report of a fatal
        error while nothing was being republished is seen within ``commit_interval``.
        """
        drain = self._require_drain()
        republisher = self._require_republisher()
        while True:
            fatal = drain.fatal or republisher.fatal_error
            if fatal is not None:
                raise fatal
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drain.broken.wait(), self._options.commit_interval)

    # -- committing -----------------------------------------------------------------------

    async def _commit_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._options.commit_interval)
            async with self._commit_lock:
                await self._commit()

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        points = {
            tp: state.done
            for tp, state in self._partitions.items()
            if state.done is not None
            and state.done != state.committed
            and (only is None or tp in only)
        }
        if not points:
            return
        try:
            await self._require_consumer().commit(
                {tp: OffsetAndMetadata(offset, "") for tp, offset in points.items()}
            )
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance is in progress; the revoke callback commits what is safe.
            log.warning("relay commit deferred: %s", exc)
            return
        for tp, offset in points.items():
            state = self._partitions.get(tp)
            if state is not None:
                state.committed = offset

    # -- rebalancing ----------------------------------------------------------------------

    def _assign(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            self._partitions[tp] = HeldPartition(tp)
        log.info("relay assigned %s", logs.partitions(assigned))

    async def _release(self, revoked: set[TopicPartition]) -> None:
        """Lets in-flight republishes settle, commits them, and drops what is pending."""
        states = [self._partitions[tp] for tp in revoked if tp in self._partitions]
        await self._quiesce(states)
        await self._commit(only={state.tp for state in states})
        for state in states:
            del self._partitions[state.tp]

    async def _quiesce(self, states: list[HeldPartition]) -> None:
        for state in states:
            state.released = True
            if state.timer is not None:
                state.timer.cancel()
                state.timer = None
        tasks = [s.task for s in states if s.task is not None and not s.task.done()]
        if not tasks:
            return
        _done, late = await asyncio.wait(
            tasks, timeout=self._options.delivery_timeout + REVOKE_SLACK
        )
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    # -- shutdown -------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        await self._quiesce(list(self._partitions.values()))
        consumer = self._consumer
        if consumer is not None:
            with contextlib.suppress(Exception):
                async with self._commit_lock:
                    await self._commit()
            with contextlib.suppress(Exception):
                await consumer.stop()
        self._partitions.clear()
        republisher = self._republisher
        if republisher is not None:
            await asyncio.to_thread(republisher.close)
            self._republisher = None
            self._drain = None

    def _require_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("RetryRelay.start() was not called")
        return self._consumer

    def _require_republisher(self) -> Republisher:
        if self._republisher is None:
            raise RuntimeError("RetryRelay.start() was not called")
        return self._republisher

    def _require_drain(self) -> RelayDrain:
        if self._drain is None:
            raise RuntimeError("RetryRelay.start() was not called")
        return self._drain
