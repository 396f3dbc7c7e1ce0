"""What a worker's run builds before it joins its groups: its two pools and its runner.

Two pools: the handlers' ``ctx.db`` and the helpers' one (Postgres' default planning,
reset on release, as a user's queries expect), and the status writes' own, which plans
each statement for its parameters and is never reset (no user query runs there). The
runner gets the handlers with their payload schemas registered, and runs short jobs
before they are claimed (``conveyor.consumer.unclaimed``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import asyncpg

from conveyor import db
from conveyor.consumer import unclaimed
from conveyor.consumer.execution import JobRunner
from conveyor.consumer.handlers import HandlerRegistry
from conveyor.consumer.options import WorkerOptions
from conveyor.consumer.outcome import WorkerStats
from conveyor.consumer.publisher import FailurePublisher
from conveyor.consumer.status import StatusStore
from conveyor.consumer.unclaimed import UnclaimedStore
from conveyor.observability.metrics import WorkerMetrics
from conveyor.scheduling import recurring
from conveyor.schemas.payload import PayloadCodec
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology.model import PRIORITIES, Topology

#: Connections of the status-write pool: two batches in flight for each of claims,
#: completions, reads and unclaimed completions, and room for the one-job writes
#: (outcomes, heartbeats, progress).
STATUS_CONNECTIONS = 10


async def open_pools(
    settings: Settings,
    options: WorkerOptions,
    *,
    concurrency: int,
    schedules: Iterable[recurring.ScheduleSpec],
) -> tuple[asyncpg.Pool[Any], asyncpg.Pool[Any]]:
    """The pool of handlers' ``ctx.db`` and the helpers, and the status writes' own,
    once ``schedules`` (declared with ``Worker.schedule``) are upserted (each start,
    every worker)."""
    extra = 5 if options.run_scheduler else 2  # the helpers' own transactions
    pool = await db.create_pool(settings, min_size=1, max_size=concurrency + extra)
    try:
        async with pool.acquire() as conn:
            for spec in schedules:
                await recurring.upsert(conn, spec, source="code")
        status_pool = await db.create_pool(
            settings,
            min_size=1,
            max_size=STATUS_CONNECTIONS,
            custom_plans=True,
            reset_on_release=False,
        )
    except BaseException:
        await pool.close()
        raise
    return pool, status_pool


def job_runner(
    settings: Settings,
    options: WorkerOptions,
    *,
    worker_id: str,
    registry: HandlerRegistry,
    stats: WorkerStats,
    metrics: WorkerMetrics,
    pools: tuple[asyncpg.Pool[Any], asyncpg.Pool[Any]],
    serde: Serde,
    publisher: FailurePublisher,
) -> JobRunner:
    """The runner of a worker's handlers, with their payload schemas registered.

    Args:
        pools: The pools :func:`open_pools` opened.
    """
    pool, status_pool = pools
    topology = Topology.from_settings(settings)
    codec = PayloadCodec(serde, settings.topic_prefix)
    for spec in registry:
        if spec.schema is not None:
            codec.register_type(spec.type, spec.schema)
    metrics.know_types(spec.type for spec in registry)
    return JobRunner(
        status=StatusStore(status_pool, worker_id=worker_id, lease_seconds=options.lease_seconds),
        pool=pool,
        registry=registry,
        codec=codec,
        stats=stats,
        metrics=metrics,
        consumer_groups={topology.job_topic(p): topology.consumer_group(p) for p in PRIORITIES},
        lease_seconds=options.lease_seconds,
        publisher=publisher,
        # Short jobs run before they are claimed: one status write each.
        unclaimed=UnclaimedStore(status_pool),
        claim_after=unclaimed.CLAIM_AFTER,
    )


__all__ = ["STATUS_CONNECTIONS", "job_runner", "open_pools"]
