"""Claiming a job: the lease a claim grants, and the one statement that claims a batch.

``StatusStore.claim`` (``conveyor.consumer.status``) gathers the claims made at the same
time and sends them to :func:`claim_many`, which runs ``CLAIM_MANY``
(``conveyor.consumer.queries``) once for all of them. A claimed job gets a :class:`Lease`
carrying an epoch, and every claim of the same job (a redelivery after a rebalance, a
crash, an in-place retry) increments it, which fences whoever held the job before.

Dedupe on consume: a claim refuses a job already complete, failed or cancelled, and a
delivery of an attempt older than the row's, and returns the job's state, so a duplicate
delivery is skipped rather than run again (and ``attempts`` never goes backwards). A long
job another worker runs under a live lease is ``HELD``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import asyncpg

from conveyor.consumer import queries
from conveyor.consumer.batching import outcome_of_one
from conveyor.consumer.job import JobMessage, canonical_id
from conveyor.db import database_errors
from conveyor.errors import ConveyorError

HELD = "held"
"""What ``StatusStore.claim`` returns for a long job another worker runs under a live lease."""


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """The right to record one run of a job, granted by :meth:`StatusStore.claim`.

    Args:
        job_id: The job.
        owner: The worker id that claimed it.
        epoch: The grant's number; every claim of the job increments it.
        attempt: The attempt this run is.
        cancel_requested: A cancel was requested before this claim; the worker records
            the job cancelled instead of running it.
    """

    job_id: str
    owner: str
    epoch: int
    attempt: int
    cancel_requested: bool = False


def claim_args(job: JobMessage) -> tuple[Any, ...]:
    """One job's values for the arrays $1..$10 of ``CLAIM_MANY`` (and of the unclaimed
    completion, which writes the same columns)."""
    return (
        job.job_id,
        job.type,
        job.key,
        job.tenant_id,
        job.priority,
        job.batch_id,
        job.dedupe_key,
        job.max_attempts,
        job.submitted_at,
        job.attempt,
    )


async def claim_many(
    pool: asyncpg.Pool[Any],
    items: Sequence[tuple[JobMessage, bool]],
    *,
    worker_id: str,
    lease_seconds: float,
) -> list[Lease | str | Exception]:
    """Claims a batch of jobs in one statement; see ``StatusStore.claim``.

    Args:
        pool: Connections to conveyor's schema.
        items: Each job with whether its handler retries in place.
        worker_id: The lease owner to record.
        lease_seconds: How long the new leases last.

    Returns:
        For each job, in order: its new lease; or its state when it is not claimed
        (``HELD`` for a long job another worker runs); or the error that refused it alone.

    Raises:
        DatabaseUnavailableError: The connection to Postgres was lost.
    """
    jobs = [job for job, _ in items]
    try:
        with database_errors(f"claiming {len(jobs)} job(s)"):
            async with pool.acquire() as conn:
                rows = await conn.fetch(
                    queries.CLAIM_MANY,
                    *(list(column) for column in zip(*map(claim_args, jobs), strict=True)),
                    worker_id,
                    lease_seconds,
                    [job.job_id for job, in_place in items if in_place],
                    [job.job_id for job in jobs if job.duration == "long"],
                )
                by_id = {str(row["job_id"]): row for row in rows}
                missed = [job.job_id for job in jobs if canonical_id(job.job_id) not in by_id]
                # A new statement, so a new snapshot: a cancel that committed while the
                # claim waited for the row is read as it is, not as it was.
                states = (
                    {str(r["job_id"]): HELD if r["held"] else str(r["state"])
                     for r in await conn.fetch(queries.STATES, missed, worker_id)}
                    if missed
                    else {}
                )  # fmt: skip
    except asyncpg.PostgresError:
        if len(items) == 1:
            raise
        # One job's data was refused: claim each alone, so only that one fails.
        return [
            await outcome_of_one(
                claim_many(pool, [item], worker_id=worker_id, lease_seconds=lease_seconds)
            )
            for item in items
        ]
    claimed: list[Lease | str | Exception] = []
    for job in jobs:
        canonical = canonical_id(job.job_id)
        row = by_id.get(canonical)
        if row is None:
            state = states.get(canonical)
            if state == HELD and job.duration != "long":
                state = "processing"  # an older attempt: a later one runs elsewhere
            claimed.append(
                state
                if state is not None
                else ConveyorError(f"job {job.job_id} was neither claimed nor found")
            )
            continue
        claimed.append(
            Lease(
                job_id=job.job_id,
                owner=worker_id,
                epoch=int(row["lease_epoch"]),
                attempt=int(row["attempts"]),
                cancel_requested=bool(row["cancel_requested"]),
            )
        )
    return claimed


__all__ = ["HELD", "Lease", "claim_args", "claim_many"]
