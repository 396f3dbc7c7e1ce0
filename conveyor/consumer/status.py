"""Durable job status for the worker: claims, leases and the transitions they record.

Every job a worker runs goes through :class:`StatusStore`: ``claim`` before the handler,
then exactly one of ``complete``, ``fail``, ``retry`` or ``cancelled``. Each writes the
``jobs`` row and appends to ``job_transitions``, so ``JobStore.status`` can tell the full
story.

Lease fencing: a claim grants a :class:`Lease` carrying an epoch, and every claim of the
same job (a redelivery after a rebalance, a crash, an in-place retry) increments it. Every
later write names the owner and epoch it was granted and matches only while they are
still current, so a worker that lost its partition, and whose job another worker took
over, cannot record an outcome: it gets :class:`LeaseLostError` instead (defined in
``conveyor.errors``, re-exported here). ``complete`` runs on the handler's own
transaction, so the handler's database writes commit with the completion or not at all.
The SQL these statements run is kept together in ``conveyor.consumer.queries``.

Claims, the lease and the dedupe on consume (a duplicate delivery is skipped, not run
again) are in ``conveyor.consumer.claims``.

Triggers (migration ``0040_notify_per_statement``) notify :func:`progress_channel` with
the ids of the jobs whose state or progress a statement changed, joined by commas;
``JobStore.progress`` listens there.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeAlias

import asyncpg
import asyncpg.pool

from conveyor.consumer import claims, fenced_publish, queries
from conveyor.consumer.batching import Coalescer, outcome_of_one
from conveyor.consumer.claims import Lease
from conveyor.consumer.job import JobMessage, canonical_id
from conveyor.db import database_errors
from conveyor.errors import ConfigurationError, LeaseLostError

DEFAULT_LEASE_SECONDS = 30.0

AnyConnection: TypeAlias = "asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]"
"""A connection, or one acquired from a pool: every method here takes either."""

CHANNEL_PREFIX = "conveyor_progress_"
# Postgres truncates identifiers, channel names among them, to 63 bytes (NAMEDATALEN - 1).
_MAX_CHANNEL_BYTES = 63


def progress_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which a schema's job changes are announced.

    Mirrors ``notify_job_changes()`` in migration ``0040_notify_per_statement``.

    Args:
        schema: The Postgres schema holding the ``jobs`` table.
    """
    channel = CHANNEL_PREFIX + schema
    if len(channel.encode()) > _MAX_CHANNEL_BYTES:
        channel = CHANNEL_PREFIX + hashlib.md5(schema.encode(), usedforsecurity=False).hexdigest()
    return channel


#: One encoder for every result: ``json.dumps`` with an argument builds one per call.
_RESULT_ENCODER = json.JSONEncoder(allow_nan=False)


def result_json(result: Any) -> str:
    """Encodes a handler's result for the ``jobs.result`` column.

    Raises:
        TypeError: The result is not JSON-serialisable (or holds NaN or infinity, which
            Postgres' jsonb refuses).
    """
    if result is None:  # most handlers return nothing
        return "null"
    try:
        return _RESULT_ENCODER.encode(result)
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
        # Group commit: claims (and completions without ctx.db) of jobs running at the same
        # time share one statement.
        self._claims: Coalescer[tuple[JobMessage, bool], Lease | str] = Coalescer(
            self._claim_many, key=lambda item: item[0].job_id
        )
        self._completions: Coalescer[tuple[Lease, str], bool] = Coalescer(
            self._complete_many, key=lambda item: item[0].job_id
        )

    async def claim(self, job: JobMessage, *, in_place: bool = False) -> Lease | str:
        """Marks the job processing under a new lease, unless it already ended.

        A job another worker holds is taken over: Kafka gave this worker the partition,
        and the new epoch fences the previous owner. Claims made at the same time go to
        Postgres together, in one statement.

        Args:
            job: The delivery.
            in_place: The job's handler retries in place (``ordering="key"``): its next
                attempt has no message of its own, so a redelivery of its first message
                resumes at the row's next attempt (``Lease.attempt``) instead of being
                skipped as older.

        Returns:
            The new lease; or the job's state when it is not claimed: ``complete``,
            ``failed`` or ``cancelled`` when it ended, ``queued`` or ``processing`` when
            this delivery is an attempt older than the row's (a later one is queued in a
            retry topic, or runs). The worker skips the job. For a long job
            (``duration="long"``) that another worker runs under a live lease, ``HELD``:
            it is left to that worker, and this delivery waits for it to end (or for the
            lease to lapse, when that worker died) instead of restarting it.

        Raises:
            DatabaseUnavailableError: The connection to Postgres was lost.
        """
        return await self._claims.submit((job, in_place))

    async def _claim_many(
        self, items: Sequence[tuple[JobMessage, bool]]
    ) -> list[Lease | str | Exception]:
        return await claims.claim_many(
            self._pool, items, worker_id=self.worker_id, lease_seconds=self.lease_seconds
        )

    async def complete_alone(self, lease: Lease, result: Any) -> None:
        """Records the job complete when its handler wrote nothing through ``ctx.db``.

        Completions made at the same time go to Postgres together, in one statement.

        Raises:
            TypeError: ``result`` is not JSON-serialisable (nothing was written).
            LeaseLostError: The lease is no longer current; nothing was written.
            DatabaseUnavailableError: The connection to Postgres was lost.
        """
        if not await self._completions.submit((lease, result_json(result))):
            raise LeaseLostError(lease, "complete")

    async def _complete_many(self, items: Sequence[tuple[Lease, str]]) -> list[bool | Exception]:
        leases = [lease for lease, _ in items]
        try:
            with database_errors(f"completing {len(items)} job(s)"):
                async with self._pool.acquire() as conn:
                    done = await conn.fetch(
                        queries.COMPLETE_MANY,
                        [lease.job_id for lease in leases],
                        [lease.owner for lease in leases],
                        [lease.epoch for lease in leases],
                        [encoded for _, encoded in items],
                    )
        except asyncpg.PostgresError:
            if len(items) == 1:
                raise
            # One job's result was refused: complete each alone, so only that one fails.
            return [await outcome_of_one(self._complete_many([item])) for item in items]
        completed = {str(row["job_id"]) for row in done}
        return [canonical_id(lease.job_id) in completed for lease in leases]

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
        with database_errors(f"completing job {lease.job_id}"):
            done = await conn.fetchval(
                queries.COMPLETE, lease.job_id, lease.owner, lease.epoch, encoded
            )
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
        await self._end(queries.FAIL, lease, "fail", error_json(error))

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
        await self._end(queries.RETRY, lease, "retry", error_json(error))

    async def fail_after(
        self, lease: Lease, error: Mapping[str, Any], publish: Callable[[], Awaitable[Any]]
    ) -> None:
        """Publishes the job's dead letter while holding its lease, then records it failed.

        ``publish`` runs only while the job's row is locked with the lease still current,
        so a worker that lost the job never publishes (no JobFailed for a job another
        worker completes), and a takeover's claim waits for the commit. See
        :meth:`retry_after`.

        Raises:
            LeaseLostError: The lease is no longer current; nothing was published.
            DatabaseUnavailableError: The connection to Postgres was lost.
        """
        encoded = error_json(error)
        await fenced_publish.end_after(
            self._pool, queries.FAIL, lease, action="fail", error=encoded, publish=publish
        )

    async def retry_after(
        self, lease: Lease, error: Mapping[str, Any], publish: Callable[[], Awaitable[Any]]
    ) -> None:
        """Publishes the job's next attempt while holding its lease, then requeues it.

        One transaction: lock the job's row if owner, epoch and state still match; run
        ``publish`` (which returns once the broker acknowledged); record the outcome;
        commit. A fenced worker gets :class:`LeaseLostError` before it publishes, so
        it cannot fork the job's chain with a retry record of its own.

        Raises:
            LeaseLostError: The lease is no longer current; nothing was published.
            DatabaseUnavailableError: The connection to Postgres was lost.
            Exception: Whatever ``publish`` raised (nothing was recorded).
        """
        encoded = error_json(error)
        await fenced_publish.end_after(
            self._pool, queries.RETRY, lease, action="retry", error=encoded, publish=publish
        )

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
        await self._end(queries.CANCELLED, lease, "record the cancel of", error)

    async def _end(self, query: str, lease: Lease, action: str, error: str | None) -> None:
        with database_errors(f"recording job {lease.job_id}"):
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
        return await self._fenced(queries.HEARTBEAT, lease, self.lease_seconds)

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
        return await self._fenced(queries.PROGRESS, lease, float(pct), message)

    async def _fenced(self, query: str, lease: Lease, *args: Any) -> bool:
        with database_errors(f"updating job {lease.job_id}"):
            async with self._pool.acquire() as conn:
                done = await conn.fetchval(query, lease.job_id, lease.owner, lease.epoch, *args)
        return done is not None

    async def is_cancel_requested(self, job_id: str) -> bool:
        """Whether someone asked to cancel the job while it was processing.

        For inspection; the worker does not need it, because ``claim`` returns the same
        flag on the lease (``Lease.cancel_requested``) in the statement that takes it.

        Raises:
            DatabaseUnavailableError: The connection to Postgres was lost.
        """
        with database_errors(f"reading job {job_id}"):
            async with self._pool.acquire() as conn:
                requested = await conn.fetchval(queries.CANCEL_REQUESTED, job_id)
        return bool(requested)


__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "AnyConnection",
    "LeaseLostError",
    "StatusStore",
    "error_json",
    "progress_channel",
    "result_json",
]
