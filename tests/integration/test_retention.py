"""The retention purge keeps job rows longer than the job topics keep their messages, and
is bounded: batches of short transactions, one process at a time (issue 14, defects 9
and 12)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import asyncpg
import pytest

from conveyor import retention


async def _finished(pool: asyncpg.Pool[Any], days_ago: float, count: int = 1) -> list[uuid.UUID]:
    """Inserts ``count`` jobs that completed ``days_ago`` days ago; returns their ids."""
    ids = [uuid.uuid4() for _ in range(count)]
    finished = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)
    await pool.executemany(
        "INSERT INTO jobs (job_id, type, state, finished_at) VALUES ($1, 'a.b', 'complete', $2)",
        [(job_id, finished) for job_id in ids],
    )
    return ids


async def _left(pool: asyncpg.Pool[Any]) -> set[uuid.UUID]:
    return {row["job_id"] for row in await pool.fetch("SELECT job_id FROM jobs")}


async def test_job_rows_outlive_the_job_topics_retention_by_a_margin(
    pool: asyncpg.Pool[Any],
) -> None:
    """A job whose messages may still be read from its topic (7 days by default) keeps
    its row, so the claim's dedupe still knows it ended and a re-read does not run it
    again; with a longer topic retention the rows are kept longer too."""
    [within_margin] = await _finished(pool, 7.5)
    [past_margin] = await _finished(pool, 8.5)
    assert await retention.purge(pool) == (1, 0)
    assert await _left(pool) == {within_margin}

    [within_longer] = await _finished(pool, 10.5)
    await _finished(pool, 11.5)  # past even the longer retention and its margin
    assert await retention.purge(pool, job_retention_days=10) == (1, 0)
    assert await _left(pool) == {within_margin, within_longer}
    assert past_margin not in await _left(pool)
    assert retention.job_row_retention(7) == dt.timedelta(days=8)


async def test_the_purge_deletes_in_batches_and_never_waits_on_a_locked_row(
    pool: asyncpg.Pool[Any],
) -> None:
    """25 old jobs, one of them locked by a worker's open transaction: the purge deletes
    the other 24 in batches of 10 without waiting on the lock (one unbounded DELETE
    would wait for it), and the locked one goes in a later round."""
    ids = await _finished(pool, 30, count=25)
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM jobs WHERE job_id = $1 FOR UPDATE", ids[0])
        purged = await asyncio.wait_for(retention.purge(pool, batch_size=10), timeout=30)
        assert purged == (24, 0)
    assert await _left(pool) == {ids[0]}
    assert await retention.purge(pool, batch_size=10) == (1, 0)
    with pytest.raises(ValueError, match="batch_size"):
        await retention.purge(pool, batch_size=0)


async def test_only_one_process_purges_a_schema_at_a_time(pool: asyncpg.Pool[Any]) -> None:
    """Every worker pod runs the purge hourly; one that finds another purging skips."""
    ids = await _finished(pool, 30, count=3)
    async with pool.acquire() as other:
        assert await other.fetchval(retention._TRY_LOCK, retention._LOCK_CLASS)
        try:
            assert await retention.purge(pool) == (0, 0)
            assert await _left(pool) == set(ids)
        finally:
            await other.fetchval(retention._UNLOCK, retention._LOCK_CLASS)
    assert await retention.purge(pool) == (3, 0)
