"""Scenario 4, key concurrency: 2 partitions, a handler awaiting 10 ms, 1 to 1,000 keys.

Jobs of one key run one after another, so with ``k`` keys at most ``k`` jobs run at
once, whatever the partition count: the rate should grow with keys (up to the worker's
concurrency and what Postgres sustains), not stop at 2 (the partitions), as in
Confluent Parallel Consumer's key-ordering table. One worker serves the ``low`` topic
(``partition_unit=2``, so 2 partitions); each step submits its jobs to the running
worker and is timed from its first job started to its last finished.

The series runs twice when ``sizes.key_processes`` is above 1: with one worker process
of concurrency ``key_concurrency``, then with ``conveyor worker --processes N``, each
process with ``key_concurrency / N`` (the same slots in all, so the same ideal), each
in a workspace of its own. One event loop wakes every handler's timer; the second
series shows whether a second loop, on the same shared CPUs, gets more from the keys.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench import contenders, jobs, stack
from bench.context import Context
from bench.sizes import Sizes
from conveyor import Producer

PRIORITY = "low"
PARTITIONS = 2


async def run(ctx: Context) -> dict[str, Any]:
    """Runs one step per key count and reports jobs per second for each."""
    sizes = ctx.sizes
    results: dict[str, dict[str, Any]] = {
        "conveyor": {"series": await _series(ctx, "keys", processes=1)}
    }
    if sizes.key_processes > 1:
        processes = sizes.key_processes
        results["conveyor_processes"] = {
            "series": await _series(ctx, "keysn", processes=processes),
            "processes": processes,
            "concurrency_each": sizes.key_concurrency // processes,
        }
    return {
        "params": {
            "partitions": PARTITIONS,
            "handler_ms": sizes.key_handler_ms,
            "concurrency": sizes.key_concurrency,
        },
        "contenders": results,
    }


async def _series(ctx: Context, name: str, *, processes: int) -> list[dict[str, Any]]:
    sizes = ctx.sizes
    series = []
    label = "" if processes == 1 else f" (--processes {processes})"
    async with stack.workspace(ctx.stack, name, partition_unit=PARTITIONS) as settings:
        conn = await jobs.connect(settings)
        try:
            with (
                contenders.conveyor_worker(
                    settings,
                    priorities=[PRIORITY],
                    concurrency=sizes.key_concurrency // processes,
                    processes=processes,
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
                for keys in sizes.key_counts:
                    count = sizes.key_step_jobs(keys)
                    prefix = f"k{keys}-"
                    ctx.log(f"keys{label}: {keys} keys, {count} jobs")
                    await asyncio.to_thread(_submit, producer, count, keys, prefix, sizes)
                    await jobs.wait_complete(
                        conn,
                        count,
                        key_prefix=prefix,
                        alive=child.check_alive,
                        timeout=sizes.job_timeout,
                    )
                    span = await jobs.span(conn, prefix)
                    bound = min(keys, sizes.key_concurrency) * 1000 / sizes.key_handler_ms
                    series.append(
                        {
                            "keys": keys,
                            "jobs": count,
                            "jobs_per_s": round(span.rate, 1),
                            "ideal_jobs_per_s": round(bound, 1),
                        }
                    )
        finally:
            await conn.close()
    return series


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
