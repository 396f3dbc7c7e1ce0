"""Reading one job from Postgres: its ``jobs`` row and ``job_transitions`` as a ``JobStatus``.

``JobStore.status`` and ``JobStore.progress`` (``conveyor.jobstore``) read through
:func:`read_row` and :func:`read_status`, which take the row and its history in one
snapshot, and :func:`status_from`, which turns them into the :class:`JobStatus` of
``conveyor.jobstatus``. :func:`queue_place` says where a job still waiting for its first
attempt sits in its partition, for the store to ask the broker how many are ahead of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from conveyor.consumer.status import AnyConnection
from conveyor.jobstatus import JobStatus, Progress, Transition

_JOB = """
SELECT job_id, state, attempts, result, last_error, progress_pct, progress_message,
       progress_at, type, key, tenant_id, priority, batch_id, submitted_at, started_at,
       finished_at, scheduled_for, source_topic, source_partition, source_offset
FROM jobs WHERE job_id = $1
"""

_HISTORY = "SELECT state, at, attempt, error FROM job_transitions WHERE job_id = $1 ORDER BY id"


def _loads(raw: str | None) -> Any:
    return None if raw is None else json.loads(raw)


def status_from(row: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> JobStatus:
    """The status a ``jobs`` row and its ``job_transitions``, oldest first, describe."""
    progress = None
    if row["progress_pct"] is not None:
        # A real column: round away the float4 noise (33.3 reads back as 33.2999992).
        pct = round(float(row["progress_pct"]), 4)
        progress = Progress(pct=pct, message=row["progress_message"], at=row["progress_at"])
    return JobStatus(
        job_id=str(row["job_id"]),
        state=row["state"],
        attempts=row["attempts"],
        history=[
            Transition(state=t["state"], at=t["at"], attempt=t["attempt"], error=_loads(t["error"]))
            for t in history
        ],
        result=_loads(row["result"]),
        last_error=_loads(row["last_error"]),
        progress=progress,
        type=row["type"],
        key=row["key"],
        tenant_id=row["tenant_id"],
        priority=row["priority"],
        batch_id=None if row["batch_id"] is None else str(row["batch_id"]),
        submitted_at=row["submitted_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        scheduled_for=row["scheduled_for"],
    )


async def read_row(conn: AnyConnection, job_id: str) -> tuple[Any, list[Any]]:
    """The job's row and its history, oldest first; (None, []) when it has no row."""
    # One snapshot for both reads, so the history matches the row.
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        row = await conn.fetchrow(_JOB, job_id)
        if row is None:
            return None, []
        return row, await conn.fetch(_HISTORY, job_id)


async def read_status(conn: AnyConnection, job_id: str) -> JobStatus:
    """The job's status; state ``unknown`` when it has no row."""
    row, history = await read_row(conn, job_id)
    return JobStatus.unknown(job_id) if row is None else status_from(row, history)


def queue_place(row: Mapping[str, Any]) -> tuple[str, int, int] | None:
    """The (topic, partition, offset) of a job still waiting for its first attempt, as
    the ledger read it; None for any other job (a retried job waits on a retry topic)."""
    if row["state"] != "queued" or row["attempts"] != 0 or row["source_offset"] is None:
        return None
    return row["source_topic"], row["source_partition"], row["source_offset"]


__all__ = ["queue_place", "read_row", "read_status", "status_from"]
