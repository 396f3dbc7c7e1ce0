"""Scenario 4, key concurrency: 2 partitions, a handler awaiting 10 ms, 1 to 1,000 keys.

Jobs of one key run one after another, so with ``k`` keys at most ``k`` jobs run at
once, whatever the partition count: the rate should grow with keys (up to the worker's
concurrency and what Postgres sustains), not stop at 2 (the partitions), as in
Confluent Parallel Consumer's key-ordering table. One worker (``key_concurrency``)
serves the ``low`` topic (``partition_unit=2``, so 2 partitions); each step is timed
from its first job started to its last finished.

The series runs twice, each in a workspace of its own:

- **a backlog** (the headline): each step's jobs are submitted first, then a worker
  is started on them and stopped when they are done, as the throughput scenario
  preloads its jobs. The worker's ledger child records the backlog while it runs, so
  its cost is in the figure; the bench's own producer is not.
- **submitted to a running worker**: one worker serves every step, and each step's jobs
  are submitted while it runs. On a machine this small the bench's producer (its
  encoding and librdkafka's threads) then takes CPU from the worker, the broker and
  Postgres for about a third of each step; the series shows how much.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from bench import contenders, jobs, stack
from bench.context import Context
from bench.procs import Child
from bench.sizes import Sizes
from conveyor import Producer

PRIORITY = "low"
PARTITIONS = 2


async def run(ctx: Context) -> dict[str, Any]:
    """Runs one step per key count, both ways, and reports jobs per second for each."""
    sizes = ctx.sizes
    return {
        "params": {
            "partitions": PARTITIONS,
            "handler_ms": sizes.key_handler_ms,
            "concurrency": sizes.key_concurrency,
        },
        "contenders": {
            "conveyor": {"series": await _backlog(ctx)},
            "conveyor_live": {"series": await _live(ctx)},
        },
    }


async def _backlog(ctx: Context) -> list[dict[str, Any]]:
    """Each step's jobs submitted first, then a worker started on them."""
    sizes = ctx.sizes
    series = []
    async with stack.workspace(ctx.stack, "keys", partition_unit=PARTITIONS) as settings:
        conn = await jobs.connect(settings)
        try:
            with Producer(settings) as producer:
                for keys in sizes.key_counts:
                    count = sizes.key_step_jobs(keys)
                    prefix = f"k{keys}-"
                    ctx.log(f"keys: {keys} keys, {count} jobs preloaded")
                    await asyncio.to_thread(_submit, producer, count, keys, prefix, sizes)
                    with contenders.conveyor_worker(
                        settings, priorities=[PRIORITY], concurrency=sizes.key_concurrency
                    ) as child:
                        await _wait(conn, count, prefix, child, sizes)
                    series.append(await _step(conn, keys, count, prefix, sizes))
        finally:
            await conn.close()
    return series


async def _live(ctx: Context) -> list[dict[str, Any]]:
    """One running worker; each step's jobs submitted while it runs."""
    sizes = ctx.sizes
    series = []
    async with stack.workspace(ctx.stack, "keyslive", partition_unit=PARTITIONS) as settings:
        conn = await jobs.connect(settings)
        try:
            with (
                contenders.conveyor_worker(
                    settings, priorities=[PRIORITY], concurrency=sizes.key_concurrency
                ) as child,
                Producer(settings) as producer,
            ):
                producer.submit("bench.noop", {}, key="warm-up", priority=PRIORITY, wait=True)
                await _wait(conn, 1, "warm-up", child, sizes)
                for keys in sizes.key_counts:
                    count = sizes.key_step_jobs(keys)
                    prefix = f"k{keys}-"
                    ctx.log(f"keys (submitted while running): {keys} keys, {count} jobs")
                    await asyncio.to_thread(_submit, producer, count, keys, prefix, sizes)
                    await _wait(conn, count, prefix, child, sizes)
                    series.append(await _step(conn, keys, count, prefix, sizes))
        finally:
            await conn.close()
    return series


async def _wait(
    conn: asyncpg.Connection[Any], count: int, prefix: str, child: Child, sizes: Sizes
) -> None:
    await jobs.wait_complete(
        conn, count, key_prefix=prefix, alive=child.check_alive, timeout=sizes.job_timeout
    )


async def _step(
    conn: asyncpg.Connection[Any], keys: int, count: int, prefix: str, sizes: Sizes
) -> dict[str, Any]:
    span = await jobs.span(conn, prefix)
    bound = min(keys, sizes.key_concurrency) * 1000 / sizes.key_handler_ms
    return {
        "keys": keys,
        "jobs": count,
        "jobs_per_s": round(span.rate, 1),
        "ideal_jobs_per_s": round(bound, 1),
    }


def _submit(producer: Producer, count: int, keys: int, prefix: str, sizes: Sizes) -> None:
    jobs.submit_batches(
        producer,
        count,
        job_type="bench.sleep",
        priority=PRIORITY,
        key=lambda i: f"{prefix}{i % keys}",
        payload={"ms": sizes.key_handler_ms},
    )
    producer.flush()
