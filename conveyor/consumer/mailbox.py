"""Entity mailboxes: jobs of one key run one at a time, in offset order.

Each (partition, key) has a mailbox. Its oldest item is *ready* (or *running*, once the
worker took it) and the rest wait behind it; when the running item is released the next
one becomes ready. Ready items of all mailboxes are served first in, first out, so keys
progress fairly and concurrency is bounded by the number of keys with work, not by the
number of partitions.

A running item whose handler is done may *hand off* its key before it is released: the
key's next item becomes ready while the first one's outcome is still being written. It
stays counted in its partition's buffer until released, so handed-off items that wait for
their writes still bound what is fetched. If its outcome cannot be written, ``requeue``
puts it back at the front of its key, to run again once the key is free.

On revoke, ``drop`` takes back everything of the partition that has not started; running
(and handed-off) items stay until released, because a job cannot be taken back from a
handler mid-way.
``release`` then tells the caller that the entry's partition was dropped meanwhile: whether
its offset may still be finished and committed depends on whether the revoke has completed,
which only the caller knows.

Pure and synchronous. Every operation is O(1) amortised except ``drop``, which is linear
in what it removes: ready entries of a dropped partition are left in the ready queue and
skipped when they reach its head.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["Entry", "Mailboxes"]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Entry(Generic[T]):
    """One item in a mailbox.

    Entries compare and hash by identity: the same offset may be delivered twice (after a
    partition is revoked and assigned back), and the two deliveries are distinct entries.

    Args:
        tp: The partition it was read from.
        key: The entity key; the mailbox is that of (``tp``, ``key``).
        offset: Its offset in ``tp``.
        item: The payload (the runtime's ``JobMessage``).
    """

    tp: Hashable
    key: str
    offset: int
    item: T


class _Box(Generic[T]):
    """The mailbox of one (partition, key): its head (ready or running) and the rest."""

    __slots__ = ("head", "pending", "running")

    def __init__(self, head: Entry[T]) -> None:
        # A box exists only while it has a head; an emptied box is deleted.
        self.head = head
        self.running = False
        self.pending: deque[Entry[T]] = deque()


class Mailboxes(Generic[T]):
    """The mailboxes of every (partition, key) a worker holds items of.

    Invariants: per (partition, key) at most one entry is ready or running; entries of one
    key are served in the order they were added; keys and partitions are independent.
    """

    __slots__ = (
        "_boxes",
        "_buffered",
        "_handed",
        "_keys",
        "_ready",
        "_ready_count",
        "_stale",
        "_total",
    )

    def __init__(self) -> None:
        """Starts empty."""
        self._boxes: dict[tuple[Hashable, str], _Box[T]] = {}
        # Keys with a mailbox, per partition, so drop() touches only that partition.
        self._keys: dict[Hashable, set[str]] = {}
        self._buffered: dict[Hashable, int] = {}
        self._total = 0
        # May hold entries dropped while ready; pop_ready skips them, _ready_count is exact.
        self._ready: deque[Entry[T]] = deque()
        self._ready_count = 0
        # Running entries whose partition was dropped after they started.
        self._stale: set[Entry[T]] = set()
        # Entries that handed their key off and are not released yet, per partition.
        self._handed: dict[Hashable, set[Entry[T]]] = {}

    def add(self, tp: Hashable, key: str, offset: int, item: T) -> None:
        """Appends an item to the mailbox of (``tp``, ``key``).

        The item is ready at once if that key has nothing ready or running, and otherwise
        waits for the items added before it.

        Args:
            tp: The partition it was read from.
            key: Its entity key.
            offset: Its offset in ``tp``.
            item: The payload.
        """
        entry = Entry(tp, key, offset, item)
        box = self._boxes.get((tp, key))
        if box is None:
            self._boxes[tp, key] = _Box(entry)
            self._keys.setdefault(tp, set()).add(key)
            self._push_ready(entry)
        else:
            box.pending.append(entry)
        self._buffered[tp] = self._buffered.get(tp, 0) + 1
        self._total += 1

    def pop_ready(self) -> Entry[T] | None:
        """Takes the oldest ready entry and marks it running.

        Returns:
            The entry, or None if nothing is ready.
        """
        while self._ready:
            entry = self._ready.popleft()
            box = self._boxes.get((entry.tp, entry.key))
            # Identity, not equality: a dropped entry may have been re-added since.
            if box is not None and box.head is entry and not box.running:
                box.running = True
                self._ready_count -= 1
                return entry
        return None

    def hand_off(self, entry: Entry[T]) -> None:
        """Ends the running entry's turn on its key, keeping it counted until released.

        The key's next item, if any, becomes ready; ``entry`` still counts in its
        partition's buffer until ``release`` (or goes back with ``requeue``).

        Args:
            entry: The running entry, as ``pop_ready`` returned it.

        Raises:
            ValueError: If ``entry`` is not the running entry of its key.
        """
        self._end_turn(entry)
        self._handed.setdefault(entry.tp, set()).add(entry)

    def requeue(self, entry: Entry[T]) -> bool:
        """Puts a handed-off entry back at the front of its key's waiting items.

        It runs again after the key's ready or running item, if there is one.

        Args:
            entry: An entry passed to ``hand_off`` and not released since.

        Returns:
            True if it was put back; False if its partition was dropped meanwhile, in
            which case it is released instead (the partition's next owner reads it).

        Raises:
            ValueError: If ``entry`` was not handed off.
        """
        if entry in self._stale:
            self.release(entry)
            return False
        self._take_handed(entry)
        box = self._boxes.get((entry.tp, entry.key))
        if box is None:
            self._boxes[entry.tp, entry.key] = _Box(entry)
            self._keys.setdefault(entry.tp, set()).add(entry.key)
            self._push_ready(entry)
        else:
            box.pending.appendleft(entry)
        return True

    def release(self, entry: Entry[T]) -> bool:
        """Ends the running entry of its key; the key's next item, if any, becomes ready.

        Args:
            entry: The running entry, as ``pop_ready`` returned it, or one that handed its
                key off (then only its count is released).

        Returns:
            True if the entry's partition was not dropped while the entry ran; False if it
            was. Once the revoke has completed, such an offset belongs to the partition's
            next owner and must not be marked finished; before (while the revoke waits for
            running jobs), finishing and committing it is still right.

        Raises:
            ValueError: If ``entry`` is neither running nor handed off.
        """
        if entry in self._handed.get(entry.tp, ()):
            self._take_handed(entry)
        else:
            self._end_turn(entry)
        self._count_out(entry.tp, 1)
        if entry in self._stale:
            self._stale.remove(entry)
            return False
        return True

    def drop(self, tp: Hashable) -> list[Entry[T]]:
        """Removes every entry of ``tp`` that has not started (on revoke).

        Running entries stay until released, and nothing of ``tp`` becomes ready when they
        are; items added for ``tp`` after the drop are a new assignment's and are served
        normally (behind a still-running entry of their key).

        Args:
            tp: The partition.

        Returns:
            The removed entries (pending and ready), in offset order.
        """
        dropped: list[Entry[T]] = []
        for key in list(self._keys.get(tp, ())):
            box = self._boxes[tp, key]
            dropped.extend(box.pending)
            box.pending.clear()
            if box.running:
                self._stale.add(box.head)
            else:
                dropped.append(box.head)
                self._ready_count -= 1
                self._discard_box(tp, key)
        self._stale.update(self._handed.get(tp, ()))
        self._count_out(tp, len(dropped))
        dropped.sort(key=lambda entry: entry.offset)
        return dropped

    @property
    def ready_count(self) -> int:
        """How many entries are ready (not running)."""
        return self._ready_count

    def buffered(self, tp: Hashable) -> int:
        """How many items of ``tp`` are held: pending, ready and running.

        The runtime pauses a partition whose buffer is full and resumes it once drained.
        """
        return self._buffered.get(tp, 0)

    @property
    def total_buffered(self) -> int:
        """How many items of all partitions are held: pending, ready and running."""
        return self._total

    def _end_turn(self, entry: Entry[T]) -> None:
        box = self._boxes.get((entry.tp, entry.key))
        if box is None or box.head is not entry or not box.running:
            raise ValueError(
                f"entry at offset {entry.offset} of key {entry.key!r} in {entry.tp!r} "
                "is not running"
            )
        box.running = False
        if box.pending:
            box.head = box.pending.popleft()
            self._push_ready(box.head)
        else:
            self._discard_box(entry.tp, entry.key)

    def _take_handed(self, entry: Entry[T]) -> None:
        handed = self._handed.get(entry.tp)
        if handed is None or entry not in handed:
            raise ValueError(
                f"entry at offset {entry.offset} of key {entry.key!r} in {entry.tp!r} "
                "was not handed off"
            )
        handed.remove(entry)
        if not handed:
            del self._handed[entry.tp]

    def _push_ready(self, entry: Entry[T]) -> None:
        self._ready.append(entry)
        self._ready_count += 1

    def _discard_box(self, tp: Hashable, key: str) -> None:
        del self._boxes[tp, key]
        keys = self._keys[tp]
        keys.discard(key)
        if not keys:
            del self._keys[tp]

    def _count_out(self, tp: Hashable, count: int) -> None:
        self._total -= count
        left = self._buffered.get(tp, 0) - count
        if left:
            self._buffered[tp] = left
        else:
            self._buffered.pop(tp, None)
