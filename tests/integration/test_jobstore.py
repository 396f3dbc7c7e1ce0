"""The public JobStore against a real Postgres (and, for cancelling running jobs, the real
broker and registry): status and history, cancel, and following progress."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from conveyor.consumer.claims import Lease
from conveyor.consumer.job import JobMessage
from conveyor.consumer.status import StatusStore
from conveyor.errors import DatabaseUnavailableError, MigrationError
from conveyor.jobstore import JobStatus, JobStore, Progress, Transition
from conveyor.schemas.contracts import CONTROL_COMMAND
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology import admin
from conveyor.topology.model import Topology
from tests.kafka_helpers import read_topic

DEADLINE = 10.0
SUBMITTED = dt.datetime(2024, 5, 17, 12, 0, 0, tzinfo=dt.UTC)
ERROR = {"type": "ValueError", "message": "boom", "traceback": "Traceback ...", "at": SUBMITTED}
STORED_ERROR = {**ERROR, "at": SUBMITTED.isoformat()}


def make_job(job_id: str | None = None, *, attempt: int = 1) -> JobMessage:
    """A job message as the worker decodes it from the high-priority topic."""
    return JobMessage(
        job_id=job_id or str(uuid.uuid4()),
        type="email.send",
        key="user-1",
        priority="high",
        payload=b"{}",
        content_type="application/json",
        tenant_id="acme",
        batch_id=str(uuid.uuid4()),
        dedupe_key=None,
        attempt=attempt,
        max_attempts=None,
        submitted_at=SUBMITTED,
        not_before=None,
        duration="short",
        errors=[],
        topic="t.jobs.high",
        partition=0,
        offset=0,
        headers={},
    )


async def claimed(worker: StatusStore, job: JobMessage) -> Lease:
    lease = await worker.claim(job)
    assert isinstance(lease, Lease), f"claim returned {lease!r}"
    return lease


@pytest.fixture
def worker(pool: asyncpg.Pool[Any]) -> StatusStore:
    return StatusStore(pool, worker_id="worker-a")


@pytest.fixture
async def store(migrated: Settings) -> AsyncIterator[JobStore]:
    async with JobStore(migrated) as opened:
        yield opened


async def complete(pool: asyncpg.Pool[Any], worker: StatusStore, lease: Lease, result: Any) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await worker.complete(lease, result, conn)


async def test_status_of_a_job_no_worker_has_seen_is_unknown(store: JobStore) -> None:
    job_id = str(uuid.uuid4())

    status = await store.status(job_id)

    assert status == JobStatus(job_id=job_id, state="unknown", attempts=0, history=[])
    assert status.to_json()["state"] == "unknown"


async def test_status_of_a_running_job_shows_processing_and_its_history(
    store: JobStore, worker: StatusStore
) -> None:
    job = make_job()
    lease = await claimed(worker, job)
    await worker.progress(lease, 33.3, "a third")

    status = await store.status(job.job_id)

    assert (status.state, status.attempts, status.type, status.key, status.priority) == (
        "processing",
        1,
        "email.send",
        "user-1",
        "high",
    )
    assert [(t.state, t.attempt) for t in status.history] == [("queued", 1), ("processing", 1)]
    assert status.history[0].at == SUBMITTED
    assert status.progress is not None
    assert (status.progress.pct, status.progress.message) == (33.3, "a third")
    assert (status.result, status.finished_at) == (None, None)


async def test_status_of_a_completed_job_has_the_full_history_in_order_and_its_result(
    store: JobStore, pool: asyncpg.Pool[Any], worker: StatusStore
) -> None:
    job = make_job()
    first = await claimed(worker, job)
    await worker.retry(first, ERROR)
    second = await claimed(worker, make_job(job.job_id, attempt=2))
    await complete(pool, worker, second, {"sent": 2})

    status = await store.status(job.job_id)

    assert [(t.state, t.attempt, t.error) for t in status.history] == [
        ("queued", 1, None),
        ("processing", 1, None),
        ("queued", 1, STORED_ERROR),
        ("processing", 2, None),
        ("complete", 2, None),
    ]
    times = [t.at for t in status.history]
    assert times == sorted(times)
    assert (status.state, status.attempts, status.result, status.last_error) == (
        "complete",
        2,
        {"sent": 2},
        STORED_ERROR,
    )
    assert status.finished_at == status.history[-1].at
    assert status.is_final


async def test_to_json_uses_the_field_names_as_keys_and_iso_times(
    store: JobStore, worker: StatusStore
) -> None:
    job = make_job()
    lease = await claimed(worker, job)
    await worker.progress(lease, 50.0, "half")

    data = (await store.status(job.job_id)).to_json()

    assert set(data) == {f.name for f in dataclasses.fields(JobStatus)}
    assert set(data["history"][0]) == {f.name for f in dataclasses.fields(Transition)}
    assert set(data["progress"]) == {f.name for f in dataclasses.fields(Progress)}
    assert data["submitted_at"] == SUBMITTED.isoformat()
    assert data["history"][0]["at"] == SUBMITTED.isoformat()
    assert (data["batch_id"], data["progress"]["pct"]) == (job.batch_id, 50.0)


async def test_cancel_of_an_unknown_job_cancels_it_so_its_claim_is_skipped(
    store: JobStore, worker: StatusStore
) -> None:
    job = make_job()

    state = await store.cancel(job.job_id, reason="not needed")

    assert state == "cancelled"
    assert await worker.claim(job) == "cancelled"
    status = await store.status(job.job_id)
    assert (status.state, status.type, status.attempts) == ("cancelled", None, 0)
    assert [(t.state, t.attempt, t.error) for t in status.history] == [
        ("cancelled", 0, {"type": "Cancelled", "message": "not needed"})
    ]


async def test_cancel_of_a_job_waiting_for_its_retry_cancels_it_and_the_retry_is_skipped(
    store: JobStore, worker: StatusStore
) -> None:
    job = make_job()
    await worker.retry(await claimed(worker, job), ERROR)

    state = await store.cancel(job.job_id)

    assert state == "cancelled"
    assert await worker.claim(make_job(job.job_id, attempt=2)) == "cancelled"
    status = await store.status(job.job_id)
    assert [(t.state, t.attempt) for t in status.history][-1] == ("cancelled", 1)


async def test_cancel_of_a_job_that_ended_leaves_it_unchanged(
    store: JobStore, pool: asyncpg.Pool[Any], worker: StatusStore
) -> None:
    job = make_job()
    await complete(pool, worker, await claimed(worker, job), "done")
    before = await store.status(job.job_id)

    state = await store.cancel(job.job_id)

    assert state == "complete"
    assert await store.status(job.job_id) == before


async def test_cancel_of_a_running_job_marks_it_and_publishes_a_control_command(
    migrated: Settings, schema_registry_url: str, worker: StatusStore
) -> None:
    live = migrated.replace(schema_registry_url=schema_registry_url)
    await asyncio.to_thread(admin.apply, live)
    job = make_job()
    await claimed(worker, job)

    async with JobStore(live) as store:
        state = await store.cancel(job.job_id, reason="operator asked")
        status = await store.status(job.job_id)

    assert (state, status.state) == ("processing", "processing")
    assert await worker.is_cancel_requested(job.job_id) is True
    topic = Topology.from_settings(live).control_topic
    [record] = await asyncio.to_thread(read_topic, live.kafka_bootstrap, topic, 1)
    with Serde(live) as serde:
        command = serde.decode(CONTROL_COMMAND, topic, record.value)
    assert (command["command"], str(command["job_id"]), command["reason"]) == (
        "cancel",
        job.job_id,
        "operator asked",
    )
    assert record.key == job.job_id.encode()


async def test_cancel_of_a_queued_job_also_tells_the_workers_which_may_have_read_it_ahead(
    migrated: Settings, schema_registry_url: str, pool: asyncpg.Pool[Any]
) -> None:
    live = migrated.replace(schema_registry_url=schema_registry_url)
    await asyncio.to_thread(admin.apply, live)
    job = make_job()
    await pool.execute("INSERT INTO jobs (job_id, state) VALUES ($1, 'queued')", job.job_id)

    async with JobStore(live) as store:
        assert await store.cancel(job.job_id, reason="not needed") == "cancelled"

    topic = Topology.from_settings(live).control_topic
    [record] = await asyncio.to_thread(read_topic, live.kafka_bootstrap, topic, 1)
    with Serde(live) as serde:
        command = serde.decode(CONTROL_COMMAND, topic, record.value)
    assert (command["command"], str(command["job_id"])) == ("cancel", job.job_id)


async def test_progress_yields_the_current_status_then_each_change_and_ends_when_final(
    migrated: Settings, pool: asyncpg.Pool[Any], worker: StatusStore
) -> None:
    """Changes arrive by notification: the poll interval is far longer than the test."""
    job = make_job()
    seen: asyncio.Queue[JobStatus] = asyncio.Queue()

    async def follow(store: JobStore) -> None:
        async for status in store.progress(job.job_id):
            seen.put_nowait(status)

    async with JobStore(migrated, poll_interval=600.0) as store, asyncio.timeout(DEADLINE):
        follower = asyncio.create_task(follow(store))
        assert (await seen.get()).state == "unknown"
        lease = await claimed(worker, job)
        assert (await seen.get()).state == "processing"
        await worker.progress(lease, 25.0, "a quarter")
        quarter = await seen.get()
        await worker.progress(lease, 75.0, "three quarters")
        three_quarters = await seen.get()
        await complete(pool, worker, lease, {"ok": True})
        final = await seen.get()
        await follower

    assert quarter.progress is not None
    assert three_quarters.progress is not None
    assert [
        (quarter.progress.pct, quarter.progress.message),
        (three_quarters.progress.pct, three_quarters.progress.message),
    ] == [(25.0, "a quarter"), (75.0, "three quarters")]
    assert (final.state, final.result) == ("complete", {"ok": True})
    assert seen.empty()


async def test_progress_of_a_job_that_already_ended_yields_it_once_and_ends(
    store: JobStore, pool: asyncpg.Pool[Any], worker: StatusStore
) -> None:
    job = make_job()
    await complete(pool, worker, await claimed(worker, job), None)

    async with asyncio.timeout(DEADLINE):
        statuses = [status async for status in store.progress(job.job_id)]

    assert [s.state for s in statuses] == ["complete"]


async def test_status_and_cancel_refuse_an_id_that_is_not_a_uuid(store: JobStore) -> None:
    with pytest.raises(ValueError, match="not a UUID"):
        await store.status("job-1")
    with pytest.raises(ValueError, match="not a UUID"):
        await store.cancel("job-1")


async def test_status_on_an_unmigrated_schema_says_to_run_migrate(settings: Settings) -> None:
    async with JobStore(settings) as store:
        with pytest.raises(MigrationError, match="conveyor migrate"):
            await store.status(str(uuid.uuid4()))


async def test_open_against_an_unreachable_database_raises_database_unavailable() -> None:
    unreachable = Settings(database_url="postgresql://postgres@127.0.0.1:1/postgres")

    with pytest.raises(DatabaseUnavailableError, match=r"127\.0\.0\.1:1"):
        await JobStore(unreachable).open()
