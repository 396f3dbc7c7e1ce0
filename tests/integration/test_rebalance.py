"""A second worker joins, the first leaves: nothing lost, nothing twice, zombies fenced."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from aiokafka.partitioner import murmur2

from conveyor import Producer, Settings
from conveyor.consumer.context import JobContext
from conveyor.consumer.options import WorkerOptions
from conveyor.consumer.worker import Worker
from conveyor.jobstore import JobStore
from tests.worker_helpers import eventually, prepare, running

NORMAL_JOBS = 400
OPTIONS = WorkerOptions(
    commit_interval=0.2,
    session_timeout_ms=6000,
    heartbeat_interval_ms=1000,
    revoke_timeout=1.0,  # a zombie's partition is released after 1 s
    shutdown_grace=10.0,
)


def key_for_partition(partition: int, partitions: int) -> str:
    """A key that Kafka's default partitioner maps to ``partition``."""
    for i in range(10_000):
        key = f"slow-{i}"
        if (murmur2(key.encode()) & 0x7FFFFFFF) % partitions == partition:
            return key
    raise AssertionError("no key found")


@pytest.mark.timeout(240)
async def test_join_and_leave_lose_nothing_and_fence_the_zombie(
    settings: Settings, schema_registry_url: str, db: asyncpg.Connection[Any]
) -> None:
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)  # 2 partitions
    await db.execute(f'CREATE TABLE "{live.database_schema}".effects (job_id text, worker text)')
    release_first = asyncio.Event()
    first_started: set[str] = set()

    def make_worker(name: str, slow_waits: bool) -> Worker:
        worker = Worker(live, priorities=["normal"], concurrency=8, worker_id=name, options=OPTIONS)

        @worker.handler("effect.write")
        async def write(ctx: JobContext, payload: dict[str, Any]) -> None:
            await ctx.db.execute("INSERT INTO effects VALUES ($1, $2)", ctx.job_id, name)
            if payload.get("slow") and slow_waits:
                first_started.add(ctx.job_id)
                await release_first.wait()  # holds its job past the revoke: a zombie

        return worker

    first, second = make_worker("first", True), make_worker("second", False)
    with Producer(live) as producer:
        slow = [
            producer.submit("effect.write", {"slow": True}, key=key_for_partition(p, 2))
            for p in (0, 1)
        ]
        normal = producer.submit("effect.write", [{"n": i} for i in range(NORMAL_JOBS)])

    async with JobStore(live) as store:

        async def complete(ids: list[str]) -> bool:
            states = [(await store.status(j)).state for j in ids]
            return all(s == "complete" for s in states)

        async with running(first):
            await eventually(lambda: first_started == set(slow), what="both slow jobs on first")
            async with running(second):
                # The second worker takes a partition; the slow job there runs again on it.
                await eventually(lambda: bool(second.assignment), what="second assigned")
                await eventually(lambda: _any_complete(store, slow), what="a slow job re-run")
                release_first.set()
                await eventually(lambda: first.stats.fenced >= 1, what="a fenced completion")
            # The second worker left; the first takes every partition again.
            await eventually(lambda: complete(slow + normal), timeout=120, what="every job")

    effects = await db.fetch(
        f'SELECT job_id, count(*) AS n FROM "{live.database_schema}".effects GROUP BY job_id'
    )
    assert {r["job_id"] for r in effects} == set(slow + normal)
    assert {r["n"] for r in effects} == {1}, "a side effect committed twice"
    assert first.stats.fenced >= 1
    assert second.stats.completed >= 1


async def _any_complete(store: JobStore, ids: list[str]) -> bool:
    states = [(await store.status(j)).state for j in ids]
    return "complete" in states


@pytest.mark.timeout(180)
async def test_a_revoke_longer_than_the_session_timeout_keeps_its_member_and_its_jobs(
    settings: Settings, schema_registry_url: str, db: asyncpg.Connection[Any]
) -> None:
    """Jobs of 8 s run when a second worker joins (session timeout 6 s). The first worker's
    revoke waits for them; the rebalance timeout covers that wait, so the broker keeps the
    member, its commit lands, and no job runs a second time on the newcomer."""
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)  # 2 partitions
    options = WorkerOptions(
        commit_interval=0.2, session_timeout_ms=6000, heartbeat_interval_ms=1000,
        revoke_timeout=15.0, shutdown_grace=10.0,
    )  # fmt: skip
    starts: list[str] = []
    started = asyncio.Event()

    def make_worker(name: str) -> Worker:
        worker = Worker(live, priorities=["normal"], concurrency=4, worker_id=name, options=options)

        @worker.handler("long.job")
        async def long_job(ctx: JobContext, payload: dict[str, Any]) -> None:
            starts.append(ctx.job_id)
            if len(starts) >= 2:
                started.set()
            await asyncio.sleep(8.0)

        return worker

    first, second = make_worker("first"), make_worker("second")
    with Producer(live) as producer:
        ids = [producer.submit("long.job", {}, key=key_for_partition(p, 2)) for p in (0, 1)]

    async with JobStore(live) as store, running(first):
        await asyncio.wait_for(started.wait(), 60)
        async with running(second):
            await eventually(lambda: bool(second.assignment), timeout=60, what="second assigned")

            async def complete() -> bool:
                states = [(await store.status(j)).state for j in ids]
                return states == ["complete", "complete"]

            await eventually(complete, timeout=60, what="both long jobs complete")

    assert sorted(starts) == sorted(ids), "a long job ran again after the rebalance"
    assert first.stats.fenced == 0
    assert first.stats.completed == 2
