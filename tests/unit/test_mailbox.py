"""Entity mailboxes: one job per key at a time, in order; keys and partitions independent."""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Hashable

import pytest

from conveyor.consumer.mailbox import Entry, Mailboxes


def drain(boxes: Mailboxes[str]) -> list[Entry[str]]:
    """Pops every ready entry (marking each running)."""
    entries = []
    while (entry := boxes.pop_ready()) is not None:
        entries.append(entry)
    return entries


def items(entries: list[Entry[str]]) -> list[str]:
    return [entry.item for entry in entries]


def test_one_key_runs_one_item_at_a_time_in_offset_order() -> None:
    boxes: Mailboxes[str] = Mailboxes()
    for offset in range(3):
        boxes.add(0, "order-1", offset, f"job-{offset}")
    served = []
    while (entry := boxes.pop_ready()) is not None:
        assert boxes.pop_ready() is None  # the key is busy: nothing else is ready
        served.append(entry.item)
        boxes.release(entry)
    assert served == ["job-0", "job-1", "job-2"]
    assert boxes.total_buffered == 0


def test_different_keys_are_ready_together_in_arrival_order() -> None:
    boxes: Mailboxes[str] = Mailboxes()
    boxes.add(0, "b", 0, "b0")
    boxes.add(0, "a", 1, "a1")
    boxes.add(0, "b", 2, "b2")
    boxes.add(0, "c", 3, "c3")
    assert boxes.ready_count == 3
    assert items(drain(boxes)) == ["b0", "a1", "c3"]
    assert boxes.ready_count == 0


def test_the_same_key_in_two_partitions_is_two_mailboxes() -> None:
    boxes: Mailboxes[str] = Mailboxes()
    boxes.add(0, "k", 0, "p0")
    boxes.add(1, "k", 0, "p1")
    assert items(drain(boxes)) == ["p0", "p1"]


def test_release_queues_the_keys_next_item_behind_those_already_ready() -> None:
    boxes: Mailboxes[str] = Mailboxes()
    boxes.add(0, "a", 0, "a0")
    boxes.add(0, "a", 1, "a1")
    boxes.add(0, "b", 2, "b2")
    first = boxes.pop_ready()
    assert first is not None
    assert boxes.release(first) is True
    assert items(drain(boxes)) == ["b2", "a1"]


def test_pop_ready_returns_the_entry_with_its_coordinates() -> None:
    boxes: Mailboxes[str] = Mailboxes()
    boxes.add(("jobs", 3), "k", 42, "job")
    entry = boxes.pop_ready()
    assert entry is not None
    assert (entry.tp, entry.key, entry.offset, entry.item) == (("jobs", 3), "k", 42, "job")
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.offset = 43  # type: ignore[misc]


def test_entries_are_distinct_by_identity() -> None:
    """The same offset delivered twice gives two entries that are not interchangeable."""
    boxes: Mailboxes[str] = Mailboxes()
    boxes.add(0, "k", 1, "job")
    entry = boxes.pop_ready()
    assert entry is not None
    twin = Entry(0, "k", 1, "job")
    assert twin != entry
    with pytest.raises(ValueError, match="not running"):
        boxes.release(twin)
    assert boxes.release(entry) is True


def test_releasing_twice_is_rejected() -> None:
    boxes: Mailboxes[str] = Mailboxes()
    boxes.add(0, "k", 1, "job")
    boxes.add(0, "k", 2, "next")
    entry = boxes.pop_ready()
    assert entry is not None
    boxes.release(entry)
    with pytest.raises(ValueError, match="not running"):
        boxes.release(entry)


def test_releasing_a_ready_entry_that_was_not_popped_is_rejected() -> None:
    boxes: Mailboxes[str] = Mailboxes()
    boxes.add(0, "k", 1, "job")
    boxes.add(0, "j", 2, "other")
    dropped = boxes.drop(0)
    with pytest.raises(ValueError, match="not running"):
        boxes.release(dropped[0])


def test_buffered_counts_pending_ready_and_running_per_partition() -> None:
    boxes: Mailboxes[str] = Mailboxes()
    boxes.add(0, "a", 0, "a0")
    boxes.add(0, "a", 1, "a1")
    boxes.add(0, "b", 2, "b2")
    boxes.add(1, "a", 0, "x")
    running = boxes.pop_ready()
    assert running is not None
    assert (boxes.buffered(0), boxes.buffered(1), boxes.buffered(2)) == (3, 1, 0)
    assert boxes.total_buffered == 4
    boxes.release(running)
    assert (boxes.buffered(0), boxes.total_buffered) == (2, 3)


def test_drop_takes_back_pending_and_ready_entries_in_offset_order() -> None:
    boxes: Mailboxes[str] = Mailboxes()
    boxes.add(0, "a", 0, "a0")
    boxes.add(0, "b", 1, "b1")
    boxes.add(0, "a", 2, "a2")
    boxes.add(0, "c", 3, "c3")
    boxes.add(1, "a", 0, "other-partition")
    running = boxes.pop_ready()
    assert running is not None
    assert running.item == "a0"
    dropped = boxes.drop(0)
    assert [(entry.offset, entry.item) for entry in dropped] == [(1, "b1"), (2, "a2"), (3, "c3")]
    assert boxes.ready_count == 1
    assert (boxes.buffered(0), boxes.buffered(1), boxes.total_buffered) == (1, 1, 2)
    assert items(drain(boxes)) == ["other-partition"]


def test_release_after_drop_reports_the_partition_lost_and_readies_nothing() -> None:
    boxes: Mailboxes[str] = Mailboxes()
    boxes.add(0, "a", 0, "a0")
    boxes.add(0, "a", 1, "a1")
    running = boxes.pop_ready()
    assert running is not None
    boxes.drop(0)
    assert boxes.release(running) is False
    assert boxes.ready_count == 0
    assert boxes.pop_ready() is None
    assert (boxes.buffered(0), boxes.total_buffered) == (0, 0)


def test_items_added_after_a_drop_wait_for_the_keys_running_entry() -> None:
    """On re-assignment, a re-read offset does not run beside its still-running twin."""
    boxes: Mailboxes[str] = Mailboxes()
    boxes.add(0, "a", 5, "first delivery")
    old = boxes.pop_ready()
    assert old is not None
    boxes.drop(0)
    boxes.add(0, "a", 5, "second delivery")
    boxes.add(0, "b", 6, "other key")
    assert items(drain(boxes)) == ["other key"]
    assert boxes.release(old) is False
    new = boxes.pop_ready()
    assert new is not None
    assert new.item == "second delivery"
    assert boxes.release(new) is True


def test_dropping_twice_or_an_unknown_partition_returns_nothing() -> None:
    boxes: Mailboxes[str] = Mailboxes()
    boxes.add(0, "a", 0, "a0")
    assert len(boxes.drop(0)) == 1
    assert boxes.drop(0) == []
    assert boxes.drop(9) == []
    assert (boxes.ready_count, boxes.total_buffered) == (0, 0)


def handed_on(boxes: Mailboxes[str]) -> tuple[Entry[str], Entry[str]]:
    """Adds k0, k1 and k2 of one key; k0 runs and hands the key on; k1 runs."""
    for offset in range(3):
        boxes.add(0, "k", offset, f"k{offset}")
    first = boxes.pop_ready()
    assert first is not None
    boxes.hand_off(first)
    second = boxes.pop_ready()
    assert second is not None
    return first, second


def lone_handed_off(boxes: Mailboxes[str]) -> Entry[str]:
    """Adds k0, the only item of its key; it runs and hands the key on."""
    boxes.add(0, "k", 0, "k0")
    entry = boxes.pop_ready()
    assert entry is not None
    boxes.hand_off(entry)
    return entry


def test_hand_off_readies_the_keys_next_item_and_keeps_counting_the_entry() -> None:
    boxes: Mailboxes[str] = Mailboxes()
    first, second = handed_on(boxes)
    assert second.item == "k1"
    assert boxes.pop_ready() is None  # k1 runs now: k2 waits behind it
    assert boxes.buffered(0) == 3  # the handed-off entry counts until released
    assert boxes.release(first) is True
    assert boxes.buffered(0) == 2
    assert boxes.pop_ready() is None  # releasing a handed-off entry readies nothing
    with pytest.raises(ValueError, match=r"was not handed off|is not running"):
        boxes.release(first)


def test_hand_off_of_an_entry_not_running_is_rejected() -> None:
    boxes: Mailboxes[str] = Mailboxes()
    entry = lone_handed_off(boxes)
    with pytest.raises(ValueError, match="is not running"):
        boxes.hand_off(entry)
    with pytest.raises(ValueError, match="was not handed off"):
        boxes.requeue(Entry(0, "k", 0, "k0"))


def test_requeue_runs_the_entry_again_after_the_keys_running_item_and_before_the_rest() -> None:
    boxes: Mailboxes[str] = Mailboxes()
    first, second = handed_on(boxes)
    assert boxes.requeue(first) is True
    assert boxes.pop_ready() is None  # k1 still runs: one item of a key at a time
    assert boxes.buffered(0) == 3
    boxes.release(second)
    assert items(drain(boxes)) == ["k0"]  # the requeued entry comes before k2
    boxes.release(first)
    assert items(drain(boxes)) == ["k2"]


def test_requeue_of_a_keys_only_entry_makes_it_ready_at_once() -> None:
    boxes: Mailboxes[str] = Mailboxes()
    entry = lone_handed_off(boxes)
    assert boxes.requeue(entry) is True
    assert boxes.ready_count == 1
    assert boxes.pop_ready() is entry


def test_a_handed_off_entry_of_a_dropped_partition_is_released_not_requeued() -> None:
    boxes: Mailboxes[str] = Mailboxes()
    boxes.add(0, "k", 0, "k0")
    boxes.add(0, "k", 1, "k1")
    handed, requeued = boxes.pop_ready(), None
    assert handed is not None
    boxes.hand_off(handed)
    requeued = boxes.pop_ready()
    assert requeued is not None
    boxes.hand_off(requeued)
    assert boxes.drop(0) == []  # nothing of partition 0 waits; both are handed off
    assert boxes.release(handed) is False  # the partition was dropped while it ran
    assert boxes.requeue(requeued) is False  # released instead: the next owner reads it
    assert boxes.total_buffered == 0
    assert boxes.pop_ready() is None


class Model:
    """A naive reference: per-key lists, a ready list, linear scans everywhere."""

    def __init__(self) -> None:
        self.queues: dict[tuple[Hashable, str], list[tuple[int, str]]] = defaultdict(list)
        self.ready: list[tuple[Hashable, str]] = []  # (tp, key) in ready order
        self.running: set[tuple[Hashable, str]] = set()
        self.stale: set[tuple[Hashable, str]] = set()
        # Handed-off entries by item (items are unique here): (tp, offset), and whether
        # their partition was dropped since.
        self.handed: dict[str, tuple[Hashable, str, int, bool]] = {}

    def add(self, tp: int, key: str, offset: int, item: str) -> None:
        queue = self.queues[tp, key]
        queue.append((offset, item))
        if len(queue) == 1:
            self.ready.append((tp, key))

    def pop_ready(self) -> tuple[Hashable, str, int, str] | None:
        if not self.ready:
            return None
        tp, key = self.ready.pop(0)
        self.running.add((tp, key))
        offset, item = self.queues[tp, key][0]
        return tp, key, offset, item

    def _end_turn(self, tp: Hashable, key: str) -> bool:
        self.running.remove((tp, key))
        queue = self.queues[tp, key]
        queue.pop(0)
        if queue:
            self.ready.append((tp, key))
        held = (tp, key) not in self.stale
        self.stale.discard((tp, key))
        return held

    def release(self, tp: Hashable, key: str, item: str) -> bool:
        if item in self.handed:
            return not self.handed.pop(item)[3]
        return self._end_turn(tp, key)

    def hand_off(self, tp: Hashable, key: str, offset: int, item: str) -> None:
        held = self._end_turn(tp, key)
        self.handed[item] = (tp, key, offset, not held)

    def requeue(self, item: str) -> bool:
        tp, key, offset, stale = self.handed.pop(item)
        if stale:
            return False
        queue = self.queues[tp, key]
        queue.insert(1, (offset, item))
        if len(queue) == 1:
            self.ready.append((tp, key))
        return True

    def drop(self, tp: int) -> list[tuple[int, str]]:
        dropped = []
        for (queue_tp, key), queue in self.queues.items():
            if queue_tp != tp:
                continue
            keep = 1 if (tp, key) in self.running else 0
            dropped.extend(queue[keep:])
            del queue[keep:]
            if keep:
                self.stale.add((tp, key))
        self.ready = [ready for ready in self.ready if ready[0] != tp]
        for item, (handed_tp, key, offset, _) in list(self.handed.items()):
            if handed_tp == tp:
                self.handed[item] = (handed_tp, key, offset, True)
        return sorted(dropped)

    def buffered(self, tp: int) -> int:
        queued = sum(len(queue) for (queue_tp, _), queue in self.queues.items() if queue_tp == tp)
        return queued + sum(1 for handed in self.handed.values() if handed[0] == tp)


@pytest.mark.parametrize("seed", [11, 22, 33, 44, 55])
def test_random_operations_match_the_reference_model(seed: int) -> None:
    """Interleaved add, pop_ready, release, hand_off, requeue and drop keep every
    invariant of the model.

    Checked after each step: what is served and in which order, what drop returns, what
    release and requeue report, the counts; and that no key ever has two entries running
    and each key's items first run in the order they were added.
    """
    rng = random.Random(seed)
    boxes: Mailboxes[str] = Mailboxes()
    model = Model()
    running: list[Entry[str]] = []
    handed: list[Entry[str]] = []
    requeued: set[str] = set()
    next_offset: dict[int, int] = defaultdict(int)
    served: dict[tuple[Hashable, str], list[int]] = defaultdict(list)
    for step in range(3000):
        action = rng.random()
        if action < 0.4:
            tp, key = rng.randrange(3), rng.choice("abcde")
            offset = next_offset[tp]
            next_offset[tp] += rng.choice([1, 1, 2])
            item = f"{tp}/{offset}#{step}"
            boxes.add(tp, key, offset, item)
            model.add(tp, key, offset, item)
        elif action < 0.67:
            entry = boxes.pop_ready()
            expected = model.pop_ready()
            actual = None if entry is None else (entry.tp, entry.key, entry.offset, entry.item)
            assert actual == expected
            if entry is not None:
                assert all((r.tp, r.key) != (entry.tp, entry.key) for r in running)
                if entry.item not in requeued:
                    # Offsets only grow in this test, so a key's first runs go increasing.
                    assert served[entry.tp, entry.key][-1:] < [entry.offset]
                    served[entry.tp, entry.key].append(entry.offset)
                running.append(entry)
        elif action < 0.8:
            if running:
                entry = running.pop(rng.randrange(len(running)))
                assert boxes.release(entry) == model.release(entry.tp, entry.key, entry.item)
        elif action < 0.88:
            if running:
                entry = running.pop(rng.randrange(len(running)))
                boxes.hand_off(entry)
                model.hand_off(entry.tp, entry.key, entry.offset, entry.item)
                handed.append(entry)
        elif action < 0.97:
            if handed:
                entry = handed.pop(rng.randrange(len(handed)))
                _release_or_requeue(boxes, model, entry, requeued if rng.random() < 0.5 else None)
        else:
            tp = rng.randrange(3)
            dropped = boxes.drop(tp)
            assert [(entry.offset, entry.item) for entry in dropped] == model.drop(tp)
        assert boxes.ready_count == len(model.ready)
        assert [boxes.buffered(tp) for tp in range(3)] == [model.buffered(tp) for tp in range(3)]
        assert boxes.total_buffered == sum(model.buffered(tp) for tp in range(3))


def _release_or_requeue(
    boxes: Mailboxes[str], model: Model, entry: Entry[str], requeued: set[str] | None
) -> None:
    """Ends a handed-off entry either way the runtime does, checking what each reports:
    requeues it (noting it in ``requeued``) if ``requeued`` is given, else releases it."""
    if requeued is not None:
        assert boxes.requeue(entry) == model.requeue(entry.item)
        requeued.add(entry.item)
    else:
        assert boxes.release(entry) == model.release(entry.tp, entry.key, entry.item)
