"""One timer for many equal delays: the claim of each job still running after ``after``.

A handler that runs unclaimed gets its job claimed once it has run ``claim_after``
seconds (``conveyor.consumer.unclaimed``). A timer per job cost 4-5 µs of the worker's
one core (a ``TimerHandle`` built, pushed on the loop's heap, cancelled and dropped) for
the nearly every job that ends first. Every job waits the same delay, so their
deadlines come in the order they were added: they are kept in an insertion-ordered dict,
and one loop timer stands for the earliest. Adding and removing a job is a dict insert
and a delete; the timer wakes when the head is due, starts what is due, and sets itself
for the new head.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable


class Deadlines:
    """Calls each added callback once ``after`` seconds passed, unless it was discarded.

    Args:
        after: The delay, the same for every callback.
    """

    def __init__(self, after: float) -> None:
        self._after = after
        self._due: dict[Hashable, tuple[float, Callable[[], object]]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._due)

    def add(self, key: Hashable, callback: Callable[[], object]) -> None:
        """Calls ``callback`` in ``after`` seconds, unless ``discard(key)`` comes first.

        Args:
            key: Names the entry for ``discard``; unique among the pending ones.
            callback: Called once, on the event loop.
        """
        loop = asyncio.get_running_loop()
        at = loop.time() + self._after
        self._due[key] = (at, callback)
        if self._timer is None:
            self._timer = loop.call_at(at, self._fire, loop)

    def discard(self, key: Hashable) -> None:
        """Drops ``key``'s callback if it was not called yet."""
        self._due.pop(key, None)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        while self._due:
            key = next(iter(self._due))
            at, callback = self._due[key]
            if at > now:
                self._timer = loop.call_at(at, self._fire, loop)
                return
            del self._due[key]
            callback()


__all__ = ["Deadlines"]
