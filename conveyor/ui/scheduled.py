"""The query functions of the Scheduled page and ``/api/scheduled``: delayed jobs waiting
for their time, recurring schedules with their next fire time, and pause/resume."""

from __future__ import annotations

from typing import Any

import asyncpg

from conveyor.db import database_errors
from conveyor.scheduling import recurring

PAGE_SIZE = 100

_WAITING = """
SELECT s.job_id, s.type, s.priority, s.tenant_id, s.due_at, s.created_at, j.key
FROM scheduled_jobs AS s
LEFT JOIN jobs AS j USING (job_id)
WHERE s.released_at IS NULL
ORDER BY s.due_at, s.job_id
LIMIT $1
"""
_COUNT = "SELECT count(*) FROM scheduled_jobs WHERE released_at IS NULL"


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


async def scheduled(pool: asyncpg.Pool[Any], *, limit: int = PAGE_SIZE) -> dict[str, Any]:
    """The earliest ``limit`` jobs waiting for their time, their total, and every schedule.

    Returns:
        ``{"jobs": [...], "total": n, "schedules": [...]}``, times ISO 8601.
    """
    with database_errors("reading scheduled jobs"):
        async with pool.acquire() as conn:
            rows = await conn.fetch(_WAITING, limit)
            total = await conn.fetchval(_COUNT)
            schedules = await recurring.list_schedules(conn)
    return {
        "jobs": [
            {
                "job_id": str(r["job_id"]),
                "type": r["type"],
                "priority": r["priority"],
                "tenant_id": r["tenant_id"],
                "key": r["key"],
                "due_at": _iso(r["due_at"]),
                "submitted_at": _iso(r["created_at"]),
            }
            for r in rows
        ],
        "total": int(total),
        "schedules": [s.to_json() for s in schedules],
    }


async def set_paused(pool: asyncpg.Pool[Any], name: str, paused: bool) -> None:
    """Pauses or resumes a recurring schedule.

    Raises:
        ScheduleNotFound: No schedule has this name.
    """
    async with pool.acquire() as conn:
        await recurring.set_paused(conn, name, paused)
