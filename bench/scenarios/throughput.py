"""Scenario 1, throughput: a preloaded backlog of no-op jobs, one worker process.

Contenders, one after another on the same machine: (a) the raw consume-and-commit loop
over the very topic conveyor reads (its own consumer group), the ceiling for this broker;
(b) conveyor, done when every job's status is ``complete`` in Postgres; (c) Celery on
Redis with the same no-op task, when Redis answers. Jobs per second count from the first
job started to the last one finished, so process start-up and group joins are left out.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench import celery_runner, contenders, jobs, stack
from bench.context import Context, throughput_figures
from bench.watch import watch
from conveyor.settings import Settings
from conveyor.topology.model import Topology

PRIORITY = "normal"


async def run(ctx: Context) -> dict[str, Any]:
    """Runs the three contenders over ``sizes.throughput_jobs`` jobs."""
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
            watched = await watch(
                child,
                raw.done,
                target=count,
                timeout=sizes.job_timeout,
                interval=sizes.poll_interval,
            )
            results["raw"] = throughput_figures(count, raw.span_rate(), watched)

        ctx.log("throughput: conveyor worker")
        conn = await jobs.connect(settings)
        try:
            with contenders.conveyor_worker(
                settings, priorities=[PRIORITY], concurrency=sizes.throughput_concurrency
            ) as child:
                watched = await watch(
                    child,
                    lambda: jobs.count_complete(conn),
                    target=count,
                    timeout=sizes.job_timeout,
                    interval=sizes.poll_interval,
                )
            span = await jobs.span(conn)
        finally:
            await conn.close()
        results["conveyor"] = throughput_figures(count, span.rate, watched)

    results["celery"] = await _celery(ctx, count)
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


async def _preload(settings: Settings, count: int, keys: int) -> float:
    return await asyncio.to_thread(
        jobs.preload, settings, count, priority=PRIORITY, key=lambda i: f"k{i % keys}"
    )


async def _celery(ctx: Context, count: int) -> dict[str, Any]:
    reason = celery_runner.unavailable()
    if reason is not None:
        ctx.log(f"throughput: Celery skipped: {reason}")
        return {"skipped": reason}
    ctx.log(f"throughput: Celery on Redis, preloading {count} tasks")
    celery = celery_runner.CeleryRun()
    try:
        celery.preload(count)
        with celery.worker() as child:
            watched = await watch(
                child,
                celery.done,
                target=count,
                timeout=ctx.sizes.job_timeout,
                interval=ctx.sizes.poll_interval,
            )
        figures: dict[str, Any] = throughput_figures(count, celery.span_rate(), watched)
        figures["pool"] = f"prefork x{celery.concurrency}"
        return figures
    finally:
        celery.close()


def _ratios(results: dict[str, Any]) -> dict[str, float]:
    conveyor = results["conveyor"]["jobs_per_s"]
    ratios = {}
    for name in ("raw", "celery"):
        other = results[name].get("jobs_per_s")
        if other:
            ratios[f"conveyor_to_{name}"] = round(conveyor / other, 3)
    return ratios
