"""Publishing a failed job's retry or dead letter only while its lease is provably held.

A worker that lost a job (its partition went to another worker, whose claim bumped the
lease epoch) must not publish a retry record or a dead letter for it: either would fork
the job's chain, and a dead letter becomes a JobFailed for a job the new owner may
complete. So :func:`end_after` runs one transaction: it locks the job's row if owner,
epoch and state still match (``LeaseLostError`` otherwise, before anything is sent),
runs the publish (which returns once the broker acknowledged), records the outcome with
the fenced statement, and commits. A takeover's claim blocks on the row lock meanwhile.

Only the failure path uses it; the claim and complete statements are unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import asyncpg

from conveyor.db import database_errors
from conveyor.errors import LeaseLostError

if TYPE_CHECKING:
    from conveyor.consumer.claims import Lease

LOCK_LEASE = """
SELECT job_id FROM jobs
WHERE job_id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND state = 'processing'
FOR UPDATE
"""
"""Locks a job's row while the lease ($1 job_id, $2 owner, $3 epoch) is current."""


async def end_after(
    pool: asyncpg.Pool[Any],
    query: str,
    lease: Lease,
    *,
    action: str,
    error: str,
    publish: Callable[[], Awaitable[Any]],
) -> None:
    """Runs ``publish`` under the job's row lock, then the fenced ``query``, then commits.

    Args:
        pool: Connections to conveyor's schema.
        query: A fenced statement taking job id, owner, epoch and the error (JSON text).
        lease: The lease the worker holds.
        action: What is recorded, for ``LeaseLostError``.
        error: The error, as JSON text.
        publish: Sends the retry or dead letter and returns once it is acknowledged.

    Raises:
        LeaseLostError: The lease is no longer current; nothing was published.
        DatabaseUnavailableError: The connection to Postgres was lost.
        Exception: Whatever ``publish`` raised; nothing was recorded.
    """
    what = f"recording job {lease.job_id}"
    async with contextlib.AsyncExitStack() as stack:
        with database_errors(what):
            conn = await stack.enter_async_context(pool.acquire())
            transaction = conn.transaction()
            await transaction.start()
        try:
            with database_errors(what):
                held = await conn.fetchval(LOCK_LEASE, lease.job_id, lease.owner, lease.epoch)
            if held is None:
                raise LeaseLostError(lease, action)
            await publish()  # not under database_errors: its own errors stand
            with database_errors(what):
                done = await conn.fetchval(query, lease.job_id, lease.owner, lease.epoch, error)
                if done is None:  # cannot happen while the row is locked
                    raise LeaseLostError(lease, action)
                await transaction.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                await transaction.rollback()
            raise
