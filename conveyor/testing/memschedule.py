"""The in-process scheduler's table: delayed jobs held until due, as ``scheduled_jobs``."""

from __future__ import annotations

import bisect
import datetime as dt
from typing import Generic, TypeVar

T = TypeVar("T")


class MemorySchedule(Generic[T]):
    """Delayed records by due time (then job id), each released once.

    The in-process twin of the ``scheduled_jobs`` table: :class:`TestWorker` stores each
    record of the scheduled topic here and releases it when the fake clock reaches it.
    """

    def __init__(self) -> None:
        self._rows: list[tuple[dt.datetime, str, int]] = []
        self._items: dict[int, T] = {}

    def add(self, due: dt.datetime, job_id: str, item: T) -> None:
        """Holds ``item`` until ``due``."""
        slot = len(self._items)
        self._items[slot] = item
        bisect.insort(self._rows, (due, job_id, slot))

    def pop_due(self, now: dt.datetime) -> list[tuple[str, T]]:
        """Removes and returns (job id, item) of every row due at ``now``, earliest first."""
        count = 0
        while count < len(self._rows) and self._rows[count][0] <= now:
            count += 1
        due, self._rows = self._rows[:count], self._rows[count:]
        return [(job_id, self._items.pop(slot)) for _at, job_id, slot in due]

    def next_due(self) -> dt.datetime | None:
        """The earliest due time held, if any."""
        return self._rows[0][0] if self._rows else None


__all__ = ["MemorySchedule"]
