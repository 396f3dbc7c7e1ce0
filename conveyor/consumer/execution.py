"""Running one job: claim its lease, call its handler, record how it ended.

Every outcome is durable before the job's offset may be committed: a completion
commits in the same transaction as the handler's ``ctx.db`` writes, and a lease epoch
fences a worker that lost the job (``LeaseLostError``), so at most one completion of
a job ever commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import enum
import logging
import time
import traceback
from typing import Any

import asyncpg

from conveyor.consumer.context import JobContext, JobTransaction
from conveyor.consumer.handlers import HandlerRegistry, HandlerSpec
from conveyor.consumer.job import JobMessage
from conveyor.consumer.status import Lease, LeaseLostError, StatusStore
from conveyor.errors import ContractError
from conveyor.schemas.payload import PayloadCodec

log = logging.getLogger("conveyor.worker")

TRACEBACK_LINES = 20
#: How long a cancel for a job not (yet) running here is remembered, and how many.
EARLY_CANCEL_TTL = 600.0
EARLY_CANCEL_MAX = 10_000


class Outcome(enum.Enum):
    """How one delivery of a job ended."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # already final: a duplicate, or cancelled before it ran
    FENCED = "fenced"  # another worker owns the job now; its outcome is that worker's


@dataclasses.dataclass
class WorkerStats:
    """Counters of one worker process; they only grow (``max_*`` are high-water marks)."""

    started: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    duplicates_skipped: int = 0
    fenced: int = 0
    undecodable: int = 0
    rebalances: int = 0
    max_in_flight: int = 0
    max_buffered: int = 0


def error_record(exc: BaseException, *, reason: str | None = None) -> dict[str, Any]:
    """The JSON record of an attempt's error: type, message, traceback tail and time."""
    lines = traceback.format_exception(exc)
    record: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": str(exc) or type(exc).__name__,
        "traceback": "".join(lines[-TRACEBACK_LINES:]),
        "at": dt.datetime.now(dt.UTC).isoformat(),
    }
    if reason is not None:
        record["reason"] = reason
    return record


@dataclasses.dataclass
class _Running:
    task: asyncio.Task[Any]
    cancel_requested: bool = False
    lease_lost: bool = False


class JobRunner:
    """Runs jobs for one worker.

    Args:
        status: Durable job state with lease fencing.
        pool: Connections for ``ctx.db`` transactions and completions.
        registry: The worker's handlers.
        codec: Decodes payloads (JSON, or Avro for types with a schema).
        stats: Where outcomes are counted.
        lease_seconds: The lease length; long jobs renew it every third of it.
    """

    def __init__(
        self,
        *,
        status: StatusStore,
        pool: asyncpg.Pool[Any],
        registry: HandlerRegistry,
        codec: PayloadCodec,
        stats: WorkerStats,
        lease_seconds: float,
    ) -> None:
        self._status = status
        self._pool = pool
        self._registry = registry
        self._codec = codec
        self._stats = stats
        self._lease_seconds = lease_seconds
        self._running: dict[str, _Running] = {}
        # Cancels that arrived before their job's handler started here (claim races them).
        self._early_cancels: dict[str, float] = {}

    def cancel(self, job_id: str) -> bool:
        """Interrupts a running job (a cancel command); True if it runs here.

        A cancel for a job that is not running here is remembered for a while, so a job
        whose handler starts just after the command arrived is still interrupted.
        """
        running = self._running.get(job_id)
        if running is None:
            now = time.monotonic()
            if len(self._early_cancels) >= EARLY_CANCEL_MAX:
                self._early_cancels = {
                    j: t for j, t in self._early_cancels.items() if now - t < EARLY_CANCEL_TTL
                }
            if len(self._early_cancels) < EARLY_CANCEL_MAX:
                self._early_cancels[job_id] = now
            return False
        running.cancel_requested = True
        running.task.cancel()
        return True

    async def run(self, job: JobMessage) -> Outcome:
        """Runs one delivered job to a durable outcome.

        Raises:
            asyncio.CancelledError: The worker is shutting down; the job was rolled back
                and stays with its lease, so it is redelivered and taken over later.
        """
        claim = await self._status.claim(job)
        if isinstance(claim, str):
            if claim == "cancelled":
                self._stats.cancelled += 1
            else:
                self._stats.duplicates_skipped += 1
            return Outcome.SKIPPED
        self._stats.started += 1
        if await self._status.is_cancel_requested(job.job_id):
            return await self._record_cancel(claim)
        spec = self._registry.get(job.type)
        if spec is None:
            error = LookupError(f"no handler is registered for job type {job.type!r}")
            return await self._record_failure(claim, error, "HandlerMissing")
        try:
            payload = self._codec.decode(job.type, job.payload, job.content_type)
        except ContractError as exc:
            return await self._record_failure(claim, exc, "Deserialization")
        return await self._call(job, claim, spec, payload)

    async def _call(
        self, job: JobMessage, lease: Lease, spec: HandlerSpec, payload: Any
    ) -> Outcome:
        transaction = JobTransaction(self._pool, job.tenant_id)

        async def report(pct: float, message: str | None) -> None:
            await self._status.progress(lease, pct, message)

        ctx = JobContext(job, transaction=transaction, report=report, logger=log)
        task = asyncio.create_task(self._invoke(spec, ctx, payload), name=f"job-{job.job_id}")
        running = _Running(task)
        self._running[job.job_id] = running
        if self._early_cancels.pop(job.job_id, None) is not None:
            self.cancel(job.job_id)
        heartbeat = (
            asyncio.create_task(self._heartbeat(lease, running))
            if spec.duration == "long"
            else None
        )
        try:
            result = await task
        except asyncio.CancelledError:
            await transaction.finish(commit=False)
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the worker is shutting down
            if running.lease_lost:
                self._stats.fenced += 1
                return Outcome.FENCED
            if running.cancel_requested:
                return await self._record_cancel(lease)
            raise
        except TimeoutError as exc:
            await transaction.finish(commit=False)
            return await self._record_failure(lease, exc, "Timeout")
        except Exception as exc:
            await transaction.finish(commit=False)
            return await self._record_failure(lease, exc, None)
        finally:
            self._running.pop(job.job_id, None)
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
        return await self._complete(lease, transaction, result)

    async def _invoke(self, spec: HandlerSpec, ctx: JobContext, payload: Any) -> Any:
        async with asyncio.timeout(spec.timeout):
            if spec.is_async:
                return await spec.func(ctx, payload)
            return await asyncio.to_thread(spec.func, ctx, payload)

    async def _complete(self, lease: Lease, transaction: JobTransaction, result: Any) -> Outcome:
        try:
            conn = await transaction.connection()
            await self._status.complete(lease, result, conn)
        except LeaseLostError:
            await transaction.finish(commit=False)
            self._stats.fenced += 1
            log.warning("job %s: lease lost to another worker; completion refused", lease.job_id)
            return Outcome.FENCED
        except TypeError as exc:  # the result is not JSON-serialisable
            await transaction.finish(commit=False)
            return await self._record_failure(lease, exc, None)
        except BaseException:
            await transaction.finish(commit=False)
            raise
        await transaction.finish(commit=True)
        self._stats.completed += 1
        return Outcome.COMPLETED

    async def _record_failure(
        self, lease: Lease, exc: BaseException, reason: str | None
    ) -> Outcome:
        log.warning("job %s failed (attempt %d): %r", lease.job_id, lease.attempt, exc)
        try:
            await self._status.fail(lease, error_record(exc, reason=reason))
        except LeaseLostError:
            self._stats.fenced += 1
            return Outcome.FENCED
        self._stats.failed += 1
        return Outcome.FAILED

    async def _record_cancel(self, lease: Lease) -> Outcome:
        try:
            await self._status.cancelled(lease, "cancel requested")
        except LeaseLostError:
            self._stats.fenced += 1
            return Outcome.FENCED
        self._stats.cancelled += 1
        return Outcome.CANCELLED

    async def _heartbeat(self, lease: Lease, running: _Running) -> None:
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            if not await self._status.heartbeat(lease):
                log.warning("job %s: lease lost while running; interrupting it", lease.job_id)
                running.lease_lost = True
                running.task.cancel()
                return
