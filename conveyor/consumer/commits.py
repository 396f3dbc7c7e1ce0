"""Committing a job topic's offsets: only past finished jobs, one commit at a time.

Each partition's commit point is the offset below which every job finished
(``OffsetTracker.commit_points``); only partitions still held are committed. Periodic
commits of one group go one at a time, so an older point never lands last. The revoke
callback commits without waiting for that lock: the rebalance waits on the callback,
and a periodic commit may be waiting on the rebalance. A point that regresses there only
re-reads finished jobs, which the dedupe on consume skips.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Hashable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from conveyor.consumer.offsets import OffsetTracker
from conveyor.topology.model import Topology

log = logging.getLogger("conveyor.worker")


def _tp(key: Hashable) -> TopicPartition:
    assert isinstance(key, TopicPartition)
    return key


class Committer:
    """Commits the finished part of each held partition of the job topics.

    Args:
        consumers: The job consumer of each priority.
        offsets: What finished, per partition.
        topology: Names each priority's job topic.
        owned: The partitions held now.
    """

    def __init__(
        self,
        consumers: Mapping[str, AIOKafkaConsumer],
        *,
        offsets: OffsetTracker,
        topology: Topology,
        owned: Callable[[], Collection[TopicPartition]],
    ) -> None:
        self._consumers = consumers
        self._offsets = offsets
        self._topology = topology
        self._owned = owned
        self._locks: dict[str, asyncio.Lock] = {}

    async def periodically(self, priorities: Collection[str], interval: float) -> None:
        """Commits every priority every ``interval`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            for priority in priorities:
                await self.commit(priority)

    async def commit(self, priority: str, only: Collection[TopicPartition] | None = None) -> None:
        """Commits, per partition of ``priority``, the offset below which every job
        finished; after any commit of the same group still in flight."""
        lock = self._locks.get(priority)
        if lock is None:
            lock = self._locks[priority] = asyncio.Lock()
        async with lock:
            await self.commit_now(priority, only)

    async def commit_now(
        self, priority: str, only: Collection[TopicPartition] | None = None
    ) -> None:
        """Commits like :meth:`commit` without waiting for a commit in flight (the revoke
        callback's: the rebalance waits on it)."""
        consumer = self._consumers[priority]
        topic = self._topology.job_topic(priority)
        owned = self._owned()
        points = {
            _tp(tp): offset
            for tp, offset in self._offsets.commit_points().items()
            if _tp(tp).topic == topic and tp in owned and (only is None or tp in only)
        }
        if not points:
            return
        try:
            await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in points.items()})
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance is in progress; the revoke callback commits what is safe.
            log.warning("commit of %s deferred: %s", topic, exc)
            return
        self._offsets.committed(points)


__all__ = ["Committer"]
