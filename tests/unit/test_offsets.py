"""The offset tracker: the commit point is the finished prefix of each partition."""

from __future__ import annotations

import random

import pytest

from conveyor.consumer.offsets import OffsetTracker, PartitionOffsets


def test_nothing_to_commit_before_anything_finishes() -> None:
    offsets = PartitionOffsets()
    assert offsets.commit_point() is None
    offsets.track(5)
    offsets.track(6)
    assert offsets.commit_point() is None
    assert offsets.in_flight == 2


def test_finishing_after_the_first_offset_is_no_progress_yet() -> None:
    """The first offset read is where the consumer already stands: committing it is moot."""
    offsets = PartitionOffsets()
    offsets.track(5)
    offsets.track(6)
    offsets.finish(6)
    assert offsets.commit_point() is None
    offsets.finish(5)
    assert offsets.commit_point() == 7


def test_commit_point_is_the_next_offset_after_the_finished_prefix() -> None:
    offsets = PartitionOffsets()
    for offset in (10, 11, 12):
        offsets.track(offset)
    offsets.finish(10)
    assert offsets.commit_point() == 11
    offsets.finish(11)
    assert offsets.commit_point() == 12
    offsets.finish(12)
    assert offsets.commit_point() == 13
    assert offsets.in_flight == 0


def test_an_unfinished_offset_holds_back_the_commit_point() -> None:
    """Jobs finishing after a slow one do not move the commit past it."""
    offsets = PartitionOffsets()
    for offset in (0, 1, 2, 3):
        offsets.track(offset)
    offsets.finish(0)
    offsets.finish(2)
    offsets.finish(3)
    assert offsets.commit_point() == 1
    assert offsets.in_flight == 1
    offsets.finish(1)
    assert offsets.commit_point() == 4


def test_gaps_between_tracked_offsets_do_not_block() -> None:
    offsets = PartitionOffsets()
    offsets.track(10)
    offsets.track(12)
    offsets.finish(12)
    assert offsets.commit_point() is None  # 10 still runs: nothing new below it
    offsets.finish(10)
    assert offsets.commit_point() == 13


def test_a_gap_before_the_first_unfinished_offset_is_skipped() -> None:
    offsets = PartitionOffsets()
    offsets.track(10)
    offsets.track(15)
    offsets.finish(10)
    assert offsets.commit_point() == 15


def test_committed_hides_the_point_until_more_finishes() -> None:
    offsets = PartitionOffsets()
    offsets.track(1)
    offsets.track(2)
    offsets.finish(1)
    offsets.committed(2)
    assert offsets.commit_point() is None
    offsets.finish(2)
    assert offsets.commit_point() == 3


def test_tracking_alone_never_moves_the_commit_point() -> None:
    """After a commit, newly consumed offsets give nothing to commit until one finishes."""
    offsets = PartitionOffsets()
    offsets.track(1)
    offsets.finish(1)
    offsets.committed(2)
    offsets.track(5)
    assert offsets.commit_point() is None
    offsets.finish(5)
    assert offsets.commit_point() == 6


def test_an_older_commit_does_not_undo_a_newer_one() -> None:
    offsets = PartitionOffsets()
    for offset in (1, 2, 3):
        offsets.track(offset)
        offsets.finish(offset)
    offsets.committed(4)
    offsets.committed(2)
    assert offsets.commit_point() is None


def test_progress_made_while_a_commit_is_in_flight_is_kept() -> None:
    """A commit of an older point still leaves the newer point to commit."""
    offsets = PartitionOffsets()
    for offset in (1, 2):
        offsets.track(offset)
    offsets.finish(1)
    point = offsets.commit_point()
    offsets.finish(2)
    offsets.committed(point)  # type: ignore[arg-type]
    assert offsets.commit_point() == 3


@pytest.mark.parametrize("offset", [4, 5])
def test_tracking_out_of_order_is_rejected(offset: int) -> None:
    offsets = PartitionOffsets()
    offsets.track(5)
    with pytest.raises(ValueError, match="increasing order"):
        offsets.track(offset)


def test_finishing_an_untracked_offset_is_rejected() -> None:
    offsets = PartitionOffsets()
    offsets.track(5)
    with pytest.raises(ValueError, match="not tracked or already finished"):
        offsets.finish(6)


def test_finishing_twice_is_rejected() -> None:
    offsets = PartitionOffsets()
    offsets.track(5)
    offsets.finish(5)
    with pytest.raises(ValueError, match="not tracked or already finished"):
        offsets.finish(5)


def reference_floor(tracked: list[int], finished: set[int]) -> int:
    """The first unfinished tracked offset, or the last tracked + 1 when all are finished."""
    unfinished = [offset for offset in tracked if offset not in finished]
    return unfinished[0] if unfinished else tracked[-1] + 1


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_commit_point_matches_a_reference_model(seed: int) -> None:
    """Random tracks (with gaps), out-of-order finishes and commits against a naive model.

    The commit point never passes an unfinished offset, equals the model's floor as of the
    last finish, and is hidden while it does not exceed the last commit.
    """
    rng = random.Random(seed)
    offsets = PartitionOffsets()
    tracked: list[int] = []
    finished: set[int] = set()
    floor: int | None = None
    committed: int | None = None
    next_offset = rng.randrange(100)
    for _ in range(2000):
        action = rng.random()
        unfinished = [offset for offset in tracked if offset not in finished]
        if action < 0.45 or not unfinished:
            offsets.track(next_offset)
            tracked.append(next_offset)
            next_offset += rng.choice([1, 1, 1, 2, 5])
        elif action < 0.85:
            # Mostly the oldest few, like jobs of a partition finishing nearly in order.
            offset = rng.choice(unfinished[:4] if rng.random() < 0.7 else unfinished)
            offsets.finish(offset)
            finished.add(offset)
            floor = reference_floor(tracked, finished)
        elif (point := offsets.commit_point()) is not None:
            offsets.committed(point)
            committed = point
        # Until a commit, the first tracked offset counts as committed: nothing before it.
        baseline = committed if committed is not None else tracked[0] if tracked else None
        expected = None if floor is None or (baseline is not None and floor <= baseline) else floor
        assert offsets.commit_point() == expected
        assert offsets.in_flight == len(tracked) - len(finished)
        if expected is not None:
            assert all(offset in finished for offset in tracked if offset < expected)


def test_tracker_keeps_partitions_apart() -> None:
    tracker = OffsetTracker()
    tracker.track(("jobs", 0), 10)
    tracker.track(("jobs", 1), 10)
    tracker.track(("jobs", 1), 11)
    tracker.finish(("jobs", 1), 10)
    assert tracker.commit_points() == {("jobs", 1): 11}
    assert tracker.in_flight(("jobs", 0)) == 1
    assert tracker.in_flight(("jobs", 1)) == 1
    assert tracker.partitions() == [("jobs", 0), ("jobs", 1)]


def test_tracker_reports_only_partitions_with_progress() -> None:
    tracker = OffsetTracker()
    for partition in (0, 1):
        tracker.track(partition, 0)
        tracker.finish(partition, 0)
    tracker.committed(tracker.commit_points())
    assert tracker.commit_points() == {}
    tracker.track(1, 1)
    tracker.finish(1, 1)
    assert tracker.commit_points() == {1: 2}


def test_forget_drops_a_partition_and_ignores_its_late_commit() -> None:
    tracker = OffsetTracker()
    tracker.track(0, 7)
    tracker.finish(0, 7)
    points = tracker.commit_points()
    tracker.forget(0)
    tracker.committed(points)
    assert tracker.partitions() == []
    assert tracker.in_flight(0) == 0
    assert tracker.commit_points() == {}
    tracker.forget(0)  # forgetting twice is harmless


def test_a_forgotten_partition_starts_afresh_when_tracked_again() -> None:
    """After revoke and re-assignment, offsets below the old ones may be consumed again."""
    tracker = OffsetTracker()
    tracker.track(0, 7)
    tracker.forget(0)
    tracker.track(0, 3)
    tracker.finish(0, 3)
    assert tracker.commit_points() == {0: 4}


def test_tracker_rejects_finishing_in_an_unknown_partition() -> None:
    tracker = OffsetTracker()
    with pytest.raises(ValueError, match="not tracked"):
        tracker.finish(0, 1)


def test_the_backlog_counts_unread_and_unfinished_jobs_not_finished_ones_behind() -> None:
    """Kafka's lag (end - committed) counts finished jobs that wait behind a long one for
    the commit point; the backlog counts only the jobs left to do (issue 14, defect 7)."""
    tracker = OffsetTracker()
    for offset in range(10, 20):
        tracker.track("p", offset)
    for offset in range(11, 20):
        tracker.finish("p", offset)  # all but the long job at 10
    # 25 records in the partition (end 25), the group committed 10: the lag is 15.
    assert tracker.backlog("p", 25, 10) == 5 + 1  # 20..24 unread, and 10 unfinished
    assert tracker.backlog("unread", 25, 10) == 15  # nothing read there yet: the lag
