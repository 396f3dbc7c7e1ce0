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
from conveyor.consumer.unclaimed import PREFETCH_FRESH, Known, UnclaimedStore
from conveyor.errors import DatabaseUnavailableError
from conveyor.settings import Settings
from tests.status_helpers import ERROR, claimed, history, job_row, make_job


@pytest.fixture
async def pool(migrated: Settings) -> AsyncIterator[asyncpg.Pool[Any]]:
    opened = await db.create_pool(migrated, max_size=4, custom_plans=True)
    yield opened
    await opened.close()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.fixture
def store(pool: asyncpg.Pool[Any]) -> UnclaimedStore:
    return UnclaimedStore(pool)


async def test_a_new_job_is_written_complete_with_its_three_transitions_in_one_statement(
    pool: asyncpg.Pool[Any], store: UnclaimedStore
) -> None:
    job = make_job()
    assert await store.known(job.job_id) is None

    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=0.25)
    assert await store.complete(job, '{"ok": true}', started) is None

    row = await job_row(pool, job.job_id)
    assert (row["state"], row["attempts"], row["lease_owner"], row["lease_epoch"]) == (
        "complete",
        1,
        None,
        0,
    )
    assert row["result"] == '{"ok": true}'
    # started_at is when the handler started, not the write's time minus its run.
    assert row["started_at"] == started
    assert row["finished_at"] - row["started_at"] >= dt.timedelta(seconds=0.25)
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

    assert await store.complete(job, "null", _now()) is None

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

    assert await store.complete(job, '"mine"', _now()) == final_state

    row = await job_row(pool, job.job_id)
    assert (row["state"], row["result"]) == (final_state, '"theirs"')


async def test_a_job_another_worker_holds_is_not_written(
    pool: asyncpg.Pool[Any], store: UnclaimedStore
) -> None:
    """The fence without a lease: a claim by the partition's new owner wins."""
    job = make_job()
    lease = await claimed(StatusStore(pool, worker_id="new-owner"), job)

    assert await store.complete(job, '"zombie"', _now()) == "processing"

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

    assert await store.complete(job, "null", _now()) == "queued"
    assert (await job_row(pool, job.job_id))["attempts"] == 2


async def test_concurrent_completions_share_statements_and_keep_their_outcomes(
    pool: asyncpg.Pool[Any], store: UnclaimedStore
) -> None:
    jobs = [make_job() for _ in range(50)]
    bad = make_job()  # jsonb refuses \u0000: only this one fails

    results = await asyncio.gather(
        *(store.complete(job, '"ok"', _now()) for job in jobs),
        store.complete(bad, '"\\u0000"', _now()),
        return_exceptions=True,
    )

    assert results[:-1] == [None] * len(jobs)
    assert isinstance(results[-1], asyncpg.PostgresError)
    states = await pool.fetch(
        "SELECT state FROM jobs WHERE job_id = ANY($1::uuid[])", [j.job_id for j in jobs]
    )
    assert [r["state"] for r in states] == ["complete"] * len(jobs)


async def _queue(pool: asyncpg.Pool[Any], job_id: str) -> None:
    await pool.execute("INSERT INTO jobs (job_id, state) VALUES ($1, 'queued')", job_id)


async def test_a_fetched_jobs_row_is_read_ahead_in_one_statement_and_known_answers_from_it(
    pool: asyncpg.Pool[Any], store: UnclaimedStore
) -> None:
    first, second = make_job(), make_job()
    await _queue(pool, first.job_id)
    store.prefetch([first.job_id, second.job_id])
    queued = Known("queued", 0, leased=False, cancel_requested=False)
    assert await store.known(first.job_id) == queued
    # The second job got its row after the read ahead: known answers from that read...
    await _queue(pool, second.job_id)
    assert await store.known(second.job_id) is None
    # ...once; the next call reads the row.
    assert await store.known(second.job_id) == queued


async def test_a_row_read_ahead_longer_ago_than_prefetch_fresh_is_read_again(
    pool: asyncpg.Pool[Any],
) -> None:
    now = [100.0]
    store = UnclaimedStore(pool, clock=lambda: now[0])
    job = make_job()
    store.prefetch([job.job_id])
    assert await store._ahead[job.job_id][1] == {}  # read ahead: no row yet
    await _queue(pool, job.job_id)
    now[0] += PREFETCH_FRESH + 0.1
    assert await store.known(job.job_id) == Known("queued", 0, leased=False, cancel_requested=False)


async def test_a_failed_read_ahead_is_read_again_when_the_job_starts(
    pool: asyncpg.Pool[Any], migrated: Settings
) -> None:
    closed = await db.create_pool(migrated, min_size=1, max_size=1)
    await closed.close()
    store = UnclaimedStore(closed)
    job = make_job()
    store.prefetch([job.job_id])
    with pytest.raises(DatabaseUnavailableError):
        await store._ahead[job.job_id][1]
    store._pool = pool  # Postgres is back
    await _queue(pool, job.job_id)
    assert await store.known(job.job_id) == Known("queued", 0, leased=False, cancel_requested=False)


async def test_a_duplicate_fetched_while_its_job_runs_here_is_not_read_ahead(
    store: UnclaimedStore,
) -> None:
    """A read ahead sent while the first delivery runs would show the row before that
    delivery's outcome, and the duplicate would run the handler a second time."""
    job = make_job()
    store.delivering(job.job_id)
    assert await store.known(job.job_id) is None
    store.prefetch([job.job_id])  # the duplicate comes in while the first one runs
    assert job.job_id not in store._ahead
    assert await store.complete(job, '{"n": 1}', _now()) is None
    store.delivered(job.job_id)
    known = await store.known(job.job_id)  # the duplicate's start reads the row itself
    assert known is not None
    assert known.state == "complete"
    store.prefetch([job.job_id])  # with no delivery of it running here, it is read ahead
    assert job.job_id in store._ahead
