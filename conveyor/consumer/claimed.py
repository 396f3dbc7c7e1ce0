"""A claimed job's handler: a task of its own, under the job's lease, and its completion.

A job is claimed before its handler starts when it is long (``duration="long"``: a
heartbeat renews its lease every third of it, and a lease taken over interrupts the
handler), retries in place (``ordering="key"``) or was claimed by a redelivery; a job
that ran unclaimed is claimed when it needs to be (``conveyor.consumer.unclaimed``) and
completed here too. The completion is fenced by the lease: a worker that lost the job
gets ``LeaseLostError`` and counts it fenced, so at most one completion commits.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg

from conveyor.consumer.cancels import RunningJob, RunningJobs
from conveyor.consumer.claims import Lease
from conveyor.consumer.context import JobContext, JobTransaction
from conveyor.consumer.endings import Endings
from conveyor.consumer.handlers import HandlerSpec, invoke
from conveyor.consumer.job import JobMessage
from conveyor.consumer.outcome import Outcome, WorkerStats
from conveyor.consumer.status import LeaseLostError, StatusStore
from conveyor.observability.metrics import WorkerMetrics

log = logging.getLogger("conveyor.worker")


class ClaimedCalls:
    """Calls and completes the handlers of claimed jobs.

    Args:
        status: Durable job state with lease fencing.
        pool: Connections for ``ctx.db`` transactions.
        jobs: The handlers running here, for cancels.
        endings: Records failed and cancelled attempts.
        stats: Where outcomes are counted.
        metrics: Where completions are counted.
        lease_seconds: The lease length; long jobs renew it every third of it.
    """

    def __init__(
        self,
        *,
        status: StatusStore,
        pool: asyncpg.Pool[Any],
        jobs: RunningJobs,
        endings: Endings,
        stats: WorkerStats,
        metrics: WorkerMetrics,
        lease_seconds: float,
    ) -> None:
        self._status = status
        self._pool = pool
        self._jobs = jobs
        self._endings = endings
        self._stats = stats
        self._metrics = metrics
        self._lease_seconds = lease_seconds

    async def call(
        self, job: JobMessage, lease: Lease, spec: HandlerSpec, payload: Any
    ) -> tuple[Outcome, JobMessage | None, float]:
        """Calls the handler of a claimed job in a task of its own and records how it
        ended under ``lease``."""
        transaction = JobTransaction(self._pool, job.tenant_id)

        async def report(pct: float, message: str | None) -> None:
            await self._status.progress(lease, pct, message)

        ctx = JobContext(job, transaction=transaction, report=report, logger=log)
        task = asyncio.create_task(
            invoke(spec, ctx, payload, self._metrics.series(job.type, job.priority)),
            name=f"job-{job.job_id}",
        )
        running = self._jobs.start(job.job_id, task)
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
                return Outcome.FENCED, None, 0.0
            if running.cancel_requested:
                return await self._endings.cancelled(job, lease, running.cancel_reason), None, 0.0
            raise
        except Exception as exc:
            await transaction.finish(commit=False)
            return await self._endings.failed(job, lease, spec, exc, None)
        finally:
            self._jobs.finish(job.job_id)
            if heartbeat is not None:
                await _stop(heartbeat)
        return await self.complete(job, lease, spec, transaction, result)

    async def complete(
        self,
        job: JobMessage,
        lease: Lease,
        spec: HandlerSpec,
        transaction: JobTransaction,
        result: Any,
    ) -> tuple[Outcome, JobMessage | None, float]:
        """Records a handler's result under ``lease``: in its ``ctx.db`` transaction if it
        opened one (both commit together), else in a statement shared with others."""
        try:
            if transaction.opened:
                await self._status.complete(lease, result, await transaction.connection())
            else:
                # The handler wrote nothing through ctx.db: its completion needs no
                # transaction of its own and shares one statement with others finishing now.
                await self._status.complete_alone(lease, result)
        except LeaseLostError:
            await transaction.finish(commit=False)
            self._stats.fenced += 1
            log.warning("job %s: lease lost to another worker; completion refused", lease.job_id)
            return Outcome.FENCED, None, 0.0
        except TypeError as exc:  # the result is not JSON-serialisable
            await transaction.finish(commit=False)
            return await self._endings.failed(job, lease, spec, exc, None)
        except BaseException:
            await transaction.finish(commit=False)
            raise
        await transaction.finish(commit=True)
        self._stats.completed += 1
        self._metrics.series(job.type, job.priority).completed.inc()
        return Outcome.COMPLETED, None, 0.0

    async def _heartbeat(self, lease: Lease, running: RunningJob) -> None:
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            try:
                renewed = await self._status.heartbeat(lease)
            except Exception as exc:
                # A database blip must not end the job: the next beat tries again, and if
                # the lease lapses meanwhile and another worker claims the job, this
                # worker's completion is fenced.
                log.warning("job %s: lease not renewed, will retry: %s", lease.job_id, exc)
                continue
            if not renewed:
                log.warning("job %s: lease lost while running; interrupting it", lease.job_id)
                running.lease_lost = True
                running.interrupt()
                return


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancels a helper task and waits for it without taking on its exception.

    ``asyncio.wait`` never raises the task's error, so the caller's own result or
    exception stands; a cancel of the caller itself still propagates.
    """
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled() and task.exception() is not None:
        log.warning("a job's helper task failed: %r", task.exception())


__all__ = ["ClaimedCalls"]
