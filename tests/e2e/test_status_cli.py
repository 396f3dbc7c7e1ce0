"""``conveyor status`` and ``conveyor cancel`` from a shell with only CONVEYOR_* variables set.

The jobs are arranged in-process through the worker's StatusStore; the CLI runs as a
subprocess against the same schema.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from conveyor import db
from conveyor.consumer.claims import Lease
from conveyor.consumer.job import JobMessage
from conveyor.consumer.status import StatusStore
from conveyor.jobstore import JobStatus
from conveyor.settings import Settings
from tests.conftest import CliResult, run_cli, settings_env

SUBMITTED = dt.datetime(2024, 5, 17, 12, 0, 0, tzinfo=dt.UTC)


@pytest.fixture
async def worker(migrated: Settings) -> AsyncIterator[StatusStore]:
    pool = await db.create_pool(migrated, max_size=2)
    try:
        yield StatusStore(pool, worker_id="worker-a")
    finally:
        await pool.close()


async def cli(*args: str, settings: Settings) -> CliResult:
    return await asyncio.to_thread(run_cli, *args, env=settings_env(settings))


async def finished_job(migrated: Settings, worker: StatusStore) -> str:
    """A job that failed once, then completed on its second attempt with a progress report."""
    job = JobMessage(
        job_id=str(uuid.uuid4()),
        type="report.build",
        key="acct-7",
        priority="normal",
        payload=b"{}",
        content_type="application/json",
        tenant_id=None,
        batch_id=None,
        dedupe_key=None,
        attempt=1,
        max_attempts=None,
        submitted_at=SUBMITTED,
        not_before=None,
        duration="short",
        errors=[],
        topic="t.jobs.normal",
        partition=0,
        offset=0,
        headers={},
    )
    first = await worker.claim(job)
    assert isinstance(first, Lease)
    await worker.retry(first, {"type": "TimeoutError", "message": "upstream slow\nmore"})
    second = await worker.claim(dataclasses.replace(job, attempt=2))
    assert isinstance(second, Lease)
    await worker.progress(second, 80.0, "rendering")
    conn: asyncpg.Connection[Any] = await db.connect(migrated)
    try:
        await worker.complete(second, {"pages": 12}, conn)
    finally:
        await conn.close()
    return job.job_id


async def test_status_prints_state_result_and_history_lines(
    migrated: Settings, worker: StatusStore
) -> None:
    job_id = await finished_job(migrated, worker)

    result = await cli("status", job_id, settings=migrated)

    assert (result.code, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[0] == f"job {job_id}: complete"
    assert "  type        report.build" in lines
    assert "  progress    80% rendering" in lines
    assert '  result      {"pages": 12}' in lines
    assert "  last error  TimeoutError: upstream slow" in lines
    history = lines[lines.index("history:") + 1 :]
    assert [line.split()[1:3] for line in history] == [
        ["queued", "1"],
        ["processing", "1"],
        ["queued", "1"],
        ["processing", "2"],
        ["complete", "2"],
    ]
    assert history[2].endswith("  TimeoutError: upstream slow")


async def test_status_json_prints_the_job_status_with_its_field_names_as_keys(
    migrated: Settings, worker: StatusStore
) -> None:
    job_id = await finished_job(migrated, worker)

    result = await cli("status", job_id, "--json", settings=migrated)

    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {f.name for f in dataclasses.fields(JobStatus)}
    assert (data["job_id"], data["state"], data["attempts"], data["result"]) == (
        job_id,
        "complete",
        2,
        {"pages": 12},
    )
    assert [t["state"] for t in data["history"]] == [
        "queued",
        "processing",
        "queued",
        "processing",
        "complete",
    ]
    assert data["submitted_at"] == SUBMITTED.isoformat()


async def test_cancel_of_an_unknown_job_prints_cancelled_and_status_then_shows_it(
    migrated: Settings,
) -> None:
    job_id = str(uuid.uuid4())
    before = await cli("status", job_id, "--json", settings=migrated)

    cancelled = await cli("cancel", job_id, "--reason", "typo", settings=migrated)
    after = await cli("status", job_id, settings=migrated)

    assert (before.code, json.loads(before.stdout)["state"]) == (0, "unknown")
    assert (cancelled.code, cancelled.stdout) == (0, f"job {job_id}: cancelled\n")
    assert after.code == 0, after.stderr
    assert after.stdout.splitlines()[0] == f"job {job_id}: cancelled"
    assert after.stdout.splitlines()[-1].endswith("cancelled   0  Cancelled: typo")


async def test_cancel_of_a_completed_job_prints_its_state_unchanged(
    migrated: Settings, worker: StatusStore
) -> None:
    job_id = await finished_job(migrated, worker)

    result = await cli("cancel", job_id, settings=migrated)

    assert (result.code, result.stdout) == (
        0,
        f"job {job_id}: complete (already ended; nothing to cancel)\n",
    )


async def test_unreachable_database_is_one_error_line_and_exit_1(settings: Settings) -> None:
    down = settings.replace(database_url="postgresql://postgres@127.0.0.1:1/postgres")

    results = [
        await cli("status", str(uuid.uuid4()), settings=down),
        await cli("cancel", str(uuid.uuid4()), settings=down),
    ]

    for result in results:
        assert (result.code, result.stdout) == (1, "")
        assert result.stderr.startswith("conveyor: error: cannot connect to Postgres")
        assert len(result.stderr.splitlines()) == 1


async def test_a_job_id_that_is_not_a_uuid_is_a_usage_error(settings: Settings) -> None:
    result = await cli("status", "job-1", settings=settings)

    assert result.code == 2
    assert "job id 'job-1' is not a UUID" in result.stderr
