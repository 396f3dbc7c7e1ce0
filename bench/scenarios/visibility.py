"""Scenario 8, visibility: submit to visible-as-queued in Postgres, with workers far behind.

The ledger (``conveyor/ledger``) records every job on the job topics as ``queued``. Three
steps, the first two on one workspace, the third on a fresh one:

1. **Catch-up**: a preloaded backlog (``sizes.visibility_backlog`` jobs), then
   ``conveyor ledger`` started alone; jobs per second from its first row to its last
   (``created_at``), and the CPU seconds per 1,000 jobs of its process: the ledger's own
   cost per job, which SCALING.md builds on.
2. **Ledger alone**: jobs submitted one by one at ``sizes.visibility_rate`` per second
   for ``sizes.visibility_seconds``, while that ledger runs and no worker does.
3. **Inside a worker far behind**: the same rate, with ``conveyor worker bench.apps:worker``
   (ledger on, as by default) and the jobs' handler awaiting 1 s at concurrency 32, so
   the worker is thousands of jobs behind within a second. The clock starts once the
   worker's ledger has recorded a job on a topic the worker does not serve.

Visible means the bench has been told: it LISTENs on the channel the ``jobs`` insert
trigger notifies at commit (one notification per statement names up to 200 job ids),
and takes the first notification of each job id. The
submit time is taken just before ``Producer.submit`` in the same process and clock, so
the figure includes the producer's linger, the broker, the ledger's fetch and statement,
the commit and the notification; ``submit_to_statement`` splits off the part before the
ledger's statement began (the rows' ``created_at`` minus ``submitted_at``). In step 3 a
job the worker claimed before the ledger recorded it is counted when the claim commits
(``claimed_first`` says how many).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import contenders, jobs, stack
from bench.context import Context, throughput_figures
from bench.procs import Child
from bench.watch import watch
from conveyor import Producer
from conveyor.consumer.status import progress_channel
from conveyor.settings import Settings

PRIORITY = "normal"
#: What each job of step 3 awaits, so the worker falls far behind.
SLOW_MS = 1000


async def run(ctx: Context) -> dict[str, Any]:
    """Runs the three steps and reports the ledger's rate, cost and visibility."""
    sizes = ctx.sizes
    results: dict[str, Any] = {}
    async with stack.workspace(ctx.stack, "vis") as settings:
        conn = await jobs.connect(settings)
        try:
            ctx.log(f"visibility: preloading {sizes.visibility_backlog} jobs for the catch-up")
            await asyncio.to_thread(
                jobs.preload, settings, sizes.visibility_backlog, priority=PRIORITY
            )
            with contenders.conveyor_ledger(settings) as child:
                results["catch_up"] = await _catch_up(ctx, conn, child)
                ctx.log(f"visibility: ledger alone at {sizes.visibility_rate:.0f} jobs/s")
                results["ledger"] = await _offer(ctx, settings, child, "a-", {})
        finally:
            await conn.close()
    # A fresh workspace, so the worker has only the slow jobs to fall behind on.
    async with stack.workspace(ctx.stack, "visw") as settings:
        ctx.log(f"visibility: a worker far behind at {sizes.visibility_rate:.0f} jobs/s")
        conn = await jobs.connect(settings)
        try:
            with contenders.conveyor_worker(
                settings, priorities=[PRIORITY], concurrency=sizes.throughput_concurrency
            ) as worker:
                await _ledger_up(ctx, settings, conn, worker)
                step = await _offer(ctx, settings, worker, "w-", {"ms": SLOW_MS})
            step["claimed_first"] = int(
                await conn.fetchval(
                    "SELECT count(*) FROM jobs WHERE starts_with(key, 'w-') "
                    "AND source_offset IS NULL"
                )
            )
            results["in_worker"] = step
        finally:
            await conn.close()
    return {
        "params": {
            "rate": sizes.visibility_rate,
            "seconds": sizes.visibility_seconds,
            "backlog": sizes.visibility_backlog,
            "priority": PRIORITY,
            "partitions": settings.partition_unit * 2,
            "worker_handler_ms": SLOW_MS,
            "worker_concurrency": sizes.throughput_concurrency,
        },
        "contenders": {"conveyor": results},
    }


async def _ledger_up(ctx: Context, settings: Settings, conn: Any, child: Child) -> None:
    """Waits until the worker's ledger records a job on a topic the worker does not serve
    (so only the ledger can record it): the worker has started and its ledger joined."""
    with Producer(settings) as producer:
        producer.submit("bench.noop", {}, key="warm-up", priority="low", wait=True)

    async def recorded() -> bool:
        child.check_alive()
        return bool(await conn.fetchval("SELECT count(*) FROM jobs WHERE key = 'warm-up'"))

    await jobs.wait_for(recorded, timeout=ctx.sizes.job_timeout, what="the worker's ledger")


async def _catch_up(ctx: Context, conn: Any, child: Child) -> dict[str, Any]:
    count = ctx.sizes.visibility_backlog

    async def rows() -> int:
        return int(await conn.fetchval("SELECT count(*) FROM jobs"))

    watched = await watch(
        child, rows, target=count, timeout=ctx.sizes.job_timeout, interval=ctx.sizes.poll_interval
    )
    # Each statement's rows share its start time (created_at = now()); as for the raw
    # loop, the first statement's rows were read before the clock starts, so they are
    # left out: the rate is the later rows over the time from the first start to the last.
    span = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE created_at > first) AS n,"
        " extract(epoch FROM max(created_at) - min(first)) AS s"
        " FROM jobs, (SELECT min(created_at) AS first FROM jobs) AS f"
    )
    seconds = float(span["s"] or 0)
    rate = float(span["n"]) / seconds if seconds > 0 else 0.0
    return throughput_figures(count, rate, watched)


async def _offer(
    ctx: Context, settings: Settings, child: Child, prefix: str, payload: dict[str, Any]
) -> dict[str, Any]:
    """Submits at the scenario's rate and times each job's first notification."""
    sizes = ctx.sizes
    seen: dict[str, float] = {}

    def on_notify(_conn: Any, _pid: int, _channel: str, job_ids: object) -> None:
        # One notification per statement names up to 200 job ids, joined by commas.
        now = time.monotonic()
        for job_id in str(job_ids).split(","):
            seen.setdefault(job_id, now)

    listener = await jobs.connect(settings)
    channel = progress_channel(settings.database_schema)
    await listener.add_listener(channel, on_notify)
    submitted: dict[str, float] = {}
    try:
        with Producer(settings) as producer:
            job_type = "bench.sleep" if payload else "bench.noop"

            def submit(i: int) -> object:
                at = time.monotonic()
                job_id = producer.submit(job_type, payload, key=f"{prefix}{i}", priority=PRIORITY)
                submitted[str(job_id)] = at
                return job_id

            cpu_before = child.usage().cpu_s
            started = time.monotonic()
            sent = await asyncio.to_thread(
                jobs.submit_at_rate,
                submit,
                rate=sizes.visibility_rate,
                seconds=sizes.visibility_seconds,
            )
            offered_s = time.monotonic() - started
            await asyncio.to_thread(producer.flush)
        deadline = time.monotonic() + sizes.job_timeout
        while any(j not in seen for j in submitted) and time.monotonic() < deadline:
            child.check_alive()
            await asyncio.sleep(0.1)
        cpu_s = child.usage().cpu_s - cpu_before
    finally:
        await listener.remove_listener(channel, on_notify)
        await listener.close()
    waits = [seen[j] - at for j, at in submitted.items() if j in seen]
    # Where the time went: the producer's submitted_at to the start of the ledger's
    # statement (created_at = now()), from the rows the ledger wrote.
    starts = await _statement_starts(settings, prefix)
    return {
        "jobs": sent,
        "achieved_rate": round(sent / offered_s, 1) if offered_s > 0 else 0.0,
        "visible": len(waits),
        "submit_to_visible": jobs.percentiles_ms(waits),
        "submit_to_statement": jobs.percentiles_ms(starts) if starts else None,
        "cpu_s_per_1000": round(cpu_s / sent * 1000, 3) if sent else 0.0,
    }


async def _statement_starts(settings: Settings, prefix: str) -> list[float]:
    conn = await jobs.connect(settings)
    try:
        found = await conn.fetch(
            "SELECT extract(epoch FROM created_at - submitted_at)::float8 AS s FROM jobs"
            " WHERE starts_with(key, $1) AND source_offset IS NOT NULL",
            prefix,
        )
    finally:
        await conn.close()
    return [float(r["s"]) for r in found]
