"""Scenario 8, scheduling: many jobs with a ``run_at`` spread over a window, released by the
scheduler of one running worker.

The issue's load is 100,000 jobs due over an hour (about 28 a second); a bench run cannot
take an hour, so the full run compresses it: ``sizes.scheduled_jobs`` (100,000) due
uniformly over ``sizes.scheduled_window_s`` (180 s, about 550 a second, 20 times the
issue's rate), the first due ``sizes.scheduled_lead_s`` after the submissions start, so
that all are submitted and stored before the first falls due. Each job has its own due
time (one ``submit`` each). It reports, from Postgres:

- release lateness: ``scheduled_jobs.released_at - due_at`` (the dispatcher's commit, after
  the broker acknowledged the release), p50/p95/p99;
- start lateness: ``jobs.started_at - scheduled_for`` (when the handler started);
- the worker process's CPU per 1,000 scheduled jobs, from the first submit to the last
  job done: the scheduler (intake, dispatcher) plus running the no-op jobs; the throughput
  scenario's CPU per 1,000 plain jobs, when it ran, is shown beside it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from bench import contenders, jobs, stack
from bench.context import Context
from conveyor import Producer

PRIORITY = "normal"
PREFIX = "s-"

_RELEASE = """
SELECT extract(epoch FROM released_at - due_at)::float8 AS late
FROM scheduled_jobs WHERE released_at IS NOT NULL AND NOT skipped
"""
_START = """
SELECT extract(epoch FROM started_at - scheduled_for)::float8 AS late
FROM jobs WHERE scheduled_for IS NOT NULL AND started_at IS NOT NULL
"""


def _submit_all(producer: Producer, count: int, first: dt.datetime, window_s: float) -> None:
    step = window_s / max(count - 1, 1)
    for i in range(count):
        due = first + dt.timedelta(seconds=i * step)
        producer.submit("bench.noop", {}, key=f"{PREFIX}{i}", priority=PRIORITY, run_at=due)
    producer.flush()


async def run(ctx: Context) -> dict[str, Any]:
    """Schedules the jobs, waits until all ran, reads the lateness from Postgres."""
    sizes = ctx.sizes
    count, window, lead = sizes.scheduled_jobs, sizes.scheduled_window_s, sizes.scheduled_lead_s
    async with stack.workspace(ctx.stack, "sch") as settings:
        conn = await jobs.connect(settings)
        try:
            with (
                contenders.conveyor_worker(
                    settings, priorities=[PRIORITY], concurrency=sizes.throughput_concurrency
                ) as child,
                Producer(settings) as producer,
            ):
                producer.submit("bench.noop", {}, key="warm-up", priority=PRIORITY, wait=True)
                await jobs.wait_complete(
                    conn,
                    1,
                    key_prefix="warm-up",
                    alive=child.check_alive,
                    timeout=sizes.job_timeout,
                )
                cpu_before = child.usage().cpu_s
                first = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lead)
                ctx.log(f"scheduling: {count:,} jobs due over {window:.0f} s from +{lead:.0f} s")
                await asyncio.to_thread(_submit_all, producer, count, first, window)
                submitted_by = (dt.datetime.now(dt.UTC) - first).total_seconds()
                await jobs.wait_complete(
                    conn,
                    count,
                    key_prefix=PREFIX,
                    alive=child.check_alive,
                    timeout=lead + window + sizes.job_timeout,
                )
                cpu_s = child.usage().cpu_s - cpu_before
            release = [r["late"] for r in await conn.fetch(_RELEASE)]
            start = [r["late"] for r in await conn.fetch(_START)]
        finally:
            await conn.close()
    plain = ctx.results.get("throughput", {}).get("contenders", {}).get("conveyor", {})
    figures = {
        "jobs": count,
        "released": len(release),
        "release_lateness_ms": jobs.percentiles_ms(release),
        "start_lateness_ms": jobs.percentiles_ms(start),
        "early": sum(1 for x in release if x < 0),
        "within_1s_pct": round(100 * sum(1 for x in release if x <= 1.0) / len(release), 2),
        "cpu_s_per_1000": round(cpu_s / count * 1000, 3),
        "plain_cpu_s_per_1000": plain.get("cpu_s_per_1000"),
        # Negative: the last submit came before the first due time, as intended.
        "submitted_s_after_first_due": round(submitted_by, 2),
    }
    params = {
        "jobs": count,
        "window_s": window,
        "lead_s": lead,
        "rate_per_s": round(count / window, 1),
        "concurrency": sizes.throughput_concurrency,
    }
    return {"params": params, "contenders": {"conveyor": figures}}
