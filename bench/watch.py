"""Watching a contender work through its jobs: progress, CPU and memory over time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench.procs import Child, machine_jiffies

MB = 1024 * 1024


@dataclass
class Watched:
    """What one watch saw.

    Args:
        done: Jobs done when the watch ended.
        wall_s: Seconds from the start of the watch (worker start-up included).
        cpu_s: CPU seconds the process tree spent from the last reading before the first
            job was done to the end.
        peak_rss_mb: Peak resident memory of the process tree (sum of each process's peak).
        root_peak_rss_mb: Peak resident memory of the top process alone.
        machine_busy_pct: How busy all the machine's CPUs were over the same time (the
            database, the broker and anything else running count too).
        samples: ``(seconds since start, RSS in MB, jobs done)`` for each reading.
    """

    done: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    root_peak_rss_mb: float = 0.0
    machine_busy_pct: float = 0.0
    samples: list[tuple[float, float, int]] = field(default_factory=list)

    def cpu_per_1000(self, jobs: int) -> float:
        """CPU seconds per 1,000 of ``jobs``."""
        return round(self.cpu_s / jobs * 1000, 3) if jobs else 0.0


async def watch(
    child: Child,
    progress: Callable[[], Awaitable[int]],
    *,
    target: int | None = None,
    seconds: float | None = None,
    timeout: float,
    interval: float = 0.25,
) -> Watched:
    """Reads progress and usage every ``interval`` until ``target`` jobs or ``seconds`` pass.

    The CPU count starts at the last reading before the first job was done, so the
    worker's start-up (imports, group join) is not charged to its jobs.

    Raises:
        TimeoutError: ``target`` was not reached within ``timeout`` seconds.
        RuntimeError: The child exited.
    """
    started = time.monotonic()
    seen = Watched()
    cpu_before = child.usage().cpu_s
    machine_before = machine_jiffies()
    while True:
        done = await progress()
        usage = child.usage()
        elapsed = time.monotonic() - started
        seen.samples.append((round(elapsed, 2), round(usage.rss_bytes / MB, 1), done))
        machine_now = machine_jiffies()
        if done == 0:
            cpu_before = usage.cpu_s
            machine_before = machine_now
        seen.done = done
        seen.wall_s = elapsed
        seen.cpu_s = usage.cpu_s - cpu_before
        seen.peak_rss_mb = round(usage.peak_rss_bytes / MB, 1)
        seen.root_peak_rss_mb = round(usage.root_peak_rss_bytes / MB, 1)
        busy, total = (
            now - before for now, before in zip(machine_now, machine_before, strict=True)
        )
        seen.machine_busy_pct = round(100 * busy / total, 1) if total else 0.0
        if target is not None and done >= target:
            return seen
        if seconds is not None and elapsed >= seconds:
            return seen
        if elapsed > timeout:
            raise TimeoutError(f"{child.name}: {done} of {target} jobs after {timeout:.0f}s")
        child.check_alive()
        await asyncio.sleep(interval)
