"""Scenario 3, priority under overload: equal backlogs in all four priorities.

One worker serves all four with a small concurrency and a handler that awaits ~2 ms, so
every priority always has jobs waiting. The figure is each priority's share of the jobs
started while all four were still backlogged, from the moment the last priority had
started its first job to the moment the first priority started its last; the design
says 40/30/20/10%. ``over_time`` counts the jobs each priority started in each of
``BUCKETS`` equal slices of the run, for the shares-over-time chart. The median wait
is counted from the worker's first job (so the worker's start-up and the preload are
left out) to the job's start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg

from bench import contenders, jobs, stack
from bench.context import Context
from bench.watch import watch
from conveyor.topology.model import PRIORITIES, PRIORITY_WEIGHTS

_SHARES = """
WITH per AS (
    SELECT priority, min(started_at) AS first_start, max(started_at) AS last_start
    FROM jobs WHERE state = 'complete' GROUP BY priority
), win AS (
    SELECT max(first_start) AS t0, min(last_start) AS t1 FROM per
), origin AS (
    SELECT min(started_at) AS t FROM jobs WHERE state = 'complete'
)
SELECT j.priority,
       count(*) FILTER (WHERE j.started_at BETWEEN win.t0 AND win.t1) AS in_window,
       extract(epoch FROM win.t1 - win.t0) AS window_s,
       percentile_cont(0.5) WITHIN GROUP (
           ORDER BY extract(epoch FROM j.started_at - origin.t)) AS median_wait_s
FROM jobs AS j, win, origin
WHERE j.state = 'complete'
GROUP BY j.priority, win.t0, win.t1
"""

#: Time buckets of the shares-over-time series.
BUCKETS = 30

_SERIES = """
WITH span AS (
    SELECT min(started_at) AS t0,
           greatest(extract(epoch FROM max(started_at) - min(started_at)) / $1, 0.001) AS width
    FROM jobs WHERE state = 'complete'
)
SELECT least(floor(extract(epoch FROM j.started_at - span.t0) / span.width)::int, $1 - 1)
           AS bucket,
       span.width, j.priority, count(*) AS started
FROM jobs AS j, span
WHERE j.state = 'complete'
GROUP BY 1, 2, 3
ORDER BY 1
"""
"""Jobs started per priority in each of $1 equal time buckets from the first start."""


async def run(ctx: Context) -> dict[str, Any]:
    """Preloads the four backlogs, runs one worker over them, and reads the shares."""
    sizes = ctx.sizes
    backlog = sizes.priority_backlog
    async with stack.workspace(ctx.stack, "prio") as settings:
        ctx.log(f"priority: preloading {backlog} jobs in each priority")
        for priority in PRIORITIES:
            await asyncio.to_thread(
                jobs.preload,
                settings,
                backlog,
                job_type="bench.sleep",
                priority=priority,
                payload={"ms": sizes.priority_handler_ms},
            )
        conn = await jobs.connect(settings)
        try:
            with contenders.conveyor_worker(
                settings, priorities=PRIORITIES, concurrency=sizes.priority_concurrency
            ) as child:
                await watch(
                    child,
                    lambda: jobs.count_complete(conn),
                    target=backlog * len(PRIORITIES),
                    timeout=sizes.job_timeout,
                    interval=sizes.poll_interval,
                )
            rows = await conn.fetch(_SHARES)
            series = _series(await conn.fetch(_SERIES, BUCKETS))
        finally:
            await conn.close()
    total = sum(int(r["in_window"]) for r in rows)
    by_priority = {r["priority"]: r for r in rows}
    figures = {
        p: {
            "share_pct": round(100 * int(by_priority[p]["in_window"]) / total, 1),
            "expected_pct": round(100 * PRIORITY_WEIGHTS[p] / sum(PRIORITY_WEIGHTS.values()), 1),
            "median_wait_s": round(float(by_priority[p]["median_wait_s"]), 2),
        }
        for p in PRIORITIES
    }
    return {
        "params": {
            "backlog_per_priority": backlog,
            "handler_ms": sizes.priority_handler_ms,
            "concurrency": sizes.priority_concurrency,
        },
        "contenders": {
            "conveyor": {
                "priorities": figures,
                "window_jobs": total,
                "window_s": round(float(rows[0]["window_s"]), 2),
                "over_time": series,
            }
        },
    }


def _series(rows: Sequence[asyncpg.Record]) -> dict[str, Any]:
    """``{"bucket_s", "started": {priority: [jobs started in each bucket]}}``."""
    started = {p: [0] * BUCKETS for p in PRIORITIES}
    width = 0.0
    for row in rows:
        started[row["priority"]][int(row["bucket"])] = int(row["started"])
        width = float(row["width"])
    return {"bucket_s": round(width, 3), "started": started}
