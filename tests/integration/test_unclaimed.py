"""Jobs run before they are claimed: the one-statement completion and its fencing."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from conveyor import db
from conveyor.consumer.status import StatusStore
from conveyor.consumer.unclaimed import Known, UnclaimedStore
from conveyor.settings import Settings
from tests.integration.test_status_store import ERROR, claimed, history, job_row, make_job


@pytest.fixture
async def pool(migrated: Settings) -> AsyncIterator[asyncpg.Pool[Any]]:
    opened = await db.create_pool(migrated, max_size=4, custom_plans=True)
    yield opened
    await opened.close()


@pytest.fixture
def store(pool: asyncpg.Pool[Any]) -> UnclaimedStore:
    return UnclaimedStore(pool)


async def test_a_new_job_is_written_complete_with_its_three_transitions_in_one_statement(
    pool: asyncpg.Pool[Any], store: UnclaimedStore
) -> None:
    job = make_job()
    assert await store.known(job.job_id) is None

    assert await store.complete(job, '{"ok": true}', 0.25) is None

    row = await job_row(pool, job.job_id)
    assert (row["state"], row["attempts"], row["lease_owner"], row["lease_epoch"]) == (
        "complete",
        1,
        None,
        0,
    )
    assert row["result"] == '{"ok": true}'
    assert row["finished_at"] - row["started_at"] >= dt.timedelta(seconds=0.2)
    assert [(s, a) for s, a, _ in await history(pool, job.job_id)] == [
        ("queued", 1),
        ("processing", 1),
        ("complete", 1),
    ]


async def test_a_queued_row_written_ahead_gets_processing_and_complete_only(
    pool: asyncpg.Pool[Any], store: UnclaimedStore
) -> None:
    """A ledger inserts queued rows (no lease) before any worker reads the job."""
    job = make_job()
    await pool.execute(
        "WITH r AS (INSERT INTO jobs (job_id, state) VALUES ($1, 'queued') RETURNING job_id) "
        "INSERT INTO job_transitions (job_id, state, at, attempt) "
        "SELECT job_id, 'queued', now(), 0 FROM r",
        job.job_id,
    )
    assert await store.known(job.job_id) == Known("queued", 0, leased=False, cancel_requested=False)

    assert await store.complete(job, "null", 0.0) is None

    assert [s for s, _, _ in await history(pool, job.job_id)] == [
        "queued",
        "processing",
        "complete",
    ]


@pytest.mark.parametrize("final_state", ["complete", "failed", "cancelled"])
async def test_a_job_that_ended_meanwhile_is_left_as_it_is(
    pool: asyncpg.Pool[Any], store: UnclaimedStore, final_state: str
) -> None:
    job = make_job()
    await pool.execute(
        "INSERT INTO jobs (job_id, state, attempts, result) VALUES ($1, $2, 1, '\"theirs\"')",
        job.job_id,
        final_state,
    )

    assert await store.complete(job, '"mine"', 0.0) == final_state

    row = await job_row(pool, job.job_id)
    assert (row["state"], row["result"]) == (final_state, '"theirs"')


async def test_a_job_another_worker_holds_is_not_written(
    pool: asyncpg.Pool[Any], store: UnclaimedStore
) -> None:
    """The fence without a lease: a claim by the partition's new owner wins."""
    job = make_job()
    lease = await claimed(StatusStore(pool, worker_id="new-owner"), job)

    assert await store.complete(job, '"zombie"', 0.0) == "processing"

    row = await job_row(pool, job.job_id)
    assert (row["state"], row["lease_owner"], row["lease_epoch"]) == (
        "processing",
        "new-owner",
        lease.epoch,
    )


async def test_an_older_attempt_is_not_written(
    pool: asyncpg.Pool[Any], store: UnclaimedStore
) -> None:
    job = make_job()
    status = StatusStore(pool, worker_id="w")
    await status.retry(await claimed(status, job), ERROR)
    await status.retry(await claimed(status, make_job(job.job_id, attempt=2)), ERROR)

    assert await store.complete(job, "null", 0.0) == "queued"
    assert (await job_row(pool, job.job_id))["attempts"] == 2


async def test_concurrent_completions_share_statements_and_keep_their_outcomes(
    pool: asyncpg.Pool[Any], store: UnclaimedStore
) -> None:
    jobs = [make_job() for _ in range(50)]
    bad = make_job()  # jsonb refuses \u0000: only this one fails

    results = await asyncio.gather(
        *(store.complete(job, '"ok"', 0.0) for job in jobs),
        store.complete(bad, '"\\u0000"', 0.0),
        return_exceptions=True,
    )

    assert results[:-1] == [None] * len(jobs)
    assert isinstance(results[-1], asyncpg.PostgresError)
    states = await pool.fetch(
        "SELECT state FROM jobs WHERE job_id = ANY($1::uuid[])", [j.job_id for j in jobs]
    )
    assert [r["state"] for r in states] == ["complete"] * len(jobs)
