"""Retention: delete finished jobs and replayed DLQ rows once they are old enough.

:func:`purge` deletes finished jobs (with their history) once they ended longer ago than
the job topics keep messages plus ``RETENTION_MARGIN`` (1 day): 8 days with the default
7-day ``job_retention_days``. A job row must outlive every message about its job: the
claim's dedupe only knows jobs it has a row for, so a message re-read after its row was
purged (a consumer group reset, a new group, a replay from offset 0) would run the job
again. Replayed DLQ rows go 30 days after their replay; pending rows stay.

The purge is bounded: it deletes ``PURGE_BATCH`` rows per statement, each its own short
transaction, oldest first, until a statement deletes fewer; and it runs in at most one
process at a time per schema (``pg_try_advisory_lock``; a process that does not get the
lock skips this round). Every worker runs :func:`purge_periodically` beside the jobs;
``conveyor purge`` runs :func:`purge` once. The SQL functions of migration ``0001_jobs``
(``purge_finished_jobs``, ``purge_replayed_dlq``) remain for cron and ``pg_cron``; pass
them the same age (``interval '8 days'``), not their 7-day default.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import asyncpg

from conveyor.db import database_errors
from conveyor.errors import DatabaseUnavailableError, MigrationError
from conveyor.settings import MIN_JOB_RETENTION_DAYS

# The logger the purge has always used, so existing log filters keep matching.
log = logging.getLogger("conveyor.dlq")

DEFAULT_PURGE_INTERVAL = 3600.0
"""Seconds between two purges run by :func:`purge_periodically`."""

RETENTION_MARGIN = dt.timedelta(days=1)
"""How much longer than the job topics' retention a finished job's row is kept."""

DLQ_RETENTION = dt.timedelta(days=30)
"""How long a replayed DLQ row is kept after its replay."""

PURGE_BATCH = 5000
"""Rows one purge statement deletes at most: each statement is a short transaction."""

# The advisory lock's two keys: a constant for "conveyor's purge", and the schema, so
# that one purge runs per schema at a time.
_LOCK_CLASS = 0x63707267  # "cprg"
_TRY_LOCK = "SELECT pg_try_advisory_lock($1, hashtext(current_schema()))"
_UNLOCK = "SELECT pg_advisory_unlock($1, hashtext(current_schema()))"

# Oldest first, on the partial indexes the migration made for exactly these predicates;
# SKIP LOCKED, so a row a worker is touching is left for the next round.
_PURGE_JOBS = """
WITH doomed AS (
    SELECT job_id FROM jobs
    WHERE state IN ('complete', 'failed', 'cancelled') AND finished_at < now() - $1::interval
    ORDER BY finished_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM jobs AS j USING doomed AS d WHERE j.job_id = d.job_id RETURNING 1
)
SELECT count(*) FROM deleted
"""
_PURGE_DLQ = """
WITH doomed AS (
    SELECT id FROM job_dlq
    WHERE replayed_at IS NOT NULL AND replayed_at < now() - $1::interval
    ORDER BY replayed_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM job_dlq AS q USING doomed AS d WHERE q.id = d.id RETURNING 1
)
SELECT count(*) FROM deleted
"""
# Released scheduled_jobs rows go with the finished jobs' retention: a scheduled-topic
# message re-read while its row exists is not scheduled twice. No ORDER BY: the scan
# stops at the first batch of matches.
_PURGE_SCHEDULED = """
WITH doomed AS (
    SELECT job_id FROM scheduled_jobs
    WHERE released_at < now() - $1::interval
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM scheduled_jobs AS s USING doomed AS d WHERE s.job_id = d.job_id RETURNING 1
)
SELECT count(*) FROM deleted
"""


def job_row_retention(job_retention_days: int = MIN_JOB_RETENTION_DAYS) -> dt.timedelta:
    """How long a finished job's row is kept: the job topics' retention plus the margin.

    Args:
        job_retention_days: The job topics' retention (``Settings.job_retention_days``).
    """
    return dt.timedelta(days=job_retention_days) + RETENTION_MARGIN


async def purge(
    pool: asyncpg.Pool[Any],
    *,
    jobs_older_than: dt.timedelta | None = None,
    dlq_older_than: dt.timedelta | None = None,
    job_retention_days: int = MIN_JOB_RETENTION_DAYS,
    batch_size: int = PURGE_BATCH,
) -> tuple[int, int]:
    """Deletes finished jobs and replayed DLQ rows past their retention, and the
    ``scheduled_jobs`` rows released longer ago than the jobs' retention, in batches.

    Args:
        pool: Connections to conveyor's schema.
        jobs_older_than: Retention of finished jobs (with their history); by default the
            job topics' retention plus ``RETENTION_MARGIN`` (:func:`job_row_retention`).
            A shorter one is allowed but logged: a job re-read from its topic after its
            row went would run again.
        dlq_older_than: Retention of replayed DLQ rows; 30 days by default.
        job_retention_days: The job topics' retention (``Settings.job_retention_days``).
        batch_size: Rows one statement deletes at most.

    Returns:
        (jobs deleted, DLQ rows deleted); (0, 0) when another process is purging now.

    Raises:
        ValueError: A retention is negative, or ``batch_size`` is below 1.
        DatabaseUnavailableError: Postgres cannot be reached.
        MigrationError: The schema is not migrated.
    """
    safe = job_row_retention(job_retention_days)
    jobs_age = safe if jobs_older_than is None else jobs_older_than
    dlq_age = DLQ_RETENTION if dlq_older_than is None else dlq_older_than
    if jobs_age < dt.timedelta(0) or dlq_age < dt.timedelta(0):
        raise ValueError(f"retention must not be negative, got {jobs_age} and {dlq_age}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if jobs_age < safe:
        log.warning(
            "purging finished jobs after %s, less than the job topics' retention plus a "
            "margin (%s): a job re-read from its topic after its row is gone runs again",
            jobs_age,
            safe,
        )
    with database_errors("purging finished jobs and replayed DLQ rows"):
        async with pool.acquire() as conn:
            if not await conn.fetchval(_TRY_LOCK, _LOCK_CLASS):
                log.info("purge skipped: another process is purging this schema now")
                return 0, 0
            try:
                jobs = await _in_batches(conn, _PURGE_JOBS, jobs_age, batch_size)
                dlq = await _in_batches(conn, _PURGE_DLQ, dlq_age, batch_size)
                await _in_batches(conn, _PURGE_SCHEDULED, jobs_age, batch_size)
            finally:
                await conn.fetchval(_UNLOCK, _LOCK_CLASS)
    return jobs, dlq


async def _in_batches(conn: Any, query: str, age: dt.timedelta, batch_size: int) -> int:
    """Runs a purge statement until it deletes fewer than ``batch_size`` rows."""
    total = 0
    while True:
        deleted = int(await conn.fetchval(query, age, batch_size))
        total += deleted
        if deleted < batch_size:
            return total


async def purge_periodically(
    pool: asyncpg.Pool[Any],
    interval: float = DEFAULT_PURGE_INTERVAL,
    *,
    job_retention_days: int = MIN_JOB_RETENTION_DAYS,
) -> None:
    """Runs :func:`purge` now and then every ``interval`` seconds, until cancelled.

    A failed purge is logged and tried again at the next interval; it never ends the loop.

    Args:
        pool: Connections to conveyor's schema.
        interval: Seconds between two purges.
        job_retention_days: The job topics' retention (``Settings.job_retention_days``).
    """
    while True:
        try:
            jobs, dlq = await purge(pool, job_retention_days=job_retention_days)
        except (DatabaseUnavailableError, MigrationError, asyncpg.PostgresError) as exc:
            log.warning("purge failed, trying again in %.0fs: %s", interval, exc)
        else:
            if jobs or dlq:
                log.info("purged %d finished job(s) and %d replayed DLQ row(s)", jobs, dlq)
        await asyncio.sleep(interval)


__all__ = [
    "DEFAULT_PURGE_INTERVAL",
    "DLQ_RETENTION",
    "PURGE_BATCH",
    "RETENTION_MARGIN",
    "job_row_retention",
    "purge",
    "purge_periodically",
]
