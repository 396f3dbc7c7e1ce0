"""The ledger against the real broker, registry and Postgres: a submitted job is queued
(with its position) while no worker runs, re-reads add nothing, a race with workers
leaves one history per job, and records that are not jobs never stop it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka import Producer as KafkaProducer

from conveyor import JobContext, JobStore, Producer, Settings, Worker
from conveyor import db as conveyor_db
from conveyor.ledger import Ledger
from conveyor.schemas.contracts import JOB_ENVELOPE
from conveyor.schemas.serde import Serde
from conveyor.topology.model import Topology
from tests.worker_helpers import TEST_OPTIONS, eventually, prepare, running

WORKER_OPTIONS = dataclasses.replace(TEST_OPTIONS, run_relay=False, run_dlq_sink=False)


@pytest.fixture
async def live(settings: Settings, schema_registry_url: str) -> Settings:
    return await prepare(settings.replace(partition_unit=1), schema_registry_url)


@contextlib.asynccontextmanager
async def ledger_running(settings: Settings, group_id: str | None = None) -> AsyncIterator[Ledger]:
    """Runs a ledger (in its own group when ``group_id`` is given) for the block."""
    pool = await conveyor_db.create_pool(settings, max_size=2)
    serde = Serde(settings)
    ledger = Ledger(
        settings,
        pool=pool,
        serde=serde,
        group_id=group_id,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        commit_interval=0.2,
    )
    stop = asyncio.Event()
    try:
        await ledger.start()
        task = asyncio.create_task(ledger.run(stop))
        try:
            yield ledger
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)
    finally:
        await pool.close()
        serde.close()


def commit_worker_offset(settings: Settings, partition: int, offset: int) -> None:
    """Commits ``offset`` for the normal workers' group, as if workers had finished below it."""
    topology = Topology.from_settings(settings)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": topology.consumer_group("normal"),
            "log_level": 0,
        }
    )
    try:
        consumer.commit(
            offsets=[TopicPartition(topology.job_topic("normal"), partition, offset)],
            asynchronous=False,
        )
    finally:
        consumer.close()


async def histories(conn: asyncpg.Connection, job_ids: list[str]) -> dict[str, list[str]]:
    rows = await conn.fetch(
        "SELECT job_id::text, state FROM job_transitions WHERE job_id = ANY($1::uuid[]) "
        "ORDER BY id",
        job_ids,
    )
    found: dict[str, list[str]] = {j: [] for j in job_ids}
    for row in rows:
        found[row["job_id"]].append(row["state"])
    return found


async def counts(conn: asyncpg.Connection) -> tuple[int, int]:
    jobs = await conn.fetchval("SELECT count(*) FROM jobs")
    transitions = await conn.fetchval("SELECT count(*) FROM job_transitions")
    return int(jobs), int(transitions)


async def schema_conn(settings: Settings) -> asyncpg.Connection:
    return await conveyor_db.connect(settings)


def ok_worker(settings: Settings, **options: Any) -> Worker:
    worker = Worker(
        settings,
        priorities=["normal"],
        concurrency=8,
        options=dataclasses.replace(WORKER_OPTIONS, **options),
    )

    @worker.handler("ledger.ok")
    async def ok(ctx: JobContext, payload: Any) -> dict[str, int]:
        return {"n": payload["n"]}

    return worker


async def test_a_job_submitted_while_no_worker_runs_is_queued_with_its_position_then_runs_once(
    live: Settings,
) -> None:
    with Producer(live) as producer:
        ids = [producer.submit("ledger.ok", {"n": n}, key="one-key", wait=True) for n in range(3)]
    async with ledger_running(live), JobStore(live) as store:

        async def all_queued() -> bool:
            return [(await store.status(j)).state for j in ids] == ["queued"] * 3

        await eventually(all_queued, what="the three jobs to be queued")
        statuses = [await store.status(j) for j in ids]
        # One key, one partition: no worker group committed, so positions count from 0.
        assert [s.position for s in statuses] == [0, 1, 2]
        assert [s.type for s in statuses] == ["ledger.ok"] * 3
        assert [s.key for s in statuses] == ["one-key"] * 3
        assert [s.priority for s in statuses] == ["normal"] * 3
        assert [[t.state for t in s.history] for s in statuses] == [["queued"]] * 3
        assert statuses[0].to_json()["position"] == 0

        conn = await schema_conn(live)
        try:
            partition = await conn.fetchval(
                "SELECT source_partition FROM jobs WHERE job_id = $1", ids[0]
            )
        finally:
            await conn.close()
        # Workers finished the first: the others move up, and the first has no place.
        await asyncio.to_thread(commit_worker_offset, live, partition, 1)
        assert [(await store.status(j)).position for j in ids] == [None, 0, 1]
        await asyncio.to_thread(commit_worker_offset, live, partition, 0)
        assert (await store.status(ids[0], position=False)).position is None

    worker = ok_worker(live, run_ledger=False)
    async with running(worker), JobStore(live) as store:

        async def all_complete() -> bool:
            return [(await store.status(j)).state for j in ids] == ["complete"] * 3

        await eventually(all_complete, what="the worker to run the three jobs")
        done = [await store.status(j) for j in ids]
    assert [[t.state for t in s.history] for s in done] == [
        ["queued", "processing", "complete"]
    ] * 3
    assert [s.result for s in done] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [s.position for s in done] == [None] * 3


async def test_reading_the_same_records_again_adds_no_rows_and_leaves_later_states(
    live: Settings,
) -> None:
    with Producer(live) as producer:
        ids = [producer.submit("ledger.ok", {"n": n}, key="k", wait=True) for n in range(20)]
    async with ledger_running(live) as first:
        await eventually(lambda: first.stats.read >= 20, what="the ledger to read 20 jobs")
    assert (first.stats.inserted, first.stats.existing) == (20, 0)

    conn = await schema_conn(live)
    try:
        # A worker got to some jobs first: those rows are past queued.
        await conn.execute(
            "UPDATE jobs SET state = 'complete', attempts = 1, finished_at = now() "
            "WHERE job_id = ANY($1::uuid[])",
            ids[:5],
        )
        before_rows = await conn.fetch("SELECT * FROM jobs ORDER BY job_id")
        before = await counts(conn)

        # A crash re-read: the same group from the start, then a second ledger group.
        group = Topology.from_settings(live).prefix + ".ledger"
        topic = Topology.from_settings(live).job_topic("normal")
        for partition in range(2):
            reset = Consumer(
                {"bootstrap.servers": live.kafka_bootstrap, "group.id": group, "log_level": 0}
            )
            reset.commit(offsets=[TopicPartition(topic, partition, 0)], asynchronous=False)
            reset.close()
        async with ledger_running(live) as again:
            await eventually(lambda: again.stats.read >= 20, what="the re-read of 20 jobs")
        async with ledger_running(live, group_id="second-ledger") as second:
            await eventually(lambda: second.stats.read >= 20, what="a second group's 20 jobs")
        assert (again.stats.inserted, again.stats.existing) == (0, 20)
        assert (second.stats.inserted, second.stats.existing) == (0, 20)
        assert await counts(conn) == before
        assert await conn.fetch("SELECT * FROM jobs ORDER BY job_id") == before_rows
        assert set(map(tuple, (await histories(conn, ids)).values())) == {("queued",)}
    finally:
        await conn.close()


async def test_a_new_ledger_group_starts_at_the_workers_committed_offset(live: Settings) -> None:
    with Producer(live) as producer:
        ids = [producer.submit("ledger.ok", {"n": n}, key="k", wait=True) for n in range(12)]
    conn = await schema_conn(live)
    try:
        async with ledger_running(live, group_id="probe-ledger") as probe:
            await eventually(lambda: probe.stats.read >= 12, what="the probe ledger")
        partition = await conn.fetchval(
            "SELECT source_partition FROM jobs WHERE job_id = $1", ids[0]
        )
        await conn.execute("TRUNCATE jobs, job_transitions")
        # Workers finished the first 8 (and the purge may have removed their rows).
        await asyncio.to_thread(commit_worker_offset, live, partition, 8)
        async with ledger_running(live) as ledger:
            await eventually(lambda: ledger.stats.read >= 4, what="the ledger to read 4 jobs")
        assert ledger.stats.read == 4
        stored = await conn.fetch("SELECT job_id::text FROM jobs")
        assert sorted(r["job_id"] for r in stored) == sorted(ids[8:])
    finally:
        await conn.close()


async def test_ledger_and_workers_racing_leave_one_history_per_job(live: Settings) -> None:
    with Producer(live) as producer:
        ids = producer.submit("ledger.ok", [{"n": n} for n in range(200)], wait=True)
    worker = ok_worker(live)  # with its own ledger, in <prefix>.ledger
    async with ledger_running(live, group_id="racing-ledger") as racing, running(worker):
        conn = await schema_conn(live)
        try:

            async def all_complete() -> bool:
                done = await conn.fetchval(
                    "SELECT count(*) FROM jobs WHERE state = 'complete' AND job_id = ANY($1)", ids
                )
                return int(done) == len(ids)

            await eventually(all_complete, what="200 jobs complete")
            await eventually(lambda: racing.stats.read >= 200, what="the racing ledger")
            found = await histories(conn, ids)
        finally:
            await conn.close()
    assert {tuple(h) for h in found.values()} == {("queued", "processing", "complete")}


async def test_records_that_are_not_jobs_do_not_stop_the_ledger(live: Settings) -> None:
    topic = Topology.from_settings(live).job_topic("normal")
    with Serde(live) as serde:
        bad_batch = serde.encode(
            JOB_ENVELOPE,
            topic,
            {
                "job_id": "2f1f7f8e-4c59-4c4e-9d0f-2b8a9a0c1d11",
                "type": "ledger.ok",
                "priority": "normal",
                "payload": b"{}",
                "batch_id": "not-a-uuid",
                "submitted_at": 0,
            },
        )
    raw = KafkaProducer({"bootstrap.servers": live.kafka_bootstrap, "log_level": 0})
    bad = (b"\x00\x00\x00\x00", b"garbage", None, b"\x00\x00\x00\x00\x01\xff\xff", bad_batch)
    for partition in (0, 1):  # ahead of the job, whichever partition its key picks
        for value in bad:
            raw.produce(topic, value=value, key=b"k", partition=partition)
    assert raw.flush(15) == 0
    with Producer(live) as producer:
        job_id = producer.submit("ledger.ok", {"n": 1}, key="k", wait=True)
    async with ledger_running(live) as ledger, JobStore(live) as store:

        async def queued() -> bool:
            return (await store.status(job_id)).state == "queued"

        await eventually(queued, what="the job after the bad records to be queued")
        assert ledger.stats.undecodable == 2 * len(bad)
        assert (await store.status("2f1f7f8e-4c59-4c4e-9d0f-2b8a9a0c1d11")).state == "unknown"


async def test_a_row_postgres_refuses_is_skipped_and_the_rest_of_its_fetch_stored(
    live: Settings,
) -> None:
    """Data the decoder's checks let through but Postgres refuses (here: a constraint the
    test adds) costs that one job its queued row, never the jobs after it."""
    conn = await schema_conn(live)
    try:
        await conn.execute(
            "ALTER TABLE jobs ADD CONSTRAINT test_refuses CHECK (type <> 'ledger.refused')"
        )
    finally:
        await conn.close()
    with Producer(live) as producer:
        refused = producer.submit("ledger.refused", {}, key="k", wait=True)
        kept = producer.submit("ledger.ok", {"n": 1}, key="k", wait=True)
    async with ledger_running(live) as ledger, JobStore(live) as store:

        async def queued() -> bool:
            return (await store.status(kept)).state == "queued"

        await eventually(queued, what="the job after the refused one to be queued")
        assert ledger.stats.refused == 1
        assert (await store.status(refused)).state == "unknown"
