"""The retry relay's drain: republishes each held partition's due records, in offset order.

The relay (:mod:`conveyor.consumer.relay`) fetches records into the pending queue of each
partition it owns (:class:`~conveyor.consumer.relay_items.HeldPartition`) and kicks that
partition's drain, which looks at the head of the queue:

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
- undecodable: logged, counted and skipped (marked done), so it cannot block the queue.

Due records go out in batches of up to ``REPUBLISH_BATCH``, settled in order: the
acknowledged prefix leaves the queue and ``HeldPartition.done`` moves past it, which is
what the relay commits. A failed republish is tried again after ``RETRY_BACKOFF``, except
when the producer hit a fatal error (:class:`~conveyor.errors.ProducerFatalError`): then
no retry can succeed, so the drain keeps the record, starts no drain again, and records
the error in :attr:`RelayDrain.fatal` and :attr:`RelayDrain.broken`, which end the
relay's run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

from aiokafka import AIOKafkaConsumer

from conveyor.consumer.relay_items import HeldPartition, Item
from conveyor.consumer.relay_options import REVOKE_SLACK, RelayOptions, RelayStats
from conveyor.consumer.republish import Republisher
from conveyor.errors import ConveyorError, ProducerFatalError
from conveyor.observability import tracing
from conveyor.schemas.serde import Serde
from conveyor.topology.model import Topology

log = logging.getLogger("conveyor.relay")

#: Republishes awaited together; their acks are awaited as one batch.
REPUBLISH_BATCH = 100
#: Seconds before a failed republish or an unanswered registry lookup is tried again.
RETRY_BACKOFF = 1.0


class RelayDrain:
    """Republishes the due records of the relay's held partitions.

    Args:
        consumer: The relay's consumer; a partition is paused while its head waits.
        republisher: The relay's producer.
        serde: Decodes envelopes (only ``not_before`` and ``priority`` are read).
        topology: The job topics and the retry ladder.
        options: The relay's tuning.
        stats: The relay's counters; the drain counts republishes, hops and skips.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        republisher: Republisher,
        *,
        serde: Serde,
        topology: Topology,
        options: RelayOptions,
        stats: RelayStats,
    ) -> None:
        self._consumer = consumer
        self._republisher = republisher
        self._serde = serde
        self._topology = topology
        self._rung_delays = {rung.name: rung.delay_s for rung in topology.retry_topics}
        self._options = options
        self._stats = stats
        #: What made the producer unusable, once a republish failed with it.
        self.fatal: ProducerFatalError | None = None
        #: Set with :attr:`fatal`: wakes whoever waits to end the run.
        self.broken = asyncio.Event()

    def kick(self, state: HeldPartition) -> None:
        """Starts the partition's drain unless one runs (it then sees the new records)."""
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        if state.released or self.broken.is_set():
            return
        if state.task is not None and not state.task.done():
            return
        state.task = asyncio.create_task(self._drain_guarded(state))

    def set_paused(self, state: HeldPartition, paused: bool) -> None:
        """Pauses or resumes fetching the partition, unless it is released."""
        if paused == state.paused or state.released:
            return
        if paused:
            self._consumer.pause(state.tp)
        else:
            self._consumer.resume(state.tp)
        state.paused = paused

    async def _drain_guarded(self, state: HeldPartition) -> None:
        try:
            await self._drain(state)
        except ProducerFatalError as exc:
            # Not retried: the producer sends no more. The run ends with the error (the
            # producer has logged it once), and the record stays uncommitted.
            self.fatal = self.fatal or exc
            self.broken.set()
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
                self.set_paused(state, False)
        if not state.pending:
            self.set_paused(state, False)

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
            self._stats.undecodable += 1

    def _hold(self, state: HeldPartition, wait: float) -> None:
        """Pauses the partition and wakes it when its head record is due."""
        self.set_paused(state, True)
        loop = asyncio.get_running_loop()
        state.timer = loop.call_at(loop.time() + wait, self.kick, state)

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
        future = self._republisher.send(
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
                    self._stats.republished += 1
                else:
                    self._stats.hops += 1
            state.pending.popleft()
            state.done = item.record.offset + 1
        return True


__all__ = ["REPUBLISH_BATCH", "RETRY_BACKOFF", "RelayDrain"]
