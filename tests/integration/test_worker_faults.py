"""Faults inside the worker's own machinery must not strand, leak or wrongly cancel a job."""

from __future__ import annotations

import dataclasses
from typing import Any

import asyncpg

from conveyor import Producer, Settings
from conveyor.consumer.context import JobContext
from conveyor.consumer.status import StatusStore
from conveyor.consumer.worker import Worker
from conveyor.jobstore import JobStore
from tests.worker_helpers import TEST_OPTIONS, eventually, prepare, running

#: A lease short enough that a half-second job heartbeats (every third of it) twice.
SHORT_LEASE = dataclasses.replace(TEST_OPTIONS, lease_seconds=0.6)


async def test_a_failing_heartbeat_neither_ends_the_job_nor_leaks_its_connection(
    settings: Settings,
    schema_registry_url: str,
    db: asyncpg.Connection[Any],
    monkeypatch: Any,
) -> None:
    """Every lease renewal raises (the database blips). Long jobs that write through
    ``ctx.db`` still complete, and the pool (concurrency + 2 = 4 connections) serves all 8
    of them: a job whose heartbeat error escaped would hold its connection forever."""
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    await db.execute(f'CREATE TABLE "{live.database_schema}".effects (job_id text NOT NULL)')
    beats: list[str] = []

    async def failing_heartbeat(self: StatusStore, lease: Any) -> bool:
        beats.append(lease.job_id)
        raise ConnectionResetError("connection to Postgres lost")

    monkeypatch.setattr(StatusStore, "heartbeat", failing_heartbeat)
    worker = Worker(live, priorities=["normal"], concurrency=2, options=SHORT_LEASE)

    @worker.handler("long.write", duration="long")
    async def long_write(ctx: JobContext, payload: dict[str, Any]) -> None:
        import asyncio

        await ctx.db.execute("INSERT INTO effects VALUES ($1)", ctx.job_id)
        await asyncio.sleep(0.5)

    with Producer(live) as producer:
        ids = producer.submit("long.write", [{"n": i} for i in range(8)])

    async with JobStore(live) as store, running(worker):

        async def all_complete() -> bool:
            states = [(await store.status(j)).state for j in ids]
            return states == ["complete"] * len(ids)

        await eventually(all_complete, timeout=60, what="every long job complete")
    assert set(beats) == set(ids), "each job should have tried to renew its lease"
    effects = await db.fetch(f'SELECT job_id FROM "{live.database_schema}".effects')
    assert sorted(r["job_id"] for r in effects) == sorted(ids)
