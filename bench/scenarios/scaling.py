"""Scenario 6, scaling: jobs/s with 1, 2 and 4 worker processes on one 8-partition topic.

Each step gets a fresh workspace (``partition_unit=4``, so the ``normal`` topic has 8
partitions), a preloaded backlog of no-op jobs, and then that many ``conveyor worker``
processes started together in one consumer group. Processes joining one by one move
partitions between them at the start, so the rate is taken over the middle of the run:
the jobs that finished between the 10th and the 90th percentile of finish times, over
that time. The rate over the whole span (first start to last finish) is reported too,
and so are the CPU seconds per 1,000 jobs of all the step's processes together.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from bench import contenders, jobs, stack
from bench.context import Context
from bench.procs import Child

PRIORITY = "normal"
PARTITION_UNIT = 4
#: The share of finish times left out at each end of the middle window.
TRIM = 0.1

_MIDDLE = """
WITH cut AS (
    SELECT percentile_cont($1::float8) WITHIN GROUP (ORDER BY finished_at) AS t0,
           percentile_cont(1 - $1::float8) WITHIN GROUP (ORDER BY finished_at) AS t1
    FROM (SELECT extract(epoch FROM finished_at) AS finished_at FROM jobs
          WHERE state = 'complete') AS f
)
SELECT count(*) AS n, max(cut.t1) - max(cut.t0) AS s
FROM jobs, cut
WHERE state = 'complete'
  AND extract(epoch FROM finished_at) BETWEEN cut.t0 AND cut.t1
"""


async def run(ctx: Context) -> dict[str, Any]:
    """Runs one step per process count and reports jobs per second for each."""
    sizes = ctx.sizes
    series = []
    for processes in sizes.scaling_processes:
        async with stack.workspace(
            ctx.stack, f"scale{processes}", partition_unit=PARTITION_UNIT
        ) as settings:
            ctx.log(f"scaling: {processes} process(es), preloading {sizes.scaling_jobs} jobs")
            await asyncio.to_thread(
                jobs.preload,
                settings,
                sizes.scaling_jobs,
                priority=PRIORITY,
                key=lambda i: f"k{i % sizes.throughput_keys}",
            )
            conn = await jobs.connect(settings)
            try:
                with contextlib.ExitStack() as workers:
                    children = [
                        workers.enter_context(
                            contenders.conveyor_worker(
                                settings,
                                priorities=[PRIORITY],
                                concurrency=sizes.throughput_concurrency,
                            )
                        )
                        for _ in range(processes)
                    ]
                    cpu_s = await _cpu_while_done(ctx, children, conn)
                span = await jobs.span(conn)
                middle = await conn.fetchrow(_MIDDLE, TRIM)
            finally:
                await conn.close()
        assert middle is not None
        middle_rate = float(middle["n"]) / float(middle["s"]) if middle["s"] else 0.0
        series.append(
            {
                "processes": processes,
                "jobs": span.jobs,
                "jobs_per_s": round(middle_rate, 1),
                "span_jobs_per_s": round(span.rate, 1),
                "cpu_s_per_1000": round(cpu_s / span.jobs * 1000, 3) if span.jobs else 0.0,
            }
        )
    return {
        "params": {
            "jobs_per_step": sizes.scaling_jobs,
            "partitions": PARTITION_UNIT * 2,
            "concurrency": sizes.throughput_concurrency,
            "trim": TRIM,
        },
        "contenders": {"conveyor": {"series": series}},
    }


async def _cpu_while_done(ctx: Context, children: list[Child], conn: Any) -> float:
    """Waits until the step's backlog is complete; returns the processes' CPU seconds.

    As in ``bench.watch``, the count starts at the last reading before the first job was
    done, so start-up is not charged to the jobs.
    """
    deadline = time.monotonic() + ctx.sizes.job_timeout
    before = 0.0
    while True:
        done = await jobs.count_complete(conn)
        cpu_s = sum(child.usage().cpu_s for child in children)
        if done == 0:
            before = cpu_s
        if done >= ctx.sizes.scaling_jobs:
            return cpu_s - before
        for child in children:
            child.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"scaling: {done} jobs done after {ctx.sizes.job_timeout:.0f}s")
        await asyncio.sleep(ctx.sizes.poll_interval)
