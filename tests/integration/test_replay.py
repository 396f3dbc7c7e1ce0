"""Listing, replaying and purging DLQ entries against the real broker, registry and Postgres.

Entries are inserted into ``job_dlq`` directly, as the DLQ sink would have stored them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from conveyor import db, dlq, dlq_replay
from conveyor.consumer.job import JobMessage
from conveyor.consumer.status import StatusStore
from conveyor.errors import DlqEntryNotFound, ReplayRefused
from conveyor.jobstore import JobStore
from conveyor.schemas.contracts import JOB_ENVELOPE
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology.model import Topology
from tests.kafka_helpers import read_topic
from tests.worker_helpers import eventually, prepare

SUBMITTED = dt.datetime(2024, 5, 17, 12, 0, 0, tzinfo=dt.UTC)
HISTORY = (
    '[{"attempt": 1, "error_type": "ValueError", "message": "bad", "traceback": "", '
    '"at": "2024-05-17T12:01:00+00:00"}]'
)

_INSERT = """
INSERT INTO job_dlq (
    original_job_id, tenant_id, type, payload, content_type, error_reason, attempts,
    error_history, dlq_at, replayed_at, source_topic, source_partition, source_offset, key,
    priority, batch_id, dedupe_key, max_attempts, duration, submitted_at
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, $9, $10, 't.jobs.high', 0,
        (SELECT count(*) FROM job_dlq), $11, $12, $13, $14, $15, $16, $17)
RETURNING id
"""


async def insert_entry(pool: asyncpg.Pool[Any], **fields: Any) -> int:
    """Stores a DLQ entry of a dead job; keyword arguments override the defaults."""
    values: dict[str, Any] = {
        "job_id": str(uuid.uuid4()),
        "tenant_id": "acme",
        "type": "email.send",
        "payload": b'{"to": "a@example.com"}',
        "content_type": "application/json",
        "error_reason": "MaxRetries",
        "attempts": 1,
        "error_history": HISTORY,
        "dlq_at": SUBMITTED + dt.timedelta(minutes=5),
        "replayed_at": None,
        "key": "user-1",
        "priority": "high",
        "batch_id": None,
        "dedupe_key": None,
        "max_attempts": None,
        "duration": "short",
        "submitted_at": SUBMITTED,
    }
    values.update(fields)
    entry_id: int = await pool.fetchval(_INSERT, *values.values())
    return entry_id


@pytest.fixture
async def live(settings: Settings, schema_registry_url: str) -> Settings:
    return await prepare(settings, schema_registry_url)


@pytest.fixture
async def pool(migrated: Settings) -> AsyncIterator[asyncpg.Pool[Any]]:
    created = await db.create_pool(migrated, max_size=4)
    try:
        yield created
    finally:
        await created.close()


@pytest.fixture
async def publisher(live: Settings) -> AsyncIterator[dlq.RecordPublisher]:
    async with dlq.RecordPublisher(live) as opened:
        yield opened


def read_jobs(settings: Settings, priority: str, count: int, timeout: float = 30.0) -> list[Any]:
    """Reads up to ``count`` envelopes from a job topic; returns (key, envelope) pairs."""
    topic = Topology.from_settings(settings).job_topic(priority)
    records = read_topic(settings.kafka_bootstrap, topic, count, timeout=timeout)
    with Serde(settings) as serde:
        return [(r.key, serde.decode(JOB_ENVELOPE, topic, r.value), r.headers) for r in records]


async def test_replay_publishes_the_job_requeues_it_with_history_and_refuses_a_second_time(
    live: Settings, pool: asyncpg.Pool[Any], publisher: dlq.RecordPublisher
) -> None:
    job_id = str(uuid.uuid4())
    worker = StatusStore(pool, worker_id="worker-a")
    lease = await worker.claim(job_message(job_id))
    assert not isinstance(lease, str)
    await worker.fail(lease, {"type": "ValueError", "message": "bad"})
    batch_id = str(uuid.uuid4())
    entry_id = await insert_entry(
        pool,
        job_id=job_id,
        batch_id=batch_id,
        dedupe_key="inv-7",
        max_attempts=3,
        duration="long",
    )

    before = dt.datetime.now(dt.UTC)
    assert await dlq_replay.replay(pool, publisher, live, entry_id) == job_id

    [(key, envelope, headers)] = await asyncio.to_thread(read_jobs, live, "high", 1)
    assert key == b"user-1"
    assert headers["conveyor-job-id"] == job_id.encode()
    assert {k: envelope[k] for k in envelope if k != "submitted_at"} == {
        "job_id": uuid.UUID(job_id),
        "type": "email.send",
        "key": "user-1",
        "priority": "high",
        "payload": b'{"to": "a@example.com"}',
        "content_type": "application/json",
        "tenant_id": "acme",
        "batch_id": batch_id,
        "dedupe_key": "inv-7",
        "attempt": 1,
        "max_attempts": 3,
        "not_before": None,
        "duration": "long",
        "errors": [],
    }
    assert envelope["submitted_at"] >= before.replace(microsecond=0)
    entry = await dlq.get_entry(pool, entry_id)
    assert entry.replayed_at is not None
    async with JobStore(live) as store:
        status = await store.status(job_id)
    assert (status.state, status.attempts) == ("queued", 0)
    assert [t.state for t in status.history] == ["queued", "processing", "failed", "queued"]
    assert status.history[-1].error == {
        "type": "Replayed",
        "message": f"replayed from DLQ entry {entry_id}",
    }

    with pytest.raises(ReplayRefused, match=f"DLQ entry {entry_id} was already replayed at"):
        await dlq_replay.replay(pool, publisher, live, entry_id)


def job_message(job_id: str) -> JobMessage:
    """A job as the worker decodes it before claiming it."""
    return JobMessage(
        job_id=job_id,
        type="email.send",
        key="user-1",
        priority="high",
        payload=b"{}",
        content_type="application/json",
        tenant_id="acme",
        batch_id=None,
        dedupe_key=None,
        attempt=1,
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


async def test_replay_of_a_purged_job_recreates_its_row_on_the_normal_topic_by_default(
    live: Settings, pool: asyncpg.Pool[Any], publisher: dlq.RecordPublisher
) -> None:
    entry_id = await insert_entry(pool, priority=None, key=None)

    job_id = await dlq_replay.replay(pool, publisher, live, entry_id)

    [(key, envelope, _headers)] = await asyncio.to_thread(read_jobs, live, "normal", 1)
    assert (key, str(envelope["job_id"]), envelope["priority"]) == (
        job_id.encode(),
        job_id,
        "normal",
    )
    async with JobStore(live) as store:
        status = await store.status(job_id)
    assert (status.state, status.type, status.priority) == ("queued", "email.send", "normal")
    assert [t.state for t in status.history] == ["queued"]


async def test_two_concurrent_replays_of_one_entry_publish_exactly_once(
    live: Settings, pool: asyncpg.Pool[Any], publisher: dlq.RecordPublisher
) -> None:
    entry_id = await insert_entry(pool, priority="low")
    other = await db.create_pool(live, max_size=1)
    try:
        outcomes = await asyncio.gather(
            dlq_replay.replay(pool, publisher, live, entry_id),
            dlq_replay.replay(other, publisher, live, entry_id),
            return_exceptions=True,
        )
    finally:
        await other.close()

    replayed = [o for o in outcomes if isinstance(o, str)]
    refused = [o for o in outcomes if isinstance(o, ReplayRefused)]
    assert (len(replayed), len(refused)) == (1, 1)
    # The winner's message was acknowledged before it returned; ask for one more.
    messages = await asyncio.to_thread(read_jobs, live, "low", 2, 3.0)
    assert [str(envelope["job_id"]) for _key, envelope, _h in messages] == replayed


async def test_an_undecodable_or_missing_entry_is_refused_and_nothing_changes(
    live: Settings, pool: asyncpg.Pool[Any], publisher: dlq.RecordPublisher
) -> None:
    raw = await insert_entry(
        pool, job_id=None, type=None, error_reason="Deserialization", payload=b"\xff"
    )

    with pytest.raises(ReplayRefused, match=f"DLQ entry {raw} holds an undecodable message"):
        await dlq_replay.replay(pool, publisher, live, raw)
    with pytest.raises(DlqEntryNotFound, match="DLQ entry 999999 does not exist"):
        await dlq_replay.replay(pool, publisher, live, 999_999)
    assert (await dlq.get_entry(pool, raw)).replayed_at is None


async def test_replay_is_refused_unless_the_job_is_failed_now(
    live: Settings, pool: asyncpg.Pool[Any], publisher: dlq.RecordPublisher
) -> None:
    """A dead letter is not proof the job ended failed: a worker that lost the job may
    have dead-lettered it while its new owner completed it, or it may be queued or
    running again. Replaying it then would run it twice, so replay checks the job."""
    job_id = str(uuid.uuid4())
    entry_id = await insert_entry(pool, job_id=job_id, priority="low")
    await pool.execute(
        "INSERT INTO jobs (job_id, type, state, finished_at) VALUES ($1, 'email.send', "
        "'complete', now())",
        uuid.UUID(job_id),
    )
    for state in ("complete", "processing", "queued", "cancelled"):
        await pool.execute("UPDATE jobs SET state = $2 WHERE job_id = $1", uuid.UUID(job_id), state)
        with pytest.raises(ReplayRefused, match=f"job {job_id} is {state}, not failed"):
            await dlq_replay.replay(pool, publisher, live, entry_id)
        assert (await dlq.get_entry(pool, entry_id)).replayed_at is None
    messages = await asyncio.to_thread(read_jobs, live, "low", 1, 2.0)
    assert messages == [], "a refused replay published the job"

    await pool.execute("UPDATE jobs SET state = 'failed' WHERE job_id = $1", uuid.UUID(job_id))
    assert await dlq_replay.replay(pool, publisher, live, entry_id) == job_id


async def test_replay_all_replays_the_pending_entries_of_one_type_and_reports_progress(
    live: Settings, pool: asyncpg.Pool[Any], publisher: dlq.RecordPublisher
) -> None:
    wanted = [await insert_entry(pool, type="report.build", priority="critical") for _ in range(3)]
    await insert_entry(pool, type="report.build", tenant_id="other", priority="critical")
    await insert_entry(pool, type="report.build", replayed_at=SUBMITTED, priority="critical")
    await insert_entry(pool, type="email.send", priority="critical")
    progress: list[tuple[int, int]] = []

    replayed = await dlq_replay.replay_all(
        pool,
        publisher,
        live,
        type="report.build",
        tenant="acme",
        on_progress=lambda done, total: progress.append((done, total)),
    )

    expected = [str((await dlq.get_entry(pool, i)).original_job_id) for i in wanted]
    assert replayed == expected
    assert progress == [(1, 3), (2, 3), (3, 3)]
    messages = await asyncio.to_thread(read_jobs, live, "critical", 4, 3.0)
    assert sorted(str(e["job_id"]) for _k, e, _h in messages) == sorted(expected)


async def test_list_and_get_filter_by_type_tenant_and_pending(pool: asyncpg.Pool[Any]) -> None:
    first = await insert_entry(pool, type="email.send")
    second = await insert_entry(pool, type="email.send", tenant_id="other")
    done = await insert_entry(pool, type="email.send", replayed_at=SUBMITTED)
    raw = await insert_entry(
        pool,
        job_id=None,
        type=None,
        error_reason="Deserialization",
        payload=b"\xff\x00",
        content_type="application/octet-stream",
    )

    async def ids(**filters: Any) -> list[int]:
        return [e.id for e in await dlq.list_entries(pool, **filters)]

    assert await ids() == [first, second, raw]
    assert await ids(pending_only=False) == [first, second, done, raw]
    assert await ids(type="email.send") == [first, second]
    assert await ids(tenant="other") == [second]
    assert await ids(limit=1) == [first]

    entry = await dlq.get_entry(pool, first)
    assert entry.replayable
    assert entry.error_history == [
        {
            "attempt": 1,
            "error_type": "ValueError",
            "message": "bad",
            "traceback": "",
            "at": "2024-05-17T12:01:00+00:00",
        }
    ]
    as_json = entry.to_json()
    assert (as_json["id"], as_json["payload"], as_json["dlq_at"]) == (
        first,
        {"to": "a@example.com"},
        "2024-05-17T12:05:00+00:00",
    )
    undecodable = (await dlq.get_entry(pool, raw)).to_json()
    assert (undecodable["payload_base64"], undecodable["original_job_id"]) == ("/wA=", None)
    with pytest.raises(DlqEntryNotFound):
        await dlq.get_entry(pool, 999_999)


async def test_purge_deletes_only_finished_jobs_and_replayed_entries_past_retention(
    pool: asyncpg.Pool[Any],
) -> None:
    now = dt.datetime.now(dt.UTC)
    jobs = {
        "old": ("complete", now - dt.timedelta(days=9)),
        "recent": ("failed", now - dt.timedelta(days=1)),
        "running": ("processing", None),
    }
    ids = {name: uuid.uuid4() for name in jobs}
    for name, (state, finished_at) in jobs.items():
        await pool.execute(
            "INSERT INTO jobs (job_id, type, state, finished_at, created_at) "
            "VALUES ($1, 'a.b', $2, $3, $4)",
            ids[name],
            state,
            finished_at,
            now - dt.timedelta(days=30),
        )
    expired = await insert_entry(pool, replayed_at=now - dt.timedelta(days=31))
    fresh = await insert_entry(pool, replayed_at=now - dt.timedelta(days=1))
    pending = await insert_entry(pool, dlq_at=now - dt.timedelta(days=90))

    assert await dlq.purge(pool) == (1, 1)

    left = {row["job_id"] for row in await pool.fetch("SELECT job_id FROM jobs")}
    assert left == {ids["recent"], ids["running"]}
    left_entries = {e.id for e in await dlq.list_entries(pool, pending_only=False)}
    assert left_entries == {pending, fresh}
    with pytest.raises(DlqEntryNotFound):
        await dlq.get_entry(pool, expired)


async def test_purge_periodically_purges_at_once_and_keeps_running(
    pool: asyncpg.Pool[Any],
) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    await insert_entry(pool, replayed_at=old)

    task = asyncio.create_task(dlq.purge_periodically(pool, interval=3600.0))
    try:
        await eventually(
            lambda: pool.fetchval("SELECT count(*) = 0 FROM job_dlq"), what="the first purge"
        )
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_purge_deletes_scheduled_rows_released_past_the_job_retention(
    pool: asyncpg.Pool[Any],
) -> None:
    now = dt.datetime.now(dt.UTC)
    rows = {"old": now - dt.timedelta(days=8), "recent": now - dt.timedelta(days=1), "due": None}
    ids = {name: uuid.uuid4() for name in rows}
    for name, released_at in rows.items():
        await pool.execute(
            "INSERT INTO scheduled_jobs (job_id, due_at, topic, type, priority, message_key, "
            "message_value, released_at) VALUES ($1, $2, 't', 'a.b', 'normal', 'k', 'v', $3)",
            ids[name],
            now,
            released_at,
        )
    await dlq.purge(pool)
    left = {row["job_id"] for row in await pool.fetch("SELECT job_id FROM scheduled_jobs")}
    assert left == {ids["recent"], ids["due"]}
