"""Delayed and run_at jobs on the real broker and Postgres: stored, released once, cancelled."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import uuid
from typing import Any

import asyncpg
import pytest

from conveyor import AsyncProducer, Settings
from conveyor.consumer.context import JobContext
from conveyor.consumer.worker import Worker
from conveyor.jobstore import JobStore
from conveyor.schemas.contracts import JOB_ENVELOPE
from conveyor.schemas.serde import Serde
from conveyor.topology.model import Topology
from tests.kafka_helpers import read_topic
from tests.scheduling_helpers import count, job_ids_on, scheduler
from tests.worker_helpers import TEST_OPTIONS, eventually, prepare, running


@pytest.fixture
async def live(settings: Settings, schema_registry_url: str) -> Settings:
    """One partition unit, topology applied, migrated."""
    return await prepare(settings.replace(partition_unit=1), schema_registry_url)


async def test_a_delayed_job_is_scheduled_with_its_due_time_then_runs_once(live: Settings) -> None:
    worker = Worker(live, priorities=["normal"], concurrency=4, options=TEST_OPTIONS)
    ran: list[tuple[str, dt.datetime]] = []

    @worker.handler("later.job")
    async def later(ctx: JobContext, payload: dict[str, Any]) -> None:
        ran.append((ctx.job_id, dt.datetime.now(dt.UTC)))

    async with running(worker), AsyncProducer(live) as producer, JobStore(live) as store:
        due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=4)
        job_id = await producer.submit("later.job", {}, run_at=due)

        async def complete() -> bool:
            return (await store.status(job_id)).state == "complete"

        await eventually(complete, what="the delayed job to run")
        status = await store.status(job_id)
    assert status.scheduled_for is not None
    assert abs((status.scheduled_for - due).total_seconds()) < 0.002  # stored in ms
    assert [j for j, _ in ran] == [job_id]
    assert ran[0][1] >= due
    assert [t.state for t in status.history] == ["scheduled", "queued", "processing", "complete"]


async def test_three_schedulers_release_each_job_exactly_once(
    live: Settings, db: asyncpg.Connection
) -> None:
    """300 jobs due within a few seconds, three schedulers (intake + dispatcher) at once:
    each job id lands on its priority topic once, and the three released 300 in all."""
    topology = Topology.from_settings(live)
    async with scheduler(live) as a, scheduler(live) as b, scheduler(live) as c:
        async with AsyncProducer(live) as producer:
            base = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)
            ids = [
                await producer.submit(
                    "fanout.job", {"i": i}, run_at=base + dt.timedelta(milliseconds=10 * i)
                )
                for i in range(300)
            ]
        everyone = (a, b, c)
        await eventually(
            lambda: sum(s.dispatcher.stats.released for s in everyone) >= 300,
            what="all 300 jobs released",
        )
        released = [s.dispatcher.stats.released for s in everyone]
        late = [x for s in everyone for x in s.dispatcher.stats.lateness]
    landed = job_ids_on(live, topology.job_topic("normal"), 300)
    assert sum(released) == 300
    assert landed == collections.Counter(ids)  # every job once, no other
    assert min(late) >= 0  # never before its time
    assert (
        await count(db, live, "SELECT count(*) FROM scheduled_jobs WHERE released_at IS NULL") == 0
    )
    assert await count(db, live, "SELECT count(*) FROM jobs WHERE state = 'queued'") == 300


async def test_cancel_before_release_skips_the_job(live: Settings, db: asyncpg.Connection) -> None:
    topology = Topology.from_settings(live)
    async with scheduler(live) as service, AsyncProducer(live) as producer, JobStore(live) as store:
        cancelled = await producer.submit("later.job", {"n": 1}, delay=60)
        kept = await producer.submit("later.job", {"n": 2}, delay=dt.timedelta(seconds=3))

        async def stored() -> bool:
            return (await store.status(cancelled)).state == "scheduled"

        await eventually(stored, what="the job to cancel recorded as scheduled")
        assert await store.cancel(cancelled, reason="not needed") == "cancelled"
        await eventually(
            lambda: service.dispatcher.stats.released == 1, what="the kept job released"
        )
        status = await store.status(cancelled)
    assert job_ids_on(live, topology.job_topic("normal"), 1) == collections.Counter([kept])
    assert status.state == "cancelled"
    assert [t.state for t in status.history] == ["scheduled", "cancelled"]
    assert await count(db, live, "SELECT count(*) FROM scheduled_jobs WHERE skipped") == 1


async def test_jobs_that_fall_due_while_no_dispatcher_runs_are_released_once_on_restart(
    live: Settings, db: asyncpg.Connection
) -> None:
    topology = Topology.from_settings(live)
    async with scheduler(live) as first, AsyncProducer(live) as producer:
        due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=600)
        ids = [await producer.submit("later.job", {"i": i}, run_at=due) for i in range(20)]
        await eventually(lambda: first.intake.stats.stored >= 20, what="20 jobs stored")
    assert first.dispatcher.stats.released == 0
    # Nothing runs now; the jobs fall due (moved forward rather than waited for).
    await db.execute(f'SET search_path TO "{live.database_schema}"')
    await db.execute("UPDATE scheduled_jobs SET due_at = now() - interval '5 seconds'")
    async with scheduler(live) as second:
        await eventually(lambda: second.dispatcher.stats.released == 20, what="20 released")
        late = second.dispatcher.stats.lateness
    assert job_ids_on(live, topology.job_topic("normal"), 20) == collections.Counter(ids)
    assert min(late) >= 5


async def test_an_unacknowledged_release_is_repeated_with_the_same_job_id(
    live: Settings, db: asyncpg.Connection
) -> None:
    """A dispatcher that published but died before marking the row (simulated: the row is
    set back to pending) publishes it again under the same job id, which workers dedupe."""
    topology = Topology.from_settings(live)
    async with scheduler(live) as service, AsyncProducer(live) as producer:
        job_id = await producer.submit("later.job", {}, delay=1)
        await eventually(lambda: service.dispatcher.stats.released == 1, what="released")
        await db.execute(f'SET search_path TO "{live.database_schema}"')
        await db.execute("UPDATE scheduled_jobs SET released_at = NULL")
        await db.execute("NOTIFY conveyor_scheduled_" + live.database_schema)
        await eventually(lambda: service.dispatcher.stats.released == 2, what="re-released")
    records = read_topic(live.kafka_bootstrap, topology.job_topic("normal"), 2)
    with Serde(live) as serde:
        assert [str(serde.decode(JOB_ENVELOPE, r.topic, r.value)["job_id"]) for r in records] == [
            job_id,
            job_id,
        ]
    assert uuid.UUID(job_id)


async def test_a_job_cancelled_before_the_scheduler_stored_it_is_never_released(
    live: Settings,
) -> None:
    """The cancel came first (its id known from a dedupe key): the scheduler still stores the
    delayed job, and the dispatcher skips it when due instead of releasing it."""
    from conveyor.producer.jobs import dedupe_job_id

    topology = Topology.from_settings(live)
    job_id = dedupe_job_id("later.job", "invoice-7")
    async with JobStore(live) as store:
        assert await store.cancel(job_id, reason="changed my mind") == "cancelled"
        async with scheduler(live) as service, AsyncProducer(live) as producer:
            assert await producer.submit("later.job", {}, dedupe_key="invoice-7", delay=1) == job_id
            await eventually(lambda: service.dispatcher.stats.skipped == 1, what="the skip")
            released = service.dispatcher.stats.released
        status = await store.status(job_id)
    assert released == 0
    assert job_ids_on(live, topology.job_topic("normal"), 0) == collections.Counter()
    assert [t.state for t in status.history] == ["cancelled"]


async def test_a_message_that_cannot_be_scheduled_is_dead_lettered_by_the_worker_not_skipped(
    live: Settings, db: asyncpg.Connection[Any]
) -> None:
    """Garbage bytes and an envelope whose type holds a NUL (Postgres refuses it) on the
    scheduled topic are passed on to a job topic, where the worker dead-letters each with
    its reason; a good delayed job beside them still runs."""
    from tests.faults import raw

    # The garbage names schema id 7, which the registry lacks: the worker waits
    # unknown_schema_wait for it (a lagging registry follower) before dead-lettering.
    options = dataclasses.replace(TEST_OPTIONS, unknown_schema_wait=2.0)
    worker = Worker(live, priorities=["normal"], concurrency=4, options=options)
    ran: list[str] = []

    @worker.handler("sched.ok")
    async def ok(ctx: JobContext, payload: Any) -> None:
        ran.append(ctx.job_id)

    topic = Topology.from_settings(live).scheduled_topic
    hostile = raw.envelope("bad\x00type", b"{}")
    with Serde(live) as serde:
        hostile_value = serde.encode(JOB_ENVELOPE, topic, hostile)
    await asyncio.to_thread(
        raw.produce,
        live,
        topic,
        [
            (b"k", b"\x00\x00\x00\x00\x07garbage", []),
            (hostile["job_id"].encode(), hostile_value, raw.job_headers(hostile)),
        ],
    )
    async with running(worker), AsyncProducer(live) as producer:
        good = await producer.submit("sched.ok", {}, delay=0.5, wait=True)
        await eventually(lambda: ran == [good], timeout=90, what="the good delayed job to run")

        async def dead() -> dict[str | None, str]:
            rows = await db.fetch(
                f'SELECT original_job_id::text AS id, error_reason FROM "{live.database_schema}"'
                ".job_dlq"
            )
            return {r["id"]: r["error_reason"] for r in rows}

        await eventually(lambda: _has_two(dead), timeout=90, what="both in the DLQ")
    assert await dead() == {None: "Deserialization", hostile["job_id"]: "Validation"}


async def _has_two(dead: Any) -> bool:
    return len(await dead()) == 2
