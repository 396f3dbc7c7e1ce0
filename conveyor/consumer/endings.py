"""Recording how a job's attempt ended badly: retried, dead-lettered or cancelled.

A failed attempt is retried (through a retry topic, or in place for ``ordering="key"``)
or dead-lettered; either way the next message is published only while the job's lease
is provably held (its row locked, ``StatusStore.retry_after`` / ``fail_after``), so a
worker that lost the job cannot fork its chain. A cancel is recorded under the lease.
"""

from __future__ import annotations

import dataclasses
import logging

from opentelemetry import trace

from conveyor.consumer import failures
from conveyor.consumer.claims import Lease
from conveyor.consumer.failures import RetryPolicy
from conveyor.consumer.handlers import HandlerSpec
from conveyor.consumer.job import JobMessage
from conveyor.consumer.outcome import Outcome, WorkerStats
from conveyor.consumer.publisher import FailurePublisher
from conveyor.consumer.status import LeaseLostError, StatusStore
from conveyor.observability.metrics import WorkerMetrics

log = logging.getLogger("conveyor.worker")


class Endings:
    """Records failed and cancelled attempts for one worker's runner.

    Args:
        status: Durable job state with lease fencing.
        publisher: Sends failed jobs to the retry topics or the DLQ.
        stats: Where outcomes are counted.
        metrics: The Prometheus metrics outcomes go to.
    """

    def __init__(
        self,
        *,
        status: StatusStore,
        publisher: FailurePublisher,
        stats: WorkerStats,
        metrics: WorkerMetrics,
    ) -> None:
        self._status = status
        self._publisher = publisher
        self._stats = stats
        self._metrics = metrics

    async def failed(
        self,
        job: JobMessage,
        lease: Lease,
        spec: HandlerSpec | None,
        exc: BaseException,
        reason: str | None,
    ) -> tuple[Outcome, JobMessage | None, float]:
        """Retries the job or dead-letters it; the next message is acked before the state moves."""
        latest = failures.attempt_error(exc, job.attempt)
        errors = failures.history_with(job.errors, latest)
        policy = spec.retry if spec is not None and isinstance(spec.retry, RetryPolicy) else None
        limit = job.max_attempts or (
            spec.max_attempts if spec else failures.DEFAULT_POLICY.max_attempts
        )
        verdict = failures.classify(exc, attempt=job.attempt, max_attempts=limit, reason=reason)
        log.warning("job %s attempt %d failed: %r", job.job_id, job.attempt, exc)
        span = trace.get_current_span()
        span.record_exception(exc)
        span.set_status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
        labels = self._metrics.labels(job.type, job.priority)
        try:
            if verdict.retry:
                delay = (policy or failures.DEFAULT_POLICY).delay(job.attempt)
                if spec is not None and spec.ordering == "key":
                    # Retry in place: only this key's mailbox waits out the backoff.
                    await self._status.retry(lease, failures.error_json(latest))
                    self._stats.retried += 1
                    self._metrics.retried.labels(*labels).inc()
                    again = dataclasses.replace(job, attempt=job.attempt + 1, errors=errors)
                    return Outcome.RETRIED, again, delay
                # Published only while the lease is provably held (the job's row locked),
                # so a worker that lost the job cannot fork its chain.
                await self._status.retry_after(
                    lease,
                    failures.error_json(latest),
                    lambda: self._publisher.retry(job, errors, delay),
                )
                self._stats.retried += 1
                self._metrics.retried.labels(*labels).inc()
                return Outcome.RETRIED, None, 0.0
            assert verdict.reason is not None
            reason = verdict.reason
            await self._status.fail_after(
                lease,
                failures.error_json(latest, reason),
                lambda: self._publisher.dead(job, errors, reason),
            )
        except LeaseLostError:
            self._stats.fenced += 1
            return Outcome.FENCED, None, 0.0
        self._stats.failed += 1
        self._stats.dead_lettered += 1
        self._metrics.failed.labels(*labels, verdict.reason).inc()
        self._metrics.dead_lettered.labels(job.priority).inc()
        return Outcome.FAILED, None, 0.0

    async def cancelled(self, job: JobMessage, lease: Lease, reason: str | None = None) -> Outcome:
        try:
            await self._status.cancelled(lease, reason or "cancel requested")
        except LeaseLostError:
            self._stats.fenced += 1
            return Outcome.FENCED
        self._stats.cancelled += 1
        self._metrics.cancelled.labels(*self._metrics.labels(job.type, job.priority)).inc()
        return Outcome.CANCELLED


__all__ = ["Endings"]
