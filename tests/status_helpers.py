"""Building job messages and reading job rows back, for the tests of ``StatusStore``.

Shared by the status store's tests (``tests/integration/test_status_store_*.py``) and the
worker tests that claim jobs by hand; the jobs are built as the worker would after
decoding them from a job topic.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import asyncpg

from conveyor.consumer.claims import Lease
from conveyor.consumer.job import JobMessage
from conveyor.consumer.status import StatusStore

DEADLINE = 10.0
SUBMITTED = dt.datetime(2024, 5, 17, 12, 0, 0, tzinfo=dt.UTC)
ERROR = {"type": "ValueError", "message": "boom", "traceback": "Traceback ...", "at": SUBMITTED}


def make_job(job_id: str | None = None, *, attempt: int = 1, **changes: Any) -> JobMessage:
    """A job message as the worker decodes it from a job topic."""
    fields: dict[str, Any] = {
        "job_id": job_id or str(uuid.uuid4()),
        "type": "email.send",
        "key": "user-1",
        "priority": "high",
        "payload": b"{}",
        "content_type": "application/json",
        "tenant_id": "acme",
        "batch_id": str(uuid.uuid4()),
        "dedupe_key": "welcome",
        "attempt": attempt,
        "max_attempts": 3,
        "submitted_at": SUBMITTED,
        "not_before": None,
        "duration": "short",
        "errors": [],
        "topic": "t.jobs.high",
        "partition": 0,
        "offset": 7,
        "headers": {},
    }
    fields.update(changes)
    return JobMessage(**fields)


async def claimed(store: StatusStore, job: JobMessage) -> Lease:
    lease = await store.claim(job)
    assert isinstance(lease, Lease), f"claim returned {lease!r}"
    return lease


async def job_row(pool: asyncpg.Pool[Any], job_id: str) -> dict[str, Any]:
    row = await pool.fetchrow("SELECT * FROM jobs WHERE job_id = $1", job_id)
    assert row is not None
    return dict(row)


async def history(pool: asyncpg.Pool[Any], job_id: str) -> list[tuple[str, int, Any]]:
    rows = await pool.fetch(
        "SELECT state, attempt, error FROM job_transitions WHERE job_id = $1 ORDER BY id", job_id
    )
    return [(r["state"], r["attempt"], _json(r["error"])) for r in rows]


def _json(raw: str | None) -> Any:
    return None if raw is None else json.loads(raw)
