"""Retention: delete finished jobs and replayed DLQ rows once they are old enough.

:func:`purge` runs the retention functions of migration ``0001_jobs``: finished jobs go
7 days after they ended, replayed DLQ rows 30 days after their replay; pending rows stay.
The worker runs :func:`purge_periodically` beside the jobs; ``conveyor purge`` runs
:func:`purge` once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import asyncpg

from conveyor.db import database_errors
from conveyor.errors import DatabaseUnavailableError, MigrationError

# The logger the purge has always used, so existing log filters keep matching.
log = logging.getLogger("conveyor.dlq")

DEFAULT_PURGE_INTERVAL = 3600.0
"""Seconds between two purges run by :func:`purge_periodically`."""

_PURGE_JOBS = "SELECT purge_finished_jobs(coalesce($1::interval, interval '7 days'))"
_PURGE_DLQ = "SELECT purge_replayed_dlq(coalesce($1::interval, interval '30 days'))"
_PURGE_SCHEDULED = "SELECT purge_released_scheduled_jobs(coalesce($1::interval, interval '7 days'))"


async def purge(
    pool: asyncpg.Pool[Any],
    *,
    jobs_older_than: dt.timedelta | None = None,
    dlq_older_than: dt.timedelta | None = None,
) -> tuple[int, int]:
    """Deletes finished jobs and replayed DLQ rows past their retention, and the
    ``scheduled_jobs`` rows released longer ago than the jobs' retention.

    Args:
        pool: Connections to conveyor's schema.
        jobs_older_than: Retention of finished jobs (with their history); 7 days by default.
        dlq_older_than: Retention of replayed DLQ rows; 30 days by default.

    Returns:
        (jobs deleted, DLQ rows deleted).

    Raises:
        DatabaseUnavailableError: Postgres cannot be reached.
        MigrationError: The schema is not migrated.
    """
    with database_errors("purging finished jobs and replayed DLQ rows"):
        async with pool.acquire() as conn:
            jobs = int(await conn.fetchval(_PURGE_JOBS, jobs_older_than))
            dlq = int(await conn.fetchval(_PURGE_DLQ, dlq_older_than))
            await conn.execute(_PURGE_SCHEDULED, jobs_older_than)
    return jobs, dlq


async def purge_periodically(
    pool: asyncpg.Pool[Any], interval: float = DEFAULT_PURGE_INTERVAL
) -> None:
    """Runs :func:`purge` now and then every ``interval`` seconds, until cancelled.

    A failed purge is logged and tried again at the next interval; it never ends the loop.

    Args:
        pool: Connections to conveyor's schema.
        interval: Seconds between two purges.
    """
    while True:
        try:
            jobs, dlq = await purge(pool)
        except (DatabaseUnavailableError, MigrationError, asyncpg.PostgresError) as exc:
            log.warning("purge failed, trying again in %.0fs: %s", interval, exc)
        else:
            if jobs or dlq:
                log.info("purged %d finished job(s) and %d replayed DLQ row(s)", jobs, dlq)
        await asyncio.sleep(interval)


__all__ = ["DEFAULT_PURGE_INTERVAL", "purge", "purge_periodically"]
