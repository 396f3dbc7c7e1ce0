"""Helpers of the scheduler's integration tests: a scheduler run for a block, and what it
released or left behind."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

import asyncpg

from conveyor.db import create_pool
from conveyor.scheduling.service import Scheduler
from conveyor.schemas.contracts import JOB_ENVELOPE
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from tests.kafka_helpers import read_topic


@contextlib.asynccontextmanager
async def scheduler(s: Settings) -> AsyncIterator[Scheduler]:
    """A scheduler (intake, dispatcher, recurring loop) running for the block."""
    pool = await create_pool(s, min_size=1, max_size=4)
    serde = Serde(s)
    service = Scheduler(
        s,
        pool=pool,
        serde=serde,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        record_lateness=True,
    )
    stop = asyncio.Event()
    try:
        await service.start()
        task = asyncio.create_task(service.run(stop))
        try:
            yield service
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)
    finally:
        await pool.close()
        serde.close()


def job_ids_on(s: Settings, topic: str, expected: int) -> collections.Counter[str]:
    """How many times each job id landed on ``topic`` (reads one more than expected, so a
    duplicate would show; returns after the read's deadline when none comes)."""
    records = read_topic(s.kafka_bootstrap, topic, expected + 1, timeout=5)
    with Serde(s) as serde:
        return collections.Counter(
            str(serde.decode(JOB_ENVELOPE, r.topic, r.value)["job_id"]) for r in records
        )


async def count(db: asyncpg.Connection, s: Settings, sql: str) -> int:
    """The count ``sql`` selects in the test's schema."""
    await db.execute(f'SET search_path TO "{s.database_schema}"')
    return int(await db.fetchval(sql))
