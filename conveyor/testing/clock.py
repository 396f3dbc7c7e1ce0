"""A clock that tests move forward: backoff, delays and in-place retries pass at once.

:class:`FakeClock` reads as the real time plus every second :meth:`FakeClock.advance`
skipped, so a job's ``not_before`` (written from the real clock by the producer and the
worker) falls due once the test has skipped past it, while real time keeps flowing for
anything the test does not skip. Sleepers on the clock wake when it passes their
deadline, whether a skip or real time gets it there.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time


class FakeClock:
    """The time as the in-process test mode sees it.

    Args:
        skipped: Seconds already skipped ahead of the real clock.
    """

    def __init__(self, skipped: float = 0.0) -> None:
        self.skipped = float(skipped)
        self._moved = asyncio.Condition()
        self._deadlines: list[float] = []
        #: Set whenever a task parks in :meth:`sleep`, so a drain can tell that every
        #: running job is waiting on the clock.
        self.parked = asyncio.Event()

    def monotonic(self) -> float:
        """Seconds on a monotonic scale, skips included."""
        return time.monotonic() + self.skipped

    def now(self) -> dt.datetime:
        """The current time, in UTC, skips included."""
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.skipped)

    @property
    def sleepers(self) -> int:
        """How many tasks are parked in :meth:`sleep` and not yet due.

        A sleeper whose deadline has passed counts as running: it is about to wake.
        """
        now = self.monotonic()
        return sum(1 for deadline in self._deadlines if deadline > now)

    def next_deadline(self) -> float | None:
        """Seconds until the earliest sleeper not yet due wakes, or None."""
        now = self.monotonic()
        waiting = [deadline - now for deadline in self._deadlines if deadline > now]
        return min(waiting) if waiting else None

    async def sleep(self, seconds: float) -> None:
        """Waits until the clock has moved ``seconds`` on, by skips or by real time."""
        deadline = self.monotonic() + max(0.0, seconds)
        self._deadlines.append(deadline)
        self.parked.set()
        try:
            async with self._moved:
                while (remaining := deadline - self.monotonic()) > 0:
                    try:
                        async with asyncio.timeout(remaining):
                            await self._moved.wait()
                    except TimeoutError:
                        continue
        finally:
            self._deadlines.remove(deadline)

    async def skip(self, seconds: float) -> None:
        """Moves the clock ``seconds`` ahead and wakes the sleepers now due.

        Raises:
            ValueError: ``seconds`` is negative: the clock never goes back.
        """
        if seconds < 0:
            raise ValueError(f"the clock only moves forward, got {seconds} s")
        self.skipped += seconds
        async with self._moved:
            self._moved.notify_all()
