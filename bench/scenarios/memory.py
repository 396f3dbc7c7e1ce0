"""Scenario 5, memory: the worker's resident memory against a very large backlog.

A backlog of ``sizes.memory_backlog`` no-op jobs (1,000,000 in a full run) is preloaded,
then one worker runs for ``sizes.memory_seconds`` while its RSS is read every second.
The worker pauses a partition once ``max_buffered_per_partition`` jobs wait in it, so
its memory should stay flat however deep the backlog: the figures are the RSS once the
first job ran, the peak, the mean RSS over the first and the second half of the run
(flat means bounded), and the jobs done.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench import contenders, jobs, stack
from bench.context import Context
from bench.watch import watch

PRIORITY = "normal"
CONCURRENCY = 32


async def run(ctx: Context) -> dict[str, Any]:
    """Preloads the backlog and watches one worker's memory while it works."""
    sizes = ctx.sizes
    backlog = sizes.memory_backlog
    async with stack.workspace(ctx.stack, "mem") as settings:
        ctx.log(f"memory: preloading {backlog} jobs")
        submitted = await asyncio.to_thread(jobs.preload, settings, backlog, priority=PRIORITY)
        ctx.log(f"memory: worker runs {sizes.memory_seconds:.0f}s against the backlog")
        conn = await jobs.connect(settings)
        try:
            with contenders.conveyor_worker(
                settings, priorities=[PRIORITY], concurrency=CONCURRENCY
            ) as child:
                watched = await watch(
                    child,
                    lambda: jobs.count_complete(conn),
                    seconds=sizes.memory_seconds,
                    timeout=sizes.memory_seconds + 60,
                    interval=1.0,
                )
        finally:
            await conn.close()
    working = [s for s in watched.samples if s[2] > 0]
    middle = len(working) // 2
    return {
        "params": {
            "backlog": backlog,
            "seconds": sizes.memory_seconds,
            "concurrency": CONCURRENCY,
            "preload_jobs_per_s": round(submitted, 1),
        },
        "contenders": {
            "conveyor": {
                "jobs_done": watched.done,
                "rss_mb_first_job": working[0][1] if working else 0.0,
                "rss_mb_end": watched.samples[-1][1],
                "peak_rss_mb": watched.peak_rss_mb,
                # The worker process alone, without its ledger child.
                "worker_peak_rss_mb": watched.root_peak_rss_mb,
                "rss_mb_mean_first_half": _mean_rss(working[:middle]),
                "rss_mb_mean_second_half": _mean_rss(working[middle:]),
                "samples": [list(s) for s in watched.samples],
            }
        },
    }


def _mean_rss(samples: list[tuple[float, float, int]]) -> float:
    return round(sum(s[1] for s in samples) / len(samples), 1) if samples else 0.0
