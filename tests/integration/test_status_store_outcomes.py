"""The worker's StatusStore against a real Postgres: outcomes, heartbeats and progress
under the lease, and the notifications their changes send.

Each test migrates its own random schema (the ``migrated`` fixture) and builds job
messages by hand (``tests.status_helpers``), as the worker would after decoding them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from typing import Any

import asyncpg
import pytest

from conveyor import db, migrations
from conveyor.consumer.claims import Lease
from conveyor.consumer.status import LeaseLostError, StatusStore, progress_channel
from conveyor.settings import Settings
from tests.status_helpers import DEADLINE, ERROR, SUBMITTED, claimed, history, job_row, make_job


async def test_complete_stores_the_json_result_and_commits_with_the_handlers_write(
    pool: asyncpg.Pool[Any], worker_a: StatusStore
) -> None:
    await pool.execute("CREATE TABLE handler_writes (note text)")
    job = make_job()
    lease = await claimed(worker_a, job)
    result = {"sent": True, "ids": [1, 2], "note": "ünïcode"}

    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO handler_writes VALUES ('welcome mail')")
        await worker_a.complete(lease, result, conn)

    row = await job_row(pool, job.job_id)
    assert (row["state"], json.loads(row["result"])) == ("complete", result)
    assert row["finished_at"] is not None
    assert await pool.fetchval("SELECT count(*) FROM handler_writes") == 1


async def test_complete_with_a_result_that_is_not_json_raises_type_error_and_writes_nothing(
    pool: asyncpg.Pool[Any], worker_a: StatusStore
) -> None:
    job = make_job()
    lease = await claimed(worker_a, job)

    async with pool.acquire() as conn:
        with pytest.raises(TypeError, match="JSON-serialisable"):
            await worker_a.complete(lease, {"when": object()}, conn)
        with pytest.raises(TypeError, match="JSON-serialisable"):
            await worker_a.complete(lease, float("nan"), conn)

    assert (await job_row(pool, job.job_id))["state"] == "processing"


async def test_fail_records_the_last_error_and_a_failed_transition(
    pool: asyncpg.Pool[Any], worker_a: StatusStore
) -> None:
    job = make_job()
    lease = await claimed(worker_a, job)

    await worker_a.fail(lease, ERROR)

    stored = {**ERROR, "at": SUBMITTED.isoformat()}
    row = await job_row(pool, job.job_id)
    assert (row["state"], json.loads(row["last_error"])) == ("failed", stored)
    assert row["finished_at"] is not None
    assert (await history(pool, job.job_id))[-1] == ("failed", 1, stored)


async def test_retry_returns_the_job_to_queued_with_the_error_then_the_next_attempt_claims_it(
    pool: asyncpg.Pool[Any], worker_a: StatusStore
) -> None:
    job = make_job()
    first = await claimed(worker_a, job)

    await worker_a.retry(first, ERROR)

    row = await job_row(pool, job.job_id)
    assert (row["state"], row["attempts"], row["lease_owner"]) == ("queued", 1, None)
    assert row["finished_at"] is None
    second = await claimed(worker_a, make_job(job.job_id, attempt=2))
    assert (second.epoch, second.attempt) == (2, 2)
    stored = {**ERROR, "at": SUBMITTED.isoformat()}
    assert await history(pool, job.job_id) == [
        ("queued", 1, None),
        ("processing", 1, None),
        ("queued", 1, stored),
        ("processing", 2, None),
    ]
    assert (await job_row(pool, job.job_id))["attempts"] == 2


async def test_cancelled_records_the_reason_in_the_transition_and_is_fenced(
    pool: asyncpg.Pool[Any], worker_a: StatusStore, worker_b: StatusStore
) -> None:
    job = make_job()
    old = await claimed(worker_a, job)
    new = await claimed(worker_b, job)

    with pytest.raises(LeaseLostError):
        await worker_a.cancelled(old, "too late")
    await worker_b.cancelled(new, "operator asked")

    assert (await job_row(pool, job.job_id))["state"] == "cancelled"
    assert (await history(pool, job.job_id))[-1] == (
        "cancelled",
        1,
        {"type": "Cancelled", "message": "operator asked"},
    )


async def test_fail_and_retry_after_a_takeover_raise_lease_lost_and_write_nothing(
    pool: asyncpg.Pool[Any], worker_a: StatusStore, worker_b: StatusStore
) -> None:
    job = make_job()
    old = await claimed(worker_a, job)
    await claimed(worker_b, job)
    before = await history(pool, job.job_id)

    with pytest.raises(LeaseLostError):
        await worker_a.fail(old, ERROR)
    with pytest.raises(LeaseLostError):
        await worker_a.retry(old, ERROR)

    assert await history(pool, job.job_id) == before
    row = await job_row(pool, job.job_id)
    assert (row["state"], row["last_error"], row["lease_owner"]) == (
        "processing",
        None,
        "worker-b",
    )


async def test_heartbeat_extends_the_lease_and_returns_false_after_a_takeover(
    pool: asyncpg.Pool[Any], worker_b: StatusStore
) -> None:
    short = StatusStore(pool, worker_id="worker-a", lease_seconds=1.0)
    job = make_job()
    lease = await claimed(short, job)
    expires = (await job_row(pool, job.job_id))["lease_expires_at"]
    long = StatusStore(pool, worker_id="worker-a", lease_seconds=600.0)

    assert await long.heartbeat(lease) is True

    extended = (await job_row(pool, job.job_id))["lease_expires_at"]
    assert extended - expires > dt.timedelta(seconds=500)
    await claimed(worker_b, job)
    assert await long.heartbeat(lease) is False


async def test_progress_updates_the_row_and_returns_false_after_a_takeover(
    pool: asyncpg.Pool[Any], worker_a: StatusStore, worker_b: StatusStore
) -> None:
    job = make_job()
    lease = await claimed(worker_a, job)

    assert await worker_a.progress(lease, 40.0, "copying") is True

    row = await job_row(pool, job.job_id)
    assert (row["progress_pct"], row["progress_message"]) == (40.0, "copying")
    assert row["progress_at"] is not None
    new = await claimed(worker_b, job)
    assert await worker_a.progress(lease, 90.0, "stale") is False
    assert await worker_b.progress(new, 10.0, None) is True
    row = await job_row(pool, job.job_id)
    assert (row["progress_pct"], row["progress_message"]) == (10.0, None)


async def test_progress_outside_0_to_100_is_refused(worker_a: StatusStore) -> None:
    lease = await claimed(worker_a, make_job())

    with pytest.raises(ValueError, match="between 0 and 100"):
        await worker_a.progress(lease, 101.0, None)


async def test_is_cancel_requested_reflects_cancel_requested_at(
    pool: asyncpg.Pool[Any], worker_a: StatusStore
) -> None:
    job = make_job()
    await claimed(worker_a, job)
    before = await worker_a.is_cancel_requested(job.job_id)

    await pool.execute("UPDATE jobs SET cancel_requested_at = now() WHERE job_id = $1", job.job_id)

    assert (before, await worker_a.is_cancel_requested(job.job_id)) == (False, True)
    assert await worker_a.is_cancel_requested(str(uuid.uuid4())) is False


async def test_state_and_progress_changes_notify_the_schema_channel_after_commit(
    pool: asyncpg.Pool[Any], migrated: Settings, worker_a: StatusStore
) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await db.connect(migrated)
    await listener.add_listener(
        progress_channel(migrated.database_schema), lambda *args: heard.put_nowait(args[3])
    )
    try:
        job = make_job()
        lease = await claimed(worker_a, job)
        async with asyncio.timeout(DEADLINE):
            assert await heard.get() == job.job_id
        await worker_a.heartbeat(lease)
        await worker_a.progress(lease, 50.0, "half")
        async with asyncio.timeout(DEADLINE):
            assert await heard.get() == job.job_id
        # A heartbeat changes neither state nor progress: it woke nobody.
        assert heard.empty()
    finally:
        await listener.close()


async def test_a_batch_of_changes_is_announced_in_a_few_notifications_naming_every_job(
    pool: asyncpg.Pool[Any], migrated: Settings, worker_a: StatusStore
) -> None:
    """One notification per 200 changed jobs of a statement, not one per row."""
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await db.connect(migrated)
    await listener.add_listener(
        progress_channel(migrated.database_schema), lambda *args: heard.put_nowait(args[3])
    )
    jobs = [make_job() for _ in range(450)]
    try:
        await pool.execute(
            "INSERT INTO jobs (job_id, state) SELECT unnest($1::uuid[]), 'queued'",
            [job.job_id for job in jobs],
        )
        await pool.execute(  # changes no watched column: nobody is woken
            "UPDATE jobs SET updated_at = now() WHERE job_id = ANY($1::uuid[])",
            [job.job_id for job in jobs],
        )
        await pool.execute(
            "UPDATE jobs SET state = 'cancelled' WHERE job_id = ANY($1::uuid[])",
            [job.job_id for job in jobs[:10]],
        )
        payloads = [await asyncio.wait_for(heard.get(), DEADLINE) for _ in range(4)]
    finally:
        await listener.close()

    named = [payload.split(",") for payload in payloads]
    assert sorted(len(ids) for ids in named[:3]) == [50, 200, 200]
    assert {i for ids in named[:3] for i in ids} == {job.job_id for job in jobs}
    assert sorted(named[3]) == sorted(job.job_id for job in jobs[:10])
    assert heard.empty()


async def test_channel_of_a_schema_too_long_for_a_channel_name_matches_the_trigger(
    database_url: str,
) -> None:
    """Schema names up to 63 bytes are valid; channel names stop at 63, so they are hashed."""
    schema = f"cv_{uuid.uuid4().hex}{'x' * 28}"
    long = Settings(database_url=database_url, database_schema=schema)
    await migrations.migrate(long)
    pool = await db.create_pool(long, max_size=2)
    listener = await db.connect(long)
    heard: asyncio.Queue[str] = asyncio.Queue()
    try:
        channel = progress_channel(schema)
        await listener.add_listener(channel, lambda *args: heard.put_nowait(args[3]))
        job = make_job()
        await claimed(StatusStore(pool, worker_id="w"), job)
        async with asyncio.timeout(DEADLINE):
            assert await heard.get() == job.job_id
        assert len(channel) <= 63
    finally:
        await listener.close()
        await pool.close()
        await drop_schema(database_url, schema)


async def drop_schema(database_url: str, schema: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {db.quote_ident(schema)} CASCADE")
    finally:
        await conn.close()


async def test_a_result_postgres_refuses_fails_only_its_own_completion(
    worker_a: StatusStore,
) -> None:
    jobs = [make_job() for _ in range(6)]
    leases = [
        r for r in await asyncio.gather(*(worker_a.claim(j) for j in jobs)) if isinstance(r, Lease)
    ]
    assert len(leases) == 6
    # jsonb refuses \u0000; sent in the same batch as five good results.
    results = ["fine"] * 5 + ["nul \x00 byte"]
    outcomes = await asyncio.gather(
        *(worker_a.complete_alone(lease, r) for lease, r in zip(leases, results, strict=True)),
        return_exceptions=True,
    )
    assert outcomes[:5] == [None] * 5
    assert isinstance(outcomes[5], asyncpg.PostgresError)
