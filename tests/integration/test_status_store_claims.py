"""The worker's StatusStore against a real Postgres: claims, the lease epochs they grant,
and the deliveries a claim skips.

Each test migrates its own random schema (the ``migrated`` fixture) and builds job
messages by hand (``tests.status_helpers``), as the worker would after decoding them.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import pytest

from conveyor import db
from conveyor.consumer.claims import Lease
from conveyor.consumer.status import LeaseLostError, StatusStore
from conveyor.settings import Settings
from tests.status_helpers import DEADLINE, ERROR, SUBMITTED, claimed, history, job_row, make_job
from tests.worker_helpers import eventually


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


async def test_a_claim_reports_a_cancel_requested_before_it(
    pool: asyncpg.Pool[Any], worker_a: StatusStore, worker_b: StatusStore
) -> None:
    """A cancel asked of a running job reaches the next owner in the claim itself."""
    job = make_job()
    first = await claimed(worker_a, job)
    await pool.execute("UPDATE jobs SET cancel_requested_at = now() WHERE job_id = $1", job.job_id)

    second = await claimed(worker_b, job)

    assert (first.cancel_requested, second.cancel_requested) == (False, True)


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
