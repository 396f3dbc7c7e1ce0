"""Which offsets a worker may commit: the finished prefix of every partition it reads.

Jobs of one partition finish out of order (different keys run concurrently), but Kafka
stores one committed offset per partition, meaning "everything before this is done". So
the worker commits, per partition, the highest offset below which every consumed job is
finished: a crash then re-reads unfinished jobs (dedupe on consume skips the finished ones
that come again) and never loses one.

``PartitionOffsets`` keeps the consumed, unfinished offsets of one partition in arrival
order, so the first of them is the commit point; ``OffsetTracker`` holds one per
partition. Pure and synchronous: the worker's runtime does the consuming and committing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping

__all__ = ["OffsetTracker", "PartitionOffsets"]


class PartitionOffsets:
    """The consumed offsets of one partition and which of them are finished.

    Offsets are tracked in increasing order, possibly with gaps (compacted records,
    transaction markers, records the worker never dispatched). A gap never blocks the
    commit point: only tracked, unfinished offsets do.

    Memory holds only the unfinished offsets: an ordered dict keyed by offset gives O(1)
    removal of any of them and O(1) access to the oldest (a plain dict's first key is O(n)
    to find after many deletions at its head).
    """

    __slots__ = ("_committed", "_floor", "_last_tracked", "_unfinished")

    def __init__(self) -> None:
        """Starts with nothing tracked and nothing committed."""
        self._unfinished: OrderedDict[int, None] = OrderedDict()
        self._last_tracked: int | None = None
        # The commit point as of the last finish; tracking alone never moves it, so a new
        # commit always means some job finished.
        self._floor: int | None = None
        self._committed: int | None = None

    def track(self, offset: int) -> None:
        """Records that the job at ``offset`` was consumed and is not finished yet.

        Args:
            offset: The consumed offset; greater than every offset tracked before.

        Raises:
            ValueError: If ``offset`` is not greater than the last tracked offset.
        """
        if self._last_tracked is not None and offset <= self._last_tracked:
            raise ValueError(
                f"offset {offset} tracked after offset {self._last_tracked}: "
                "offsets must be tracked in increasing order"
            )
        if self._last_tracked is None and self._committed is None:
            # The consumer started reading here, so committing this very offset would
            # record no progress: treat it as committed already.
            self._committed = offset
        self._unfinished[offset] = None
        self._last_tracked = offset

    def finish(self, offset: int) -> None:
        """Records that the job at ``offset`` never needs to be consumed again.

        Completed, failed, skipped and dead-lettered jobs are all finished.

        Args:
            offset: A tracked, unfinished offset.

        Raises:
            ValueError: If ``offset`` was never tracked or is already finished.
        """
        try:
            del self._unfinished[offset]
        except KeyError:
            raise ValueError(f"offset {offset} is not tracked or already finished") from None
        self._floor = self._first_unfinished()

    def commit_point(self) -> int | None:
        """The offset to commit: the next one to read after the finished prefix.

        Every tracked offset below it is finished. Kafka's convention: the committed
        offset is the next record to consume, so after finishing offsets 10 and 12 (11
        being a gap) it is 13.

        Returns:
            The offset, or None if it has not advanced since the last ``committed`` call,
            or beyond the first tracked offset when nothing was committed.
        """
        if self._floor is None:
            return None
        if self._committed is not None and self._floor <= self._committed:
            return None
        return self._floor

    def committed(self, offset: int) -> None:
        """Records that ``offset`` was committed, so ``commit_point`` waits for progress.

        A commit older than one recorded before (commits may complete out of order) is
        ignored.

        Args:
            offset: The committed offset (the next one to read).
        """
        if self._committed is None or offset > self._committed:
            self._committed = offset

    @property
    def in_flight(self) -> int:
        """How many tracked offsets are not finished."""
        return len(self._unfinished)

    @property
    def next_to_read(self) -> int | None:
        """The offset after the last one tracked, or None before the first."""
        return None if self._last_tracked is None else self._last_tracked + 1

    def _first_unfinished(self) -> int | None:
        if self._unfinished:
            return next(iter(self._unfinished))
        return None if self._last_tracked is None else self._last_tracked + 1


class OffsetTracker:
    """A ``PartitionOffsets`` per partition, keyed by any hashable partition id.

    The runtime keys it by aiokafka's ``TopicPartition``; a partition's state appears on
    its first ``track`` and goes away on ``forget`` (when the partition is revoked).
    """

    __slots__ = ("_partitions",)

    def __init__(self) -> None:
        """Starts with no partition."""
        self._partitions: dict[Hashable, PartitionOffsets] = {}

    def track(self, tp: Hashable, offset: int) -> None:
        """Records that the job at ``offset`` of ``tp`` was consumed.

        Args:
            tp: The partition.
            offset: The consumed offset; greater than every offset tracked before in ``tp``.

        Raises:
            ValueError: If ``offset`` is not greater than the last tracked offset of ``tp``.
        """
        partition = self._partitions.get(tp)
        if partition is None:
            partition = self._partitions[tp] = PartitionOffsets()
        partition.track(offset)

    def finish(self, tp: Hashable, offset: int) -> None:
        """Records that the job at ``offset`` of ``tp`` is finished.

        Args:
            tp: The partition.
            offset: A tracked, unfinished offset of ``tp``.

        Raises:
            ValueError: If ``tp`` is not tracked (or was forgotten), or ``offset`` was never
                tracked in it or is already finished.
        """
        partition = self._partitions.get(tp)
        if partition is None:
            raise ValueError(f"partition {tp!r} is not tracked")
        partition.finish(offset)

    def commit_points(self) -> dict[Hashable, int]:
        """The offset to commit for each partition whose commit point advanced.

        Returns:
            Partition to offset (the next one to read); partitions with nothing new to
            commit are left out, so an empty dict means there is nothing to commit.
        """
        points: dict[Hashable, int] = {}
        for tp, partition in self._partitions.items():
            point = partition.commit_point()
            if point is not None:
                points[tp] = point
        return points

    def committed(self, points: Mapping[Hashable, int]) -> None:
        """Records committed offsets, typically what ``commit_points`` returned.

        Partitions forgotten meanwhile (revoked while the commit was in flight) are ignored.

        Args:
            points: Partition to committed offset.
        """
        for tp, offset in points.items():
            partition = self._partitions.get(tp)
            if partition is not None:
                partition.committed(offset)

    def in_flight(self, tp: Hashable) -> int:
        """How many tracked offsets of ``tp`` are not finished (0 for an unknown partition)."""
        partition = self._partitions.get(tp)
        return 0 if partition is None else partition.in_flight

    def backlog(self, tp: Hashable, end: int, committed: int) -> int:
        """Jobs of ``tp`` not finished: those not read yet (up to ``end``) plus those read
        and unfinished. Unlike Kafka's lag (``end - committed``) it leaves out finished
        jobs that wait behind an unfinished one for the commit point to pass them."""
        partition = self._partitions.get(tp)
        read_to = None if partition is None else partition.next_to_read
        if partition is None or read_to is None:
            return max(0, end - committed)
        return max(0, end - read_to) + partition.in_flight

    def forget(self, tp: Hashable) -> None:
        """Drops the state of ``tp`` (on revoke); forgetting an unknown partition is a no-op."""
        self._partitions.pop(tp, None)

    def partitions(self) -> list[Hashable]:
        """The partitions with state, in the order they were first tracked."""
        return list(self._partitions)
