"""The retry relay: holds each retry message until it is due, then puts it back on its job topic.

A failed ``ordering="none"`` job is published to a retry topic (``<prefix>.jobs.retry.<delay>``)
with ``attempt + 1`` and a ``not_before``. The relay is one consumer in group
``<prefix>.relay`` on every retry topic. Per partition, records are handled in offset order:

- due (``not_before`` is null or past): the ORIGINAL value bytes, key and headers are
  republished to the job topic of the envelope's priority through an idempotent producer
  (``acks=all``); only once acknowledged does the offset count as done;
- not yet due: the record and everything after it from that partition wait in the
  partition's pending queue, the partition is paused, and a timer (``loop.call_at``) wakes
  it at the due time. The fetch loop keeps polling the other partitions, so a long wait on
  one partition never delays another, and the consumer never sits in a sleep past
  ``max.poll.interval.ms`` (Spring Kafka's back-off by sleeping the poll loop is what makes
  its delays overshoot by up to the poll interval);
- not due long after its rung's delay (a 1-hour wait on ``retry.5m``): once it has waited
  that rung's delay it is written again, unchanged, to the rung that fits what is left, at
  the tail, so it never holds back the records behind it for longer than the rung's delay;
- undecodable: logged, counted and skipped (committed past), so it cannot block the queue.

The committed offset of a partition is the one after its last republished (or skipped)
record: committed periodically, on revoke and on stop. A revoked partition's pending queue
is dropped uncommitted, so its next owner reads those records again; delivery is at least
once, and the worker's dedupe and lease fencing absorb a rare duplicate.

A failed republish is tried again after ``RETRY_BACKOFF``, except when the producer hit a
fatal error (:class:`~conveyor.errors.ProducerFatalError`: idempotence broken, it sends
no more). Then no retry can succeed, so the relay stops and :meth:`RetryRelay.run`
raises that error, having committed only what was acknowledged: ``conveyor relay``
exits with it, and a worker's ``/healthz`` fails naming the stopped relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from conveyor.consumer.kafka import aiokafka_security
from conveyor.consumer.options import rebalance_timeout
from conveyor.consumer.relay_items import HeldPartition, Item
from conveyor.consumer.relay_options import REVOKE_SLACK, RelayOptions, RelayStats
from conveyor.consumer.republish import Republisher

__all__ = ["REVOKE_SLACK", "RelayOptions", "RelayStats", "RetryRelay"]
from conveyor.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    ConveyorError,
    ProducerFatalError,
)
from conveyor.observability import logs, tracing
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology.model import Topology

log = logging.getLogger("conveyor.relay")

#: Records one fetch may return; with ``max_held_per_partition`` it bounds memory.
FETCH_MAX_RECORDS = 500
#: Republishes awaited together; their acks are awaited as one batch.
REPUBLISH_BATCH = 100
#: Seconds before a failed republish or an unanswered registry lookup is tried again.
RETRY_BACKOFF = 1.0
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
        self._rung_delays = {rung.name: rung.delay_s for rung in self._topology.retry_topics}
        self.group_id = f"{settings.topic_prefix}.relay"
        self.stats = RelayStats()
        self._partitions: dict[TopicPartition, HeldPartition] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._republisher: Republisher | None = None
        self._commit_lock = asyncio.Lock()
        self._fatal: ProducerFatalError | None = None  # what made the producer unusable
        self._broken = asyncio.Event()  # set with it: wakes _until_broken

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
            self._republisher = Republisher(
                self._settings,
                delivery_timeout=self._options.delivery_timeout,
                linger_ms=LINGER_MS,
                name="the retry relay's producer",
            )
        except ConfigurationError:
            await consumer.stop()
            raise
        self._fatal = None
        self._broken.clear()
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
                    self._set_paused(state, True)
                self._kick(state)
            if batch:
                held = sum(len(s.pending) for s in self._partitions.values())
                self.stats.held_max = max(self.stats.held_max, held)

    def _kick(self, state: HeldPartition) -> None:
        """Starts the partition's drain unless one runs (it then sees the new records)."""
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        if state.released or self._broken.is_set():
            return
        if state.task is not None and not state.task.done():
            return
        state.task = asyncio.create_task(self._drain_guarded(state))

    async def _until_broken(self) -> None:
        """Ends the run once the producer is unusable: no republish can succeed again.

        A republish that failed so wakes it at once; the producer's own report of a fatal
        error while nothing was being republished is seen within ``commit_interval``.
        """
        republisher = self._require_republisher()
        while True:
            fatal = self._fatal or republisher.fatal_error
            if fatal is not None:
                raise fatal
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._broken.wait(), self._options.commit_interval)

    async def _drain_guarded(self, state: HeldPartition) -> None:
        try:
            await self._drain(state)
        except ProducerFatalError as exc:
            # Not retried: the producer sends no more. The run ends with the error (the
            # producer has logged it once), and the record stays uncommitted.
            self._fatal = self._fatal or exc
            self._broken.set()
        except Exception:
            # A bug or an outage must not leave the partition stalled without a word.
            log.exception(
                "relay of %s[%d] failed; retrying in %.0fs",
                state.tp.topic,
                state.tp.partition,
                RETRY_BACKOFF,
            )
            if not state.released:
                self._hold(state, RETRY_BACKOFF)

    # -- republishing ---------------------------------------------------------------------

    async def _drain(self, state: HeldPartition) -> None:
        """Republishes the partition's due records in offset order until one is not due."""
        while state.pending and not state.released:
            wait = self._seconds_until_sent(state.pending[0])
            if wait > 0:
                self._hold(state, wait)
                return
            batch: list[tuple[Item, asyncio.Future[None] | None]] = []
            for item in state.pending:
                if len(batch) >= REPUBLISH_BATCH or self._seconds_until_sent(item) > 0:
                    break
                batch.append((item, None if item.skip else self._republish(item)))
            if not await self._settle(state, batch):
                await asyncio.sleep(RETRY_BACKOFF)
                continue
            if len(state.pending) < self._options.max_held_per_partition // 2:
                self._set_paused(state, False)
        if not state.pending:
            self._set_paused(state, False)

    def _seconds_until_sent(self, item: Item) -> float:
        """Seconds until the item leaves: to its job topic when due, or on to the retry
        ladder (a hop) once it has waited its rung's delay, whichever comes first.

        A record waits at the head of its partition at most its rung's delay, counted from
        when it was written there; every record behind it was written later, so none
        waits behind a far-future one for longer than the rung's delay. A 1-hour delay on
        ``retry.5m`` crosses it in 5-minute hops, each back at the tail.
        """
        due = self._seconds_until_due(item)
        if due <= 0 or item.skip:
            item.destination = item.topic
            return due
        rung_delay = self._rung_delays.get(item.record.topic, 0.0)
        written = item.record.timestamp / 1000 if item.record.timestamp > 0 else item.seen_at
        hop = written + rung_delay - time.time()
        if hop < due:
            if hop <= 0:
                item.destination = self._topology.retry_topic_for(due)
                return 0.0
            return hop
        return due

    def _seconds_until_due(self, item: Item) -> float:
        """Decodes the item on first sight; 0 when it can go now (or be skipped)."""
        if not item.decoded:
            try:
                self._decode(item)
            except ConveyorError as exc:
                # The registry did not answer: not the message's fault, so it is not skipped.
                log.warning("cannot decode retry message yet, trying again: %s", exc)
                return RETRY_BACKOFF
        if item.skip or item.not_before is None:
            return 0.0
        return (item.not_before - dt.datetime.now(dt.UTC)).total_seconds()

    def _decode(self, item: Item) -> None:
        if not item.decode(self._serde, self._topology):
            self.stats.undecodable += 1

    def _hold(self, state: HeldPartition, wait: float) -> None:
        """Pauses the partition and wakes it when its head record is due."""
        self._set_paused(state, True)
        loop = asyncio.get_running_loop()
        state.timer = loop.call_at(loop.time() + wait, self._kick, state)

    def _republish(self, item: Item) -> asyncio.Future[None]:
        """Queues the original bytes and key for the item's job topic, in a hop span.

        The headers are the original ones with the hop span's trace context, which ends
        when the broker answers.
        """
        record = item.record
        span, headers = tracing.start_hop_span(
            list(record.headers or ()),
            source=record.topic,
            destination=item.destination,
            attributes=item.attributes,
        )
        future = self._require_republisher().send(
            item.destination, value=record.value, key=record.key, headers=headers
        )

        def end(done: asyncio.Future[None]) -> None:
            error = asyncio.CancelledError() if done.cancelled() else done.exception()
            tracing.end_with(span, error)

        future.add_done_callback(end)
        return future

    async def _settle(
        self, state: HeldPartition, batch: list[tuple[Item, asyncio.Future[None] | None]]
    ) -> bool:
        """Awaits the batch's acks; marks the acknowledged prefix done. False on a failure.

        Raises:
            ProducerFatalError: A republish failed because the producer is unusable.
        """
        futures = [f for _, f in batch if f is not None]
        if futures:
            await asyncio.wait(futures, timeout=self._options.delivery_timeout + REVOKE_SLACK)
        for item, future in batch:
            if future is not None:
                failure = future.exception() if future.done() else TimeoutError("no ack")
                if failure is not None:
                    for _, rest in batch:
                        if rest is not None and rest.done():
                            rest.exception()  # retrieved, so asyncio does not log them
                    if isinstance(failure, ProducerFatalError):
                        raise failure  # retrying cannot help; the run ends with it
                    log.warning("republish of %s failed, retrying: %s", item.topic, failure)
                    return False
                if item.destination == item.topic:
                    self.stats.republished += 1
                else:
                    self.stats.hops += 1
            state.pending.popleft()
            state.done = item.record.offset + 1
        return True

    def _set_paused(self, state: HeldPartition, paused: bool) -> None:
        if paused == state.paused or state.released:
            return
        consumer = self._require_consumer()
        if paused:
            consumer.pause(state.tp)
        else:
            consumer.resume(state.tp)
        state.paused = paused

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

    def _require_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("RetryRelay.start() was not called")
        return self._consumer

    def _require_republisher(self) -> Republisher:
        if self._republisher is None:
            raise RuntimeError("RetryRelay.start() was not called")
        return self._republisher
