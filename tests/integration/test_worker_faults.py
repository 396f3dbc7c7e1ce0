"""Faults inside the worker's own machinery must not strand, leak or wrongly cancel a job."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any

import asyncpg

from conveyor import PermanentError, Producer, Settings
from conveyor.consumer.context import JobContext
from conveyor.consumer.failures import RetryPolicy
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


async def test_an_in_place_retry_stops_when_its_partition_is_revoked(
    settings: Settings, schema_registry_url: str
) -> None:
    """An ``ordering="key"`` job fails once and waits out a 5 s backoff in place. Its
    partition is revoked meanwhile (what a rebalance does): the revoke does not wait for the
    backoff, and the worker never runs the job again, since the partition's next owner
    reads it again; a second attempt here would steal the lease back and run the key out
    of order on two workers."""
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    worker = Worker(live, priorities=["normal"], concurrency=2, options=TEST_OPTIONS)
    attempts: list[int] = []
    failed = asyncio.Event()
    again = asyncio.Event()

    @worker.handler("ledger.post", ordering="key", retry=RetryPolicy(initial=5.0, jitter=0.0))
    async def post(ctx: JobContext, payload: dict[str, Any]) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            failed.set()
            raise RuntimeError("transient")
        again.set()

    with Producer(live) as producer:
        producer.submit("ledger.post", {}, key="account-1")

    async with running(worker):
        await asyncio.wait_for(failed.wait(), 60)
        loop = worker._loop
        assert loop is not None
        owned = set(loop.owned)
        # The revoke callback's own call: well within the backoff, so it did not wait it out.
        await asyncio.wait_for(loop.release("normal", owned), timeout=2.5)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(again.wait(), timeout=6.0)  # past the 5 s backoff
    assert attempts == [1], "the job ran again on a worker that lost its partition"
    assert worker.stats.fenced == 1


async def test_a_postgres_outage_strands_no_job_and_readiness_says_why(
    through_proxy: Any, db: asyncpg.Connection[Any]
) -> None:
    """Postgres goes away mid-run and more jobs arrive meanwhile. Outcomes that could not
    be recorded are tried again with backoff rather than dropped, the worker stops
    fetching and is not ready (saying why), and when Postgres is back every job completes
    with its side effect exactly once, without a restart."""
    live, proxied, proxy = through_proxy
    schema = f'"{live.database_schema}"'
    await db.execute(f"CREATE TABLE {schema}.effects (job_id text NOT NULL)")
    worker = Worker(proxied, priorities=["normal"], concurrency=4, options=TEST_OPTIONS)
    gate = asyncio.Event()
    gate.set()

    @worker.handler("effect.write")
    async def write(ctx: JobContext, payload: dict[str, Any]) -> None:
        await gate.wait()
        await ctx.db.execute("INSERT INTO effects VALUES ($1)", ctx.job_id)

    async def effects() -> int:
        return int(await db.fetchval(f"SELECT count(*) FROM {schema}.effects"))

    with Producer(live) as producer:
        first = producer.submit("effect.write", [{"n": i} for i in range(20)])
    async with running(worker):
        await eventually(lambda: _at_least(effects, 20), timeout=60, what="the first 20 effects")
        gate.clear()  # the next jobs are mid-handler when Postgres goes
        with Producer(live) as producer:
            second = producer.submit("effect.write", [{"n": i} for i in range(20, 40)])
        await eventually(lambda: worker.in_flight > 0, timeout=30, what="jobs in their handlers")
        await proxy.stop()
        gate.set()
        await eventually(lambda: worker.stats.unrecorded > 0, timeout=30, what="a failed record")
        loop = worker._loop
        assert loop is not None
        assert loop.record_problem is not None
        assert "cannot be recorded" in loop.record_problem
        await proxy.start()
        async with JobStore(live) as store:

            async def all_complete() -> bool:
                states = [(await store.status(j)).state for j in first + second]
                return states == ["complete"] * 40

            await eventually(all_complete, timeout=90, what="all 40 jobs complete")
        assert loop.record_problem is None
    rows = await db.fetch(f"SELECT job_id, count(*) AS n FROM {schema}.effects GROUP BY job_id")
    assert {r["job_id"] for r in rows} == set(first + second)
    assert {r["n"] for r in rows} == {1}, "a side effect committed twice"


async def _at_least(count: Any, target: int) -> bool:
    return bool(await count() >= target)


async def test_an_error_text_postgres_would_refuse_still_reaches_the_dlq(
    settings: Settings, schema_registry_url: str
) -> None:
    """A handler's error holding NUL (refused by jsonb) and 100 KB of text: the job is
    recorded failed with its cleaned error and published to the DLQ, never left unrecorded."""
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    worker = Worker(live, priorities=["normal"], concurrency=2, options=TEST_OPTIONS)

    @worker.handler("hostile.error")
    async def hostile(ctx: JobContext, payload: dict[str, Any]) -> None:
        raise PermanentError("bad\x00byte " + "x" * 100_000)

    with Producer(live) as producer:
        job_id = producer.submit("hostile.error", {})
    async with JobStore(live) as store, running(worker):

        async def failed() -> bool:
            return (await store.status(job_id)).state == "failed"

        await eventually(failed, timeout=60, what="the job recorded failed")
        status = await store.status(job_id)
    assert status.last_error is not None
    assert status.last_error["message"].startswith("bad\\x00byte x")
    assert worker.stats.dead_lettered == 1
    assert worker.stats.unrecorded == 0
