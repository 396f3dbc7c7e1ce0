"""A job read from a topic: its ids in the form Postgres prints, and what Postgres would refuse."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from conveyor.consumer.job import JobMessage, canonical_id

JOB_ID = "0b9d7a3e-5c1f-4e2a-9f6d-2a1b3c4d5e6f"


def envelope(**fields: Any) -> dict[str, Any]:
    return {
        "job_id": JOB_ID,
        "type": "t",
        "priority": "normal",
        "payload": b"{}",
        "content_type": "application/json",
        "submitted_at": dt.datetime(2026, 12, 7, tzinfo=dt.UTC),
        **fields,
    }


def message(**fields: Any) -> JobMessage:
    return JobMessage.from_envelope(
        envelope(**fields), topic="jobs", partition=0, offset=1, headers={}
    )


def test_canonical_id_prints_a_uuid_as_postgres_does() -> None:
    assert canonical_id(JOB_ID) == JOB_ID
    assert canonical_id(JOB_ID.upper()) == JOB_ID
    assert canonical_id(JOB_ID.replace("-", "")) == JOB_ID
    assert canonical_id("{" + JOB_ID + "}") == JOB_ID
    assert canonical_id("not-a-uuid") == "not-a-uuid"


def test_a_jobs_ids_and_default_key_are_canonical() -> None:
    batch = uuid.uuid4()
    job = message(job_id=JOB_ID.upper(), batch_id=str(batch).upper())
    assert job.job_id == JOB_ID
    assert job.key == JOB_ID
    assert job.batch_id == str(batch)
    assert message(job_id=uuid.UUID(JOB_ID)).job_id == JOB_ID
    assert job.unstorable() is None


def test_an_id_that_is_no_uuid_is_unstorable() -> None:
    assert message(job_id="nope").unstorable() == "job_id 'nope' is not a UUID"
    assert message(batch_id="x" * 36).unstorable() == f"batch_id {'x' * 36!r} is not a UUID"
