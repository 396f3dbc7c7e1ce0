"""The worker's StatusStore against a real Postgres: claims, lease fencing, outcomes.

Each test migrates its own random schema (the ``migrated`` fixture) and builds job
messages by hand, as the worker would after decoding them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from conveyor import db, migrations
from conveyor.consumer.claims import Lease
from conveyor.consumer.job import JobMessage
from conveyor.consumer.status import LeaseLostError, StatusStore, progress_channel
from conveyor.settings import Settings
from tests.worker_helpers import eventually

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


@pytest.fixture
async def pool(migrated: Settings) -> AsyncIterator[asyncpg.Pool[Any]]:
    """A pool on the migrated test schema, as the worker opens one."""
    opened = await db.create_pool(migrated, max_size=4)
    yield opened
    await opened.close()


@pytest.fixture
def worker_a(pool: asyncpg.Pool[Any]) -> StatusStore:
    return StatusStore(pool, worker_id="worker-a")


@pytest.fixture
def worker_b(pool: asyncpg.Pool[Any]) -> StatusStore:
    return StatusStore(pool, worker_id="worker-b")


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


async def run_handler(pool: asyncpg.Pool[Any], store: StatusStore, lease: Lease, note: str) -> None:
    """What the worker does around a handler: its write and the completion, one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO handler_writes VALUES ($1)", note)
        await store.complete(lease, {"by": store.worker_id}, conn)


async def test_first_claim_inserts_the_job_processing_with_epoch_1_and_two_transitions(
    pool: asyncpg.Pool[Any], worker_a: StatusStore
) -> None:
    job = make_job()

    lease = await worker_a.claim(job)

    assert lease == Lease(job_id=job.job_id, owner="worker-a", epoch=1, attempt=1)
    row = await job_row(pool, job.job_id)
    expected = {
        "type": "email.send", "key": "user-1", "tenant_id": "acme", "priority": "high",
        "batch_id": uuid.UUID(str(job.batch_id)), "dedupe_key": "welcome", "max_attempts": 3,
        "submitted_at": SUBMITTED, "state": "processing", "attempts": 1,
        "lease_owner": "worker-a", "lease_epoch": 1,
    }  # fmt: skip
    assert {k: row[k] for k in expected} == expected
    assert row["started_at"] < row["lease_expires_at"]
    assert await history(pool, job.job_id) == [("queued", 1, None), ("processing", 1, None)]
    queued_at = await pool.fetchval(
        "SELECT at FROM job_transitions WHERE job_id = $1 AND state = 'queued'", job.job_id
    )
    assert queued_at == SUBMITTED


async def test_redelivered_claim_bumps_the_epoch_and_fences_the_old_lease(
    pool: asyncpg.Pool[Any], worker_a: StatusStore, worker_b: StatusStore
) -> None:
    """The old owner's completion raises and rolls back with its handler's writes."""
    await pool.execute("CREATE TABLE handler_writes (note text)")
    job = make_job()
    old = await claimed(worker_a, job)

    new = await claimed(worker_b, job)

    assert (old.epoch, new.epoch) == (1, 2)
    with pytest.raises(LeaseLostError) as lost:
        await run_handler(pool, worker_a, old, "from the old owner")
    await run_handler(pool, worker_b, new, "from the new owner")

    assert lost.value.lease == old
    notes = [r["note"] for r in await pool.fetch("SELECT note FROM handler_writes")]
    assert notes == ["from the new owner"]
    row = await job_row(pool, job.job_id)
    assert (row["state"], json.loads(row["result"]), row["lease_owner"]) == (
        "complete",
        {"by": "worker-b"},
        None,
    )
    assert await history(pool, job.job_id) == [
        ("queued", 1, None),
        ("processing", 1, None),
        ("processing", 1, None),
        ("complete", 1, None),
    ]


async def test_complete_stores_the_json_result_and_commits_with_the_handlers_write(
    pool: asyncpg.Pool[Any], worker_a: StatusStore
) -> None:
    await pool.execute("CREATE TABLE handler_writes (note text)")
    job = make_job()
    lease = await claimed(worker_a, job)
    result = {"sent": True, "ids": [1, 2], "note": "ünïcode"}

    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO handler_writes VALUES ('welcome mail')")
        await worker_a.complete(lease, result, conn)

    row = await job_row(pool, job.job_id)
    assert (row["state"], json.loads(row["result"])) == ("complete", result)
    assert row["finished_at"] is not None
    assert await pool.fetchval("SELECT count(*) FROM handler_writes") == 1


async def test_complete_with_a_result_that_is_not_json_raises_type_error_and_writes_nothing(
    pool: asyncpg.Pool[Any], worker_a: StatusStore
) -> None:
    job = make_job()
    lease = await claimed(worker_a, job)

    async with pool.acquire() as conn:
        with pytest.raises(TypeError, match="JSON-serialisable"):
            await worker_a.complete(lease, {"when": object()}, conn)
        with pytest.raises(TypeError, match="JSON-serialisable"):
            await worker_a.complete(lease, float("nan"), conn)

    assert (await job_row(pool, job.job_id))["state"] == "processing"


async def test_fail_records_the_last_error_and_a_failed_transition(
    pool: asyncpg.Pool[Any], worker_a: StatusStore
) -> None:
    job = make_job()
    lease = await claimed(worker_a, job)

    await worker_a.fail(lease, ERROR)

    stored = {**ERROR, "at": SUBMITTED.isoformat()}
    row = await job_row(pool, job.job_id)
    assert (row["state"], json.loads(row["last_error"])) == ("failed", stored)
    assert row["finished_at"] is not None
    assert (await history(pool, job.job_id))[-1] == ("failed", 1, stored)


async def test_retry_returns_the_job_to_queued_with_the_error_then_the_next_attempt_claims_it(
    pool: asyncpg.Pool[Any], worker_a: StatusStore
) -> None:
    job = make_job()
    first = await claimed(worker_a, job)

    await worker_a.retry(first, ERROR)

    row = await job_row(pool, job.job_id)
    assert (row["state"], row["attempts"], row["lease_owner"]) == ("queued", 1, None)
    assert row["finished_at"] is None
    second = await claimed(worker_a, make_job(job.job_id, attempt=2))
    assert (second.epoch, second.attempt) == (2, 2)
    stored = {**ERROR, "at": SUBMITTED.isoformat()}
    assert await history(pool, job.job_id) == [
        ("queued", 1, None),
        ("processing", 1, None),
        ("queued", 1, stored),
        ("processing", 2, None),
    ]
    assert (await job_row(pool, job.job_id))["attempts"] == 2


@pytest.mark.parametrize("final_state", ["complete", "failed", "cancelled"])
async def test_claim_of_a_job_that_already_ended_returns_its_state_and_changes_nothing(
    pool: asyncpg.Pool[Any], worker_a: StatusStore, worker_b: StatusStore, final_state: str
) -> None:
    job = make_job()
    lease = await claimed(worker_a, job)
    if final_state == "complete":
        async with pool.acquire() as conn:
            await worker_a.complete(lease, None, conn)
    elif final_state == "failed":
        await worker_a.fail(lease, ERROR)
    else:
        await worker_a.cancelled(lease, "operator asked")
    before = await history(pool, job.job_id)

    outcome = await worker_b.claim(job)

    assert outcome == final_state
    assert await history(pool, job.job_id) == before
    row = await job_row(pool, job.job_id)
    assert (row["state"], row["lease_epoch"]) == (final_state, 1)


async def test_a_redelivered_older_attempt_is_skipped_and_attempts_never_go_backwards(
    pool: asyncpg.Pool[Any], worker_a: StatusStore, worker_b: StatusStore
) -> None:
    """Attempt 2 failed and attempt 3 waits in a retry topic; attempt 1 is read again."""
    job = make_job()
    await worker_a.retry(await claimed(worker_a, job), ERROR)
    await worker_a.retry(await claimed(worker_a, make_job(job.job_id, attempt=2)), ERROR)
    before = await history(pool, job.job_id)

    outcome = await worker_b.claim(job)

    assert outcome == "queued"
    row = await job_row(pool, job.job_id)
    assert (row["state"], row["attempts"], row["lease_owner"]) == ("queued", 2, None)
    assert await history(pool, job.job_id) == before
    # The attempt the retry topic holds still runs.
    assert (await claimed(worker_b, make_job(job.job_id, attempt=3))).attempt == 3


async def test_an_in_place_retry_read_again_resumes_at_the_rows_next_attempt(
    pool: asyncpg.Pool[Any], worker_a: StatusStore, worker_b: StatusStore
) -> None:
    """ordering="key": attempt 2 ran in place and failed; its next owner reads attempt 1."""
    job = make_job()
    await worker_a.retry(await claimed(worker_a, job), ERROR)
    await worker_a.retry(await claimed(worker_a, make_job(job.job_id, attempt=2)), ERROR)

    lease = await worker_b.claim(job, in_place=True)

    assert isinstance(lease, Lease)
    assert lease.attempt == 3
    assert (await job_row(pool, job.job_id))["attempts"] == 3


@pytest.mark.parametrize("seen", [True, False], ids=["queued", "never-seen"])
async def test_a_claim_racing_a_cancel_reports_the_job_cancelled_not_a_duplicate(
    pool: asyncpg.Pool[Any], migrated: Settings, worker_a: StatusStore, seen: bool
) -> None:
    """The cancel commits while the claim waits for the row: the claim sees it as it is."""
    job = make_job()
    if seen:
        await pool.execute(
            "INSERT INTO jobs (job_id, state, attempts) VALUES ($1, 'queued', 0)", job.job_id
        )
    canceller = await db.connect(migrated)
    try:
        cancel = canceller.transaction()
        await cancel.start()
        await canceller.execute(
            "INSERT INTO jobs (job_id, state, attempts, finished_at) "
            "VALUES ($1, 'cancelled', 0, now()) "
            "ON CONFLICT (job_id) DO UPDATE SET state = 'cancelled', finished_at = now()",
            job.job_id,
        )
        claim = asyncio.create_task(worker_a.claim(job))
        await wait_for_a_lock_wait(pool)
        await cancel.commit()
        async with asyncio.timeout(DEADLINE):
            outcome = await claim
    finally:
        await canceller.close()

    assert outcome == "cancelled"


async def wait_for_a_lock_wait(pool: asyncpg.Pool[Any]) -> None:
    """Until some session of this database waits for a lock."""

    async def waiting() -> bool:
        return bool(
            await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )

    await eventually(waiting, timeout=DEADLINE, what="the claim to wait for the row lock")


async def test_cancelled_records_the_reason_in_the_transition_and_is_fenced(
    pool: asyncpg.Pool[Any], worker_a: StatusStore, worker_b: StatusStore
) -> None:
    job = make_job()
    old = await claimed(worker_a, job)
    new = await claimed(worker_b, job)

    with pytest.raises(LeaseLostError):
        await worker_a.cancelled(old, "too late")
    await worker_b.cancelled(new, "operator asked")

    assert (await job_row(pool, job.job_id))["state"] == "cancelled"
    assert (await history(pool, job.job_id))[-1] == (
        "cancelled",
        1,
        {"type": "Cancelled", "message": "operator asked"},
    )


async def test_fail_and_retry_after_a_takeover_raise_lease_lost_and_write_nothing(
    pool: asyncpg.Pool[Any], worker_a: StatusStore, worker_b: StatusStore
) -> None:
    job = make_job()
    old = await claimed(worker_a, job)
    await claimed(worker_b, job)
    before = await history(pool, job.job_id)

    with pytest.raises(LeaseLostError):
        await worker_a.fail(old, ERROR)
    with pytest.raises(LeaseLostError):
        await worker_a.retry(old, ERROR)

    assert await history(pool, job.job_id) == before
    row = await job_row(pool, job.job_id)
    assert (row["state"], row["last_error"], row["lease_owner"]) == (
        "processing",
        None,
        "worker-b",
    )


async def test_heartbeat_extends_the_lease_and_returns_false_after_a_takeover(
    pool: asyncpg.Pool[Any], worker_b: StatusStore
) -> None:
    short = StatusStore(pool, worker_id="worker-a", lease_seconds=1.0)
    job = make_job()
    lease = await claimed(short, job)
    expires = (await job_row(pool, job.job_id))["lease_expires_at"]
    long = StatusStore(pool, worker_id="worker-a", lease_seconds=600.0)

    assert await long.heartbeat(lease) is True

    extended = (await job_row(pool, job.job_id))["lease_expires_at"]
    assert extended - expires > dt.timedelta(seconds=500)
    await claimed(worker_b, job)
    assert await long.heartbeat(lease) is False


async def test_progress_updates_the_row_and_returns_false_after_a_takeover(
    pool: asyncpg.Pool[Any], worker_a: StatusStore, worker_b: StatusStore
) -> None:
    job = make_job()
    lease = await claimed(worker_a, job)

    assert await worker_a.progress(lease, 40.0, "copying") is True

    row = await job_row(pool, job.job_id)
    assert (row["progress_pct"], row["progress_message"]) == (40.0, "copying")
    assert row["progress_at"] is not None
    new = await claimed(worker_b, job)
    assert await worker_a.progress(lease, 90.0, "stale") is False
    assert await worker_b.progress(new, 10.0, None) is True
    row = await job_row(pool, job.job_id)
    assert (row["progress_pct"], row["progress_message"]) == (10.0, None)


async def test_progress_outside_0_to_100_is_refused(worker_a: StatusStore) -> None:
    lease = await claimed(worker_a, make_job())

    with pytest.raises(ValueError, match="between 0 and 100"):
        await worker_a.progress(lease, 101.0, None)


async def test_is_cancel_requested_reflects_cancel_requested_at(
    pool: asyncpg.Pool[Any], worker_a: StatusStore
) -> None:
    job = make_job()
    await claimed(worker_a, job)
    before = await worker_a.is_cancel_requested(job.job_id)

    await pool.execute("UPDATE jobs SET cancel_requested_at = now() WHERE job_id = $1", job.job_id)

    assert (before, await worker_a.is_cancel_requested(job.job_id)) == (False, True)
    assert await worker_a.is_cancel_requested(str(uuid.uuid4())) is False


async def test_a_claim_reports_a_cancel_requested_before_it(
    pool: asyncpg.Pool[Any], worker_a: StatusStore, worker_b: StatusStore
) -> None:
    """A cancel asked of a running job reaches the next owner in the claim itself."""
    job = make_job()
    first = await claimed(worker_a, job)
    await pool.execute("UPDATE jobs SET cancel_requested_at = now() WHERE job_id = $1", job.job_id)

    second = await claimed(worker_b, job)

    assert (first.cancel_requested, second.cancel_requested) == (False, True)


async def test_state_and_progress_changes_notify_the_schema_channel_after_commit(
    pool: asyncpg.Pool[Any], migrated: Settings, worker_a: StatusStore
) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await db.connect(migrated)
    await listener.add_listener(
        progress_channel(migrated.database_schema), lambda *args: heard.put_nowait(args[3])
    )
    try:
        job = make_job()
        lease = await claimed(worker_a, job)
        async with asyncio.timeout(DEADLINE):
            assert await heard.get() == job.job_id
        await worker_a.heartbeat(lease)
        await worker_a.progress(lease, 50.0, "half")
        async with asyncio.timeout(DEADLINE):
            assert await heard.get() == job.job_id
        # A heartbeat changes neither state nor progress: it woke nobody.
        assert heard.empty()
    finally:
        await listener.close()


async def test_a_batch_of_changes_is_announced_in_a_few_notifications_naming_every_job(
    pool: asyncpg.Pool[Any], migrated: Settings, worker_a: StatusStore
) -> None:
    """One notification per 200 changed jobs of a statement, not one per row."""
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await db.connect(migrated)
    await listener.add_listener(
        progress_channel(migrated.database_schema), lambda *args: heard.put_nowait(args[3])
    )
    jobs = [make_job() for _ in range(450)]
    try:
        await pool.execute(
            "INSERT INTO jobs (job_id, state) SELECT unnest($1::uuid[]), 'queued'",
            [job.job_id for job in jobs],
        )
        await pool.execute(  # changes no watched column: nobody is woken
            "UPDATE jobs SET updated_at = now() WHERE job_id = ANY($1::uuid[])",
            [job.job_id for job in jobs],
        )
        await pool.execute(
            "UPDATE jobs SET state = 'cancelled' WHERE job_id = ANY($1::uuid[])",
            [job.job_id for job in jobs[:10]],
        )
        payloads = [await asyncio.wait_for(heard.get(), DEADLINE) for _ in range(4)]
    finally:
        await listener.close()

    named = [payload.split(",") for payload in payloads]
    assert sorted(len(ids) for ids in named[:3]) == [50, 200, 200]
    assert {i for ids in named[:3] for i in ids} == {job.job_id for job in jobs}
    assert sorted(named[3]) == sorted(job.job_id for job in jobs[:10])
    assert heard.empty()


async def test_channel_of_a_schema_too_long_for_a_channel_name_matches_the_trigger(
    database_url: str,
) -> None:
    """Schema names up to 63 bytes are valid; channel names stop at 63, so they are hashed."""
    schema = f"cv_{uuid.uuid4().hex}{'x' * 28}"
    long = Settings(database_url=database_url, database_schema=schema)
    await migrations.migrate(long)
    pool = await db.create_pool(long, max_size=2)
    listener = await db.connect(long)
    heard: asyncio.Queue[str] = asyncio.Queue()
    try:
        channel = progress_channel(schema)
        await listener.add_listener(channel, lambda *args: heard.put_nowait(args[3]))
        job = make_job()
        await claimed(StatusStore(pool, worker_id="w"), job)
        async with asyncio.timeout(DEADLINE):
            assert await heard.get() == job.job_id
        assert len(channel) <= 63
    finally:
        await listener.close()
        await pool.close()
        await drop_schema(database_url, schema)


async def drop_schema(database_url: str, schema: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {db.quote_ident(schema)} CASCADE")
    finally:
        await conn.close()


async def test_concurrent_claims_and_completions_share_statements_and_keep_their_outcomes(
    worker_a: StatusStore, db: asyncpg.Connection[Any], migrated: Settings
) -> None:
    schema = f'"{migrated.database_schema}"'
    done = make_job()
    [lease] = [await worker_a.claim(done)]
    assert isinstance(lease, Lease)
    await worker_a.complete_alone(lease, "first")
    jobs = [make_job() for _ in range(40)]
    again = make_job(jobs[0].job_id)  # the same job twice at once: never in one statement
    results = await asyncio.gather(*(worker_a.claim(j) for j in [*jobs, again, done]))
    *leases, second, finished = results
    assert finished == "complete"  # already final: skipped, not claimed
    assert all(isinstance(r, Lease) and r.epoch == 1 for r in leases)
    assert isinstance(second, Lease)
    assert second.epoch == 2  # claimed after the first, so it fences it
    claimed = [r for r in leases if isinstance(r, Lease)]
    outcomes = await asyncio.gather(
        *(worker_a.complete_alone(r, {"n": i}) for i, r in enumerate(claimed)),
        return_exceptions=True,
    )
    # The first job's lease was taken over by its second claim: only that completion fails.
    assert isinstance(outcomes[0], LeaseLostError)
    assert outcomes[1:] == [None] * 39
    rows = await db.fetch(
        f"SELECT state, count(*) AS n FROM {schema}.jobs GROUP BY state ORDER BY state"
    )
    assert {r["state"]: r["n"] for r in rows} == {"complete": 40, "processing": 1}
    history = await db.fetch(
        f"SELECT state FROM {schema}.job_transitions WHERE job_id = $1 ORDER BY id",
        uuid.UUID(jobs[1].job_id),
    )
    assert [r["state"] for r in history] == ["queued", "processing", "complete"]


async def test_a_result_postgres_refuses_fails_only_its_own_completion(
    worker_a: StatusStore,
) -> None:
    jobs = [make_job() for _ in range(6)]
    leases = [
        r for r in await asyncio.gather(*(worker_a.claim(j) for j in jobs)) if isinstance(r, Lease)
    ]
    assert len(leases) == 6
    # jsonb refuses \u0000; sent in the same batch as five good results.
    results = ["fine"] * 5 + ["nul \x00 byte"]
    outcomes = await asyncio.gather(
        *(worker_a.complete_alone(lease, r) for lease, r in zip(leases, results, strict=True)),
        return_exceptions=True,
    )
    assert outcomes[:5] == [None] * 5
    assert isinstance(outcomes[5], asyncpg.PostgresError)
