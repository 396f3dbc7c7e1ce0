"""Scenario 1, throughput: a preloaded backlog of no-op jobs, one worker process.

Contenders, one after another on the same machine: (a) the raw consume-and-commit loop
over the very topic conveyor reads (its own consumer group), the broker's ceiling;
(b) the raw durable loop (``bench.rawdurable``) over that topic too, writing the rows
conveyor writes into a schema of its own, one statement per fetch: the ceiling with
durable status; (c) conveyor, done when every job's status is ``complete`` in Postgres,
with the ledger on as a worker runs it by default (so its figure includes the ledger's
``queued`` rows, and claims that update those rows rather than insert them);
(d) conveyor again as ``conveyor worker --processes N`` (``sizes.throughput_processes``,
2 by default: Celery and Dramatiq run two processes here too) on a fresh workspace with
the same backlog; (e) Celery and (f) Dramatiq on Redis with the same no-op task, when
Redis answers. Jobs per second count from the first job started to the last one finished,
so process start-up and group joins are left out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from bench import contenders, jobs, redisrun, stack
from bench.celery_runner import CeleryRun
from bench.context import Context, throughput_figures
from bench.dramatiq_runner import DramatiqRun
from bench.procs import Child
from bench.redisrun import RedisRun
from bench.watch import Watched, watch
from conveyor.settings import Settings
from conveyor.topology.model import Topology

PRIORITY = "normal"
#: Ratios reported: conveyor's jobs/s over each of these contenders'.
BASELINES = ("raw", "raw_durable", "celery", "dramatiq")
#: The conveyor contenders the ratios are reported for: one process, and N.
CONVEYORS = ("conveyor", "conveyor_processes")


async def run(ctx: Context) -> dict[str, Any]:
    """Runs the five contenders over ``sizes.throughput_jobs`` jobs."""
    sizes = ctx.sizes
    count, keys = sizes.throughput_jobs, sizes.throughput_keys
    results: dict[str, Any] = {}
    async with stack.workspace(ctx.stack, "tp") as settings:
        ctx.log(f"throughput: preloading {count} jobs ({keys} keys)")
        submitted = await _preload(settings, count, keys)
        topic = Topology.from_settings(settings).job_topic(PRIORITY)

        ctx.log("throughput: raw confluent-kafka loop")
        raw = contenders.RawLoop(settings, topic=topic, count=count)
        with raw.running() as child:
            watched = await _watch(ctx, child, raw.done, count)
            results["raw"] = throughput_figures(count, raw.span_rate(), watched)

        ctx.log("throughput: raw durable loop")
        async with stack.extra_schema(settings, "raw") as durable:
            with contenders.raw_durable(durable, topic=topic, count=count) as child:
                results["raw_durable"] = await _from_jobs_table(ctx, durable, child, count)

        ctx.log("throughput: conveyor worker")
        with contenders.conveyor_worker(
            settings, priorities=[PRIORITY], concurrency=sizes.throughput_concurrency
        ) as child:
            results["conveyor"] = await _from_jobs_table(ctx, settings, child, count)

    if sizes.throughput_processes > 1:
        results["conveyor_processes"] = await _processes(ctx, count, keys)
    results["celery"] = await _redis_baseline(ctx, "Celery", CeleryRun, count)
    results["dramatiq"] = await _redis_baseline(ctx, "Dramatiq", DramatiqRun, count)
    return {
        "params": {
            "jobs": count,
            "keys": keys,
            "priority": PRIORITY,
            "partitions": settings.partition_unit * 2,
            "conveyor_concurrency": sizes.throughput_concurrency,
            "preload_jobs_per_s": round(submitted, 1),
        },
        "contenders": results,
        "ratios": _ratios(results),
    }


async def _processes(ctx: Context, count: int, keys: int) -> dict[str, Any]:
    """conveyor with ``--processes N`` over the same backlog, in a workspace of its own
    (the first run left every job complete, so a second group there would skip them)."""
    processes = ctx.sizes.throughput_processes
    async with stack.workspace(ctx.stack, "tpn") as settings:
        ctx.log(f"throughput: preloading {count} jobs again for --processes {processes}")
        await _preload(settings, count, keys)
        ctx.log(f"throughput: conveyor worker --processes {processes}")
        with contenders.conveyor_worker(
            settings,
            priorities=[PRIORITY],
            concurrency=ctx.sizes.throughput_concurrency,
            processes=processes,
        ) as child:
            figures = await _from_jobs_table(ctx, settings, child, count)
    figures["processes"] = processes
    return figures


async def _preload(settings: Settings, count: int, keys: int) -> float:
    return await asyncio.to_thread(
        jobs.preload, settings, count, priority=PRIORITY, key=lambda i: f"k{i % keys}"
    )


async def _watch(
    ctx: Context, child: Child, progress: Callable[[], Awaitable[int]], count: int
) -> Watched:
    return await watch(
        child,
        progress,
        target=count,
        timeout=ctx.sizes.job_timeout,
        interval=ctx.sizes.poll_interval,
    )


async def _from_jobs_table(
    ctx: Context, settings: Settings, child: Child, count: int
) -> dict[str, Any]:
    """Watches a contender that records jobs complete in ``settings``' jobs table."""
    conn = await jobs.connect(settings)
    try:
        watched = await _watch(ctx, child, lambda: jobs.count_complete(conn), count)
        span = await jobs.span(conn)
        transitions = await conn.fetchval("SELECT count(*) FROM job_transitions")
    finally:
        await conn.close()
    figures: dict[str, Any] = throughput_figures(count, span.rate, watched)
    # The same rows for both: queued, processing and complete per job.
    figures["transitions_per_job"] = round(int(transitions) / count, 3)
    return figures


async def _redis_baseline(
    ctx: Context, name: str, make: Callable[[], RedisRun], count: int
) -> dict[str, Any]:
    reason = redisrun.unavailable()
    if reason is not None:
        ctx.log(f"throughput: {name} skipped: {reason}")
        return {"skipped": reason}
    ctx.log(f"throughput: {name} on Redis, preloading {count} tasks")
    baseline = make()
    try:
        baseline.preload(count)
        with baseline.worker() as child:
            watched = await _watch(ctx, child, baseline.done, count)
        figures: dict[str, Any] = throughput_figures(count, baseline.span_rate(), watched)
        figures["pool"] = baseline.pool
        return figures
    finally:
        baseline.close()


def _ratios(results: dict[str, Any]) -> dict[str, float]:
    ratios = {}
    for ours in CONVEYORS:
        if ours not in results:
            continue
        rate = results[ours]["jobs_per_s"]
        for name in BASELINES:
            other = results[name].get("jobs_per_s")
            if other:
                ratios[f"{ours}_to_{name}"] = round(rate / other, 3)
    return ratios
