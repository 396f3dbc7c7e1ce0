"""Scenario 2, latency: jobs submitted one by one at a fixed rate to a running worker.

For each rate (``sizes.latency_rates``, plus 50% of conveyor's maximum measured by the
throughput scenario in the same run) it reports submit-to-start and submit-to-complete
p50/p95/p99. Before the rates, ``sizes.lone_jobs`` jobs go one at a time to the idle
worker (each after the one before finished and ``sizes.lone_gap_s`` of quiet): how
fast a lone job starts. Every contender's submit time is taken just before its submit
call (``time.time()``). conveyor's start and end come from Postgres (``started_at`` when
the handler starts, ``finished_at`` when its outcome is recorded), not its envelope's
``submitted_at``, which Avro's timestamp-millis floors to the millisecond; Celery's and
Dramatiq's from the task's own record (submit time as an argument, start and end
measured in the task). Each worker has done one warm-up job
before the clock starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from bench import contenders, jobs, redisrun, stack
from bench.celery_runner import CeleryRun
from bench.context import Context
from bench.dramatiq_runner import DramatiqRun
from bench.redisrun import RedisRun
from conveyor import Producer

PRIORITY = "normal"


def rates(ctx: Context) -> list[float]:
    """The rates to offer: the fixed ones, and half of conveyor's measured maximum."""
    offered = list(ctx.sizes.latency_rates)
    measured = ctx.results.get("throughput", {}).get("contenders", {}).get("conveyor", {})
    if measured.get("jobs_per_s"):
        offered.append(round(measured["jobs_per_s"] / 2))
    return offered


async def run(ctx: Context) -> dict[str, Any]:
    """Offers each rate to conveyor, then to Celery, then to Dramatiq."""
    offered = rates(ctx)
    results: dict[str, Any] = {"conveyor": await _conveyor(ctx, offered)}
    reason = redisrun.unavailable()
    baselines: dict[str, Callable[[], RedisRun]] = {"celery": CeleryRun, "dramatiq": DramatiqRun}
    for name, make in baselines.items():
        if reason is None:
            results[name] = await _redis_baseline(ctx, name, make, offered)
        else:
            ctx.log(f"latency: {name} skipped: {reason}")
            results[name] = {"skipped": reason}
    params = {
        "rates": offered,
        "seconds_per_rate": ctx.sizes.latency_seconds,
        "half_of_measured_max": len(offered) > len(ctx.sizes.latency_rates),
        "conveyor_concurrency": ctx.sizes.throughput_concurrency,
        "lone_jobs": ctx.sizes.lone_jobs,
        "lone_gap_s": ctx.sizes.lone_gap_s,
    }
    return {"params": params, "contenders": results}


async def _conveyor(ctx: Context, offered: list[float]) -> dict[str, Any]:
    sizes = ctx.sizes
    steps = []
    async with stack.workspace(ctx.stack, "lat") as settings:
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
                ctx.log(f"latency: conveyor, {sizes.lone_jobs} lone jobs on an idle worker")
                submitted: dict[str, float] = {}  # job id -> time.time() before its submit

                def submit_one(key: str) -> object:
                    at = time.time()
                    job_id = producer.submit("bench.noop", {}, key=key, priority=PRIORITY)
                    submitted[job_id] = at
                    return job_id

                for i in range(sizes.lone_jobs):
                    await asyncio.sleep(sizes.lone_gap_s)
                    submit_one(f"lone-{i}")
                    await jobs.wait_complete(
                        conn,
                        i + 1,
                        key_prefix="lone-",
                        alive=child.check_alive,
                        timeout=sizes.job_timeout,
                    )
                lone = {
                    "jobs": sizes.lone_jobs,
                    **await jobs.latency_ms(conn, "lone-", submitted),
                }
                for index, rate in enumerate(offered):
                    prefix = f"r{index}-"
                    ctx.log(f"latency: conveyor at {rate:.0f} jobs/s")

                    def submit(i: int, prefix: str = prefix) -> object:
                        return submit_one(f"{prefix}{i}")

                    sent = await asyncio.to_thread(
                        jobs.submit_at_rate, submit, rate=rate, seconds=sizes.latency_seconds
                    )
                    await asyncio.to_thread(producer.flush)
                    await jobs.wait_complete(
                        conn,
                        sent,
                        key_prefix=prefix,
                        alive=child.check_alive,
                        timeout=sizes.job_timeout,
                    )
                    steps.append(
                        {
                            "rate": rate,
                            "jobs": sent,
                            **await jobs.latency_ms(conn, prefix, submitted),
                        }
                    )
        finally:
            await conn.close()
    return {"lone": lone, "steps": steps}


async def _redis_baseline(
    ctx: Context, name: str, make: Callable[[], RedisRun], offered: list[float]
) -> dict[str, Any]:
    sizes = ctx.sizes
    baseline = make()
    steps = []
    try:
        with baseline.worker() as child:
            baseline.send()
            await baseline.wait_done(1, alive=child.check_alive, timeout=sizes.job_timeout)
            baseline.reset()
            ctx.log(f"latency: {name}, {sizes.lone_jobs} lone jobs on an idle worker")
            for i in range(sizes.lone_jobs):
                await asyncio.sleep(sizes.lone_gap_s)
                baseline.send()
                await baseline.wait_done(i + 1, alive=child.check_alive, timeout=sizes.job_timeout)
            lone = {"jobs": sizes.lone_jobs, **_percentiles(baseline.records())}
            for rate in offered:
                baseline.reset()
                ctx.log(f"latency: {name} at {rate:.0f} jobs/s")
                sent = await asyncio.to_thread(
                    jobs.submit_at_rate,
                    lambda _i: baseline.send(),
                    rate=rate,
                    seconds=sizes.latency_seconds,
                )
                await baseline.wait_done(sent, alive=child.check_alive, timeout=sizes.job_timeout)
                steps.append({"rate": rate, "jobs": sent, **_percentiles(baseline.records())})
    finally:
        baseline.close()
    return {"lone": lone, "steps": steps, "pool": baseline.pool}


def _percentiles(records: list[tuple[float, float, float]]) -> dict[str, dict[str, float]]:
    """Submit-to-start and submit-to-complete percentiles of a baseline's task records."""
    return {
        "submit_to_start": jobs.percentiles_ms([s - q for q, s, _ in records]),
        "submit_to_complete": jobs.percentiles_ms([f - q for q, _, f in records]),
    }
