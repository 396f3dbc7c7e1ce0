"""Durable job status for the worker: claims, leases and the transitions they record.

Every job a worker runs goes through :class:`StatusStore`: ``claim`` before the handler,
then exactly one of ``complete``, ``fail``, ``retry`` or ``cancelled``. Each writes the
``jobs`` row and appends to ``job_transitions``, so ``JobStore.status`` can tell the full
story.

Lease fencing: a claim grants a :class:`Lease` carrying an epoch, and every claim of the
same job (a redelivery after a rebalance, a crash, an in-place retry) increments it. Every
later write names the owner and epoch it was granted and matches only while they are
still current, so a worker that lost its partition, and whose job another worker took
over, cannot record an outcome: it gets :class:`LeaseLostError` instead. ``complete``
runs on the handler's own transaction, so the handler's database writes commit with the
completion or not at all.

Dedupe on consume: ``claim`` refuses a job already complete, failed or cancelled and
returns that state, so a duplicate delivery is skipped rather than run again.

A trigger (migration ``0003_worker_status``) notifies :func:`progress_channel` with the
job id whenever a job's state or progress changes; ``JobStore.progress`` listens there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any, TypeAlias

import asyncpg
import asyncpg.pool

from conveyor.consumer.job import JobMessage
from conveyor.errors import (
    ConfigurationError,
    ConveyorError,
    DatabaseUnavailableError,
    MigrationError,
)

DEFAULT_LEASE_SECONDS = 30.0

AnyConnection: TypeAlias = "asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]"
"""A connection, or one acquired from a pool: every method here takes either."""

CHANNEL_PREFIX = "conveyor_progress_"
# Postgres truncates identifiers, channel names among them, to 63 bytes (NAMEDATALEN - 1).
_MAX_CHANNEL_BYTES = 63

# Named queries. $1 job_id, $2 lease owner, $3 lease epoch in every fenced statement, and
# `state = 'processing'` in each, so a fenced write matches nothing once the job moved on.

_CLAIM = """
WITH claimed AS (
    INSERT INTO jobs AS j (
        job_id, type, key, tenant_id, priority, batch_id, dedupe_key, max_attempts,
        submitted_at, state, attempts, started_at, lease_owner, lease_epoch,
        lease_expires_at, updated_at
    )
    VALUES (
        $1, $2, $3, $4, $5, $6, $7, $8,
        $9, 'processing', $10, now(), $11, 1,
        now() + make_interval(secs => $12), now()
    )
    ON CONFLICT (job_id) DO UPDATE SET
        type = EXCLUDED.type,
        key = EXCLUDED.key,
        tenant_id = EXCLUDED.tenant_id,
        priority = EXCLUDED.priority,
        batch_id = EXCLUDED.batch_id,
        dedupe_key = EXCLUDED.dedupe_key,
        max_attempts = EXCLUDED.max_attempts,
        submitted_at = EXCLUDED.submitted_at,
        state = 'processing',
        attempts = EXCLUDED.attempts,
        started_at = now(),
        lease_owner = EXCLUDED.lease_owner,
        lease_epoch = j.lease_epoch + 1,
        lease_expires_at = EXCLUDED.lease_expires_at,
        progress_pct = NULL,
        progress_message = NULL,
        progress_at = NULL,
        updated_at = now()
    WHERE j.state NOT IN ('complete', 'failed', 'cancelled')
    RETURNING j.job_id, j.lease_epoch, (j.xmax = 0) AS inserted
), history AS (
    INSERT INTO job_transitions (job_id, state, at, attempt)
    SELECT c.job_id, t.state, t.at, $10
    FROM claimed AS c
    CROSS JOIN (VALUES (1, 'queued', $9::timestamptz), (2, 'processing', now()))
        AS t (ord, state, at)
    WHERE c.inserted OR t.state = 'processing'
    ORDER BY t.ord
)
SELECT lease_epoch FROM claimed
"""

_STATE = "SELECT state FROM jobs WHERE job_id = $1"

# clock_timestamp(), not now(): this runs at the end of the handler's transaction, and
# now() would say when that transaction began.
_COMPLETE = """
WITH done AS (
    UPDATE jobs
    SET state = 'complete', result = $4::text::jsonb, finished_at = clock_timestamp(),
        lease_owner = NULL, lease_expires_at = NULL, updated_at = clock_timestamp()
    WHERE job_id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND state = 'processing'
    RETURNING job_id, attempts, finished_at
)
INSERT INTO job_transitions (job_id, state, at, attempt)
SELECT job_id, 'complete', finished_at, attempts FROM done
RETURNING job_id
"""

_FAIL = """
WITH done AS (
    UPDATE jobs
    SET state = 'failed', last_error = $4::text::jsonb, finished_at = now(),
        lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
    WHERE job_id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND state = 'processing'
    RETURNING job_id, attempts, finished_at
)
INSERT INTO job_transitions (job_id, state, at, attempt, error)
SELECT job_id, 'failed', finished_at, attempts, $4::text::jsonb FROM done
RETURNING job_id
"""

_RETRY = """
WITH requeued AS (
    UPDATE jobs
    SET state = 'queued', last_error = $4::text::jsonb,
        lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
    WHERE job_id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND state = 'processing'
    RETURNING job_id, attempts, updated_at
)
INSERT INTO job_transitions (job_id, state, at, attempt, error)
SELECT job_id, 'queued', updated_at, attempts, $4::text::jsonb FROM requeued
RETURNING job_id
"""

_CANCELLED = """
WITH done AS (
    UPDATE jobs
    SET state = 'cancelled', finished_at = now(),
        lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
    WHERE job_id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND state = 'processing'
    RETURNING job_id, attempts, finished_at
)
INSERT INTO job_transitions (job_id, state, at, attempt, error)
SELECT job_id, 'cancelled', finished_at, attempts, $4::text::jsonb FROM done
RETURNING job_id
"""

_HEARTBEAT = """
UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $4)
WHERE job_id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND state = 'processing'
RETURNING job_id
"""

_PROGRESS = """
UPDATE jobs
SET progress_pct = $4, progress_message = $5, progress_at = now(), updated_at = now()
WHERE job_id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND state = 'processing'
RETURNING job_id
"""

_CANCEL_REQUESTED = "SELECT cancel_requested_at IS NOT NULL FROM jobs WHERE job_id = $1"


class LeaseLostError(ConveyorError):
    """The job's lease was taken over, or the job already ended: this outcome is discarded.

    Another worker claimed the job (Kafka moved its partition), so this worker's result
    must not be recorded. The caller rolls back whatever it wrote with the outcome.

    Args:
        lease: The lease that was no longer current.
        action: What the worker tried to record (``complete``, ``fail``, ...).
    """

    def __init__(self, lease: Lease, action: str) -> None:
        self.lease = lease
        self.action = action
        super().__init__(
            f"job {lease.job_id}: cannot {action}: lease epoch {lease.epoch} of worker "
            f"{lease.owner} is no longer current (another worker took the job over, or it "
            "already ended); the outcome was discarded"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """The right to record one run of a job, granted by :meth:`StatusStore.claim`.

    Args:
        job_id: The job.
        owner: The worker id that claimed it.
        epoch: The grant's number; every claim of the job increments it.
        attempt: The attempt this run is.
    """

    job_id: str
    owner: str
    epoch: int
    attempt: int


def progress_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which a schema's job changes are announced.

    Mirrors ``notify_job_change()`` in migration ``0003_worker_status``.

    Args:
        schema: The Postgres schema holding the ``jobs`` table.
    """
    channel = CHANNEL_PREFIX + schema
    if len(channel.encode()) > _MAX_CHANNEL_BYTES:
        channel = CHANNEL_PREFIX + hashlib.md5(schema.encode(), usedforsecurity=False).hexdigest()
    return channel


def result_json(result: Any) -> str:
    """Encodes a handler's result for the ``jobs.result`` column.

    Raises:
        TypeError: The result is not JSON-serialisable (or holds NaN or infinity, which
            Postgres' jsonb refuses).
    """
    try:
        return json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"the handler's result must be JSON-serialisable (dict, list, str, number, bool "
            f"or None), got {type(result).__name__}: {exc}"
        ) from exc


def error_json(error: Mapping[str, Any]) -> str:
    """Encodes an error record (``type``, ``message``, ``traceback``, ``at``) as JSON.

    Lenient on purpose: an error must be recorded whatever it holds, so datetimes become
    ISO strings and anything else unserialisable its ``str()``.
    """
    return json.dumps(_finite(dict(error)), default=_lenient)


def _lenient(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


@contextlib.contextmanager
def _database_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (asyncpg.PostgresConnectionError, OSError) as exc:
        raise DatabaseUnavailableError(
            f"lost the connection to Postgres while {what}: {exc}"
        ) from exc
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as exc:
        raise MigrationError(
            f"the job tables are missing or out of date ({exc}) while {what}; "
            "run `conveyor migrate`"
        ) from exc


class StatusStore:
    """Records the lifecycle of the jobs a worker runs, fenced by lease epochs.

    Args:
        pool: A pool whose connections have conveyor's schema first on the search path
            (``conveyor.db.create_pool``).
        worker_id: This worker's id, recorded as the lease owner.
        lease_seconds: How long a claim or heartbeat keeps the lease before it expires.

    Raises:
        ConfigurationError: ``worker_id`` is empty or ``lease_seconds`` is not positive.
    """

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        *,
        worker_id: str,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        if not worker_id:
            raise ConfigurationError("worker_id", "must not be empty")
        if not lease_seconds > 0:
            raise ConfigurationError("lease_seconds", f"must be > 0, got {lease_seconds}")
        self._pool = pool
        self.worker_id = worker_id
        self.lease_seconds = float(lease_seconds)

    async def claim(self, job: JobMessage) -> Lease | str:
        """Marks the job processing under a new lease, unless it already ended.

        A job another worker holds is taken over: Kafka gave this worker the partition,
        and the new epoch fences the previous owner.

        Returns:
            The new lease; or, when the job is already ``complete``, ``failed`` or
            ``cancelled``, that state (the worker skips the job).

        Raises:
            DatabaseUnavailableError: The connection to Postgres was lost.
        """
        with _database_errors(f"claiming job {job.job_id}"):
            async with self._pool.acquire() as conn:
                epoch = await conn.fetchval(
                    _CLAIM,
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
                    self.worker_id,
                    self.lease_seconds,
                )
                if epoch is None:
                    # Final states are terminal, so this fresh read cannot go stale.
                    state: str = await conn.fetchval(_STATE, job.job_id)
                    return state
        return Lease(job_id=job.job_id, owner=self.worker_id, epoch=int(epoch), attempt=job.attempt)

    async def complete(self, lease: Lease, result: Any, conn: AnyConnection) -> None:
        """Records the job complete with its result, inside the handler's transaction.

        Args:
            lease: The lease from :meth:`claim`.
            result: The handler's return value; stored as JSON.
            conn: The connection of the handler's open transaction, so the completion
                commits together with the handler's writes.

        Raises:
            TypeError: ``result`` is not JSON-serialisable (nothing was written).
            LeaseLostError: The lease is no longer current; roll the transaction back.
            DatabaseUnavailableError: The connection to Postgres was lost.
        """
        encoded = result_json(result)
        with _database_errors(f"completing job {lease.job_id}"):
            done = await conn.fetchval(_COMPLETE, lease.job_id, lease.owner, lease.epoch, encoded)
        if done is None:
            raise LeaseLostError(lease, "complete")

    async def fail(self, lease: Lease, error: Mapping[str, Any]) -> None:
        """Records the job failed for good, with its last error.

        Args:
            lease: The lease from :meth:`claim`.
            error: ``{"type", "message", "traceback", "at"}`` of the last attempt.

        Raises:
            LeaseLostError: The lease is no longer current; nothing was written.
            DatabaseUnavailableError: The connection to Postgres was lost.
        """
        await self._end(_FAIL, lease, "fail", error_json(error))

    async def retry(self, lease: Lease, error: Mapping[str, Any]) -> None:
        """Returns the job to ``queued`` after a failed attempt that will be retried.

        The error goes into the history and ``last_error``; the lease is released and the
        attempt count kept (the next claim sets the next attempt's number).

        Args:
            lease: The lease from :meth:`claim`.
            error: ``{"type", "message", "traceback", "at"}`` of the failed attempt.

        Raises:
            LeaseLostError: The lease is no longer current; nothing was written.
            DatabaseUnavailableError: The connection to Postgres was lost.
        """
        await self._end(_RETRY, lease, "retry", error_json(error))

    async def cancelled(self, lease: Lease, reason: str | None = None) -> None:
        """Records the job cancelled (after the worker interrupted it).

        Args:
            lease: The lease from :meth:`claim`.
            reason: Why, kept in the transition's error as ``{"type": "Cancelled",
                "message": reason}``.

        Raises:
            LeaseLostError: The lease is no longer current; nothing was written.
            DatabaseUnavailableError: The connection to Postgres was lost.
        """
        error = None if reason is None else error_json({"type": "Cancelled", "message": reason})
        await self._end(_CANCELLED, lease, "record the cancel of", error)

    async def _end(self, query: str, lease: Lease, action: str, error: str | None) -> None:
        with _database_errors(f"recording job {lease.job_id}"):
            async with self._pool.acquire() as conn:
                done = await conn.fetchval(query, lease.job_id, lease.owner, lease.epoch, error)
        if done is None:
            raise LeaseLostError(lease, action)

    async def heartbeat(self, lease: Lease) -> bool:
        """Extends the lease by ``lease_seconds`` from now.

        Returns:
            True while the lease is ours; False once another worker took the job over
            or it ended (the caller should stop the job).

        Raises:
            DatabaseUnavailableError: The connection to Postgres was lost.
        """
        return await self._fenced(_HEARTBEAT, lease, self.lease_seconds)

    async def progress(self, lease: Lease, pct: float, message: str | None) -> bool:
        """Records how far the job is, and wakes whoever follows it.

        Args:
            lease: The lease from :meth:`claim`.
            pct: Percent done, 0 to 100.
            message: What the job is doing, for people following it.

        Returns:
            True while the lease is ours; False once it was lost (nothing was written).

        Raises:
            ValueError: ``pct`` is not between 0 and 100.
            DatabaseUnavailableError: The connection to Postgres was lost.
        """
        if not 0.0 <= pct <= 100.0:
            raise ValueError(f"progress must be between 0 and 100 percent, got {pct}")
        return await self._fenced(_PROGRESS, lease, float(pct), message)

    async def _fenced(self, query: str, lease: Lease, *args: Any) -> bool:
        with _database_errors(f"updating job {lease.job_id}"):
            async with self._pool.acquire() as conn:
                done = await conn.fetchval(query, lease.job_id, lease.owner, lease.epoch, *args)
        return done is not None

    async def is_cancel_requested(self, job_id: str) -> bool:
        """Whether someone asked to cancel the job while it was processing.

        The worker asks right after ``claim``, to catch a cancel that raced the start and
        whose control command it may have read before it had the job.

        Raises:
            DatabaseUnavailableError: The connection to Postgres was lost.
        """
        with _database_errors(f"reading job {job_id}"):
            async with self._pool.acquire() as conn:
                requested = await conn.fetchval(_CANCEL_REQUESTED, job_id)
        return bool(requested)


__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "AnyConnection",
    "Lease",
    "LeaseLostError",
    "StatusStore",
    "error_json",
    "progress_channel",
    "result_json",
]
