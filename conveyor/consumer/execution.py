"""Running one job: claim its lease, call its handler, record how it ended.

Every outcome is durable before the job's offset may be committed: a completion
commits in the same transaction as the handler's ``ctx.db`` writes, and a lease epoch
fences a worker that lost the job (``LeaseLostError``), so at most one completion of
a job ever commits. Failed and cancelled attempts are recorded by ``endings``; the
handlers running here and the cancels aimed at them are kept by ``cancels``; a claimed
job's handler is called and completed by ``claimed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import asyncpg

from conveyor.consumer import failures
from conveyor.consumer.cancels import RunningJobs
from conveyor.consumer.claimed import ClaimedCalls
from conveyor.consumer.claims import HELD, Lease
from conveyor.consumer.context import JobContext, JobTransaction
from conveyor.consumer.deadlines import Deadlines
from conveyor.consumer.endings import Endings
from conveyor.consumer.handlers import HandlerRegistry, HandlerSpec, invoke
from conveyor.consumer.job import FINAL_STATES, JobMessage
from conveyor.consumer.outcome import Outcome, WorkerStats
from conveyor.consumer.publisher import FailurePublisher
from conveyor.consumer.status import StatusStore, result_json
from conveyor.consumer.unclaimed import CLAIM_AFTER, DeferredClaim, UnclaimedStore
from conveyor.errors import ContractError, Problem, UnknownSchemaError, ValidationError
from conveyor.observability import logs, tracing
from conveyor.observability.metrics import WorkerMetrics
from conveyor.schemas.contracts import CONTENT_TYPE_JSON
from conveyor.schemas.payload import PayloadCodec

log = logging.getLogger("conveyor.worker")

#: Set by the dispatcher for the job it runs: frees the job's concurrency slot and hands
#: its key to the key's next job once its handler is done, before its outcome is written
#: (unclaimed completions only).
HANDLER_DONE: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "conveyor_handler_done", default=None
)


#: How often a delivery of a long job that another worker runs asks whether it ended.
HELD_POLL = 2.0


class JobRunner:
    """Runs jobs for one worker.

    Args:
        status: Durable job state with lease fencing.
        pool: Connections for ``ctx.db`` transactions and completions.
        registry: The worker's handlers.
        codec: Decodes payloads (JSON, or Avro for types with a schema).
        stats: Where outcomes are counted.
        metrics: The Prometheus metrics outcomes and timings go to.
        consumer_groups: The consumer group of each job topic, for span attributes.
        lease_seconds: The lease length; long jobs renew it every third of it.
        publisher: Sends failed jobs to the retry topics or the DLQ.
        sleep: Waits out an in-place retry's backoff (``ordering="key"``);
            ``conveyor.testing`` passes its fake clock's.
        unclaimed: Reads and completes jobs that run before they are claimed; None
            claims every job before its handler starts.
        claim_after: How long a handler runs unclaimed before its job is claimed.
    """

    def __init__(
        self,
        *,
        status: StatusStore,
        pool: asyncpg.Pool[Any],
        registry: HandlerRegistry,
        codec: PayloadCodec,
        stats: WorkerStats,
        metrics: WorkerMetrics,
        consumer_groups: Mapping[str, str],
        lease_seconds: float,
        publisher: FailurePublisher,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        unclaimed: UnclaimedStore | None = None,
        claim_after: float = CLAIM_AFTER,
    ) -> None:
        self._status = status
        self._unclaimed = unclaimed
        self._claims_due = Deadlines(claim_after)
        self._sleep = sleep
        self._pool = pool
        self._registry = registry
        self._codec = codec
        self._stats = stats
        self._metrics = metrics
        self._groups = consumer_groups
        self._lease_seconds = lease_seconds
        self._jobs = RunningJobs()
        self._endings = Endings(status=status, publisher=publisher, stats=stats, metrics=metrics)
        self._claimed = ClaimedCalls(
            status=status,
            pool=pool,
            jobs=self._jobs,
            endings=self._endings,
            stats=stats,
            metrics=metrics,
            lease_seconds=lease_seconds,
        )

    def cancel(self, job_id: str, reason: str | None = None) -> bool:
        """Interrupts a running job (a cancel command); True if it runs here.

        A cancel for a job that is not running here is remembered for a while
        (``cancels.EARLY_CANCEL_TTL``), so a job whose handler starts just after the
        command arrived is still interrupted.

        Args:
            job_id: The job to interrupt.
            reason: Why (``conveyor cancel --reason``), kept in the job's history.
        """
        return self._jobs.cancel(job_id, reason)

    def prefetch(self, jobs: Iterable[JobMessage]) -> None:
        """Reads ahead, in one statement, the rows of just-fetched jobs that may run
        unclaimed, so none of them waits on its read when it starts."""
        if self._unclaimed is not None:
            self._unclaimed.prefetch(
                job.job_id for job in jobs if _may_run_unclaimed(self._registry.get(job.type))
            )

    async def run(self, job: JobMessage, *, lost: asyncio.Event | None = None) -> Outcome:
        """Runs one delivered job to a durable outcome.

        A job whose handler has ``ordering="key"`` retries in place: it waits out the
        backoff here, holding only its key's mailbox, and runs again with the next attempt.
        A long job that another worker still runs under a live lease (its partition moved
        in a rebalance) waits here too, asking every ``HELD_POLL`` seconds, until it
        ended there (this delivery is then a duplicate) or its lease lapsed (taken over).

        Args:
            job: The delivery.
            lost: Set when this worker loses the job's partition. An in-place retry then
                stops at once instead of running again: the partition's new owner reads
                the job again and owns its next attempt (a new claim here would steal the
                lease back and run the key out of order on two workers).

        Raises:
            asyncio.CancelledError: The worker is shutting down; the job was rolled back
                and stays with its lease, so it is redelivered and taken over later.
        """
        unclaimed = self._unclaimed
        if unclaimed is not None:
            await unclaimed.take_turn(job.job_id)
        try:
            while True:
                outcome, again, delay = await self._traced_attempt(job)
                if again is None:
                    return outcome
                if not await self._backoff(delay, lost):
                    self._stats.fenced += 1
                    log.info(
                        "job %s: partition lost during its backoff; left to its new owner",
                        job.job_id,
                    )
                    return Outcome.FENCED
                job = again
        finally:
            if unclaimed is not None:
                unclaimed.delivered(job.job_id)

    async def _backoff(self, delay: float, lost: asyncio.Event | None) -> bool:
        """Waits ``delay`` seconds; False as soon as ``lost`` is set (before or during)."""
        if lost is None:
            await self._sleep(delay)
            return True
        if lost.is_set():
            return False
        sleeping = asyncio.ensure_future(self._sleep(delay))
        watching = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait({sleeping, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            watching.cancel()
        return not lost.is_set()

    async def _traced_attempt(self, job: JobMessage) -> tuple[Outcome, JobMessage | None, float]:
        """One attempt in a CONSUMER span that continues the submitter's trace.

        Without a tracer provider there is no span to make: the attempt runs bare.
        """
        fields = logs.bind_job_fields(job.log_fields)
        try:
            if not tracing.enabled():
                return await self._attempt(job)
            return await self._spanned_attempt(job)
        finally:
            logs.unbind_job_fields(fields)

    async def _spanned_attempt(self, job: JobMessage) -> tuple[Outcome, JobMessage | None, float]:
        attributes = {
            **tracing.kafka_attributes(
                operation="process",
                destination=job.topic,
                partition=job.partition,
                offset=job.offset,
                group=self._groups.get(job.topic),
                key=job.key,
            ),
            **tracing.job_attributes(
                job_id=job.job_id, job_type=job.type, priority=job.priority, attempt=job.attempt
            ),
        }
        with tracing.process_span(
            job.headers, destination=job.topic, attributes=attributes
        ) as span:
            outcome, again, delay = await self._attempt(job)
            span.set_attribute("job.outcome", outcome.value)
            return outcome, again, delay

    async def _attempt(self, job: JobMessage) -> tuple[Outcome, JobMessage | None, float]:
        spec = self._registry.get(job.type)
        if self._unclaimed is not None and _may_run_unclaimed(spec):
            known = await self._unclaimed.known(job.job_id)
            if known is None or known.runs_unclaimed(job.attempt):
                assert spec is not None
                return await self._start(job, None, spec)
            # Ended, held by a worker, a cancel asked for, or an older attempt: the claim
            # decides. An ended job too: the read does not wait for row locks, and a
            # replay from the DLQ requeues the row in a transaction that commits only
            # after its message is out, so "failed" may be read for a job about to run.
        claim = await self._status.claim(job, in_place=spec is not None and spec.ordering == "key")
        if claim == HELD:
            # A long job still running on the worker that had its partition before a
            # rebalance: wait for it to end there (then this delivery is a duplicate) or
            # for its lease to lapse (that worker died: then this one takes it over).
            log.debug("job %s runs on another worker; waiting for it to end", job.job_id)
            return Outcome.SKIPPED, job, min(self._lease_seconds / 3, HELD_POLL)
        if isinstance(claim, str):
            return self._skipped(job, claim), None, 0.0
        if claim.attempt != job.attempt:
            # An in-place retry redelivered: it resumes at the row's next attempt.
            job = dataclasses.replace(job, attempt=claim.attempt)
        if claim.cancel_requested:
            self._started(job)
            return await self._endings.cancelled(job, claim), None, 0.0
        if spec is None:
            self._started(job)
            error = LookupError(f"no handler is registered for job type {job.type!r}")
            return await self._endings.failed(job, claim, None, error, failures.HANDLER_MISSING)
        return await self._start(job, claim, spec)

    def _started(self, job: JobMessage) -> None:
        self._stats.started += 1
        self._metrics.observe_start(
            job.type,
            job.priority,
            attempt=job.attempt,
            submitted_at=job.submitted_at,
            not_before=job.not_before,
        )

    def _skipped(self, job: JobMessage, state: str) -> Outcome:
        """Counts a delivery not run: cancelled before it ran, or a duplicate."""
        labels = self._metrics.labels(job.type, job.priority)
        if state == "cancelled":
            self._stats.cancelled += 1
            self._metrics.cancelled.labels(*labels).inc()
        else:
            self._stats.duplicates_skipped += 1
            self._metrics.duplicates_skipped.labels(*labels).inc()
        return Outcome.SKIPPED

    async def _start(
        self, job: JobMessage, claim: Lease | None, spec: HandlerSpec
    ) -> tuple[Outcome, JobMessage | None, float]:
        """Decodes the payload and calls the handler, claimed (``claim``) or not yet."""
        self._started(job)
        try:
            payload = await self._decode_payload(job)
            if spec.schema is not None and job.content_type == CONTENT_TYPE_JSON:
                # A producer that did not know the type's schema sent JSON: hold it to the
                # handler's contract before the handler sees it.
                problems = self._codec.problems(job.type, payload)
                if problems:
                    raise ValidationError(
                        [Problem(0, "payload", problem) for problem in problems], batch=False
                    )
        except (UnknownSchemaError, ContractError, ValidationError) as exc:
            lease = claim if claim is not None else await DeferredClaim(self._status, job).settled()
            if isinstance(lease, str):
                return self._skipped(job, lease), None, 0.0
            # An unknown schema id may be a registry follower that lags: not the payload's
            # fault yet, so retried through the ladder and dead-lettered only when the
            # attempts run out.
            reason = None if isinstance(exc, UnknownSchemaError) else failures.VALIDATION
            return await self._endings.failed(job, lease, spec, exc, reason)
        if claim is None:
            return await self._call_unclaimed(job, DeferredClaim(self._status, job), spec, payload)
        return await self._claimed.call(job, claim, spec, payload)

    async def _decode_payload(self, job: JobMessage) -> Any:
        """Decodes the payload; in a thread when that needs a registry request."""
        if self._codec.needs_registry(job.payload, job.content_type):
            return await asyncio.to_thread(
                self._codec.decode, job.type, job.payload, job.content_type
            )
        return self._codec.decode(job.type, job.payload, job.content_type)

    async def _call_unclaimed(
        self, job: JobMessage, deferred: DeferredClaim, spec: HandlerSpec, payload: Any
    ) -> tuple[Outcome, JobMessage | None, float]:
        """Calls a handler before its job is claimed (``conveyor.consumer.unclaimed``).

        The job is claimed when it runs past ``claim_after``, touches ``ctx.db``, reports
        progress, fails or is cancelled; else its completion is its only status write.
        """
        transaction = JobTransaction(self._pool, job.tenant_id, before_open=deferred.lease)

        async def report(pct: float, message: str | None) -> None:
            await self._status.progress(await deferred.lease(), pct, message)

        ctx = JobContext(job, transaction=transaction, report=report, logger=log)
        started_at = dt.datetime.now(dt.UTC)
        # The handler runs in this task (a task per handler cost a create and a switch per
        # job): an interrupt cancels this task while it awaits inside the handler.
        current = asyncio.current_task()
        assert current is not None
        running = self._jobs.start(job.job_id, current, inline=True)
        # A claim refused (the job was cancelled while it ran unclaimed, or ended
        # elsewhere) interrupts the handler: its outcome could not be recorded.
        deferred.when_refused(running.refuse)
        self._claims_due.add(deferred, deferred.start)
        try:
            try:
                if running.cancel_requested:  # a cancel came before the start
                    raise asyncio.CancelledError
                result = await invoke(
                    spec, ctx, payload, self._metrics.series(job.type, job.priority)
                )
            finally:
                self._claims_due.discard(deferred)
                self._jobs.finish(job.job_id)
                for _ in range(running.interrupts):
                    current.uncancel()  # ours; a shutdown's cancel stays counted
        except asyncio.CancelledError:
            await transaction.finish(commit=False)
            if current.cancelling() or not running.interrupted:
                raise  # the worker is shutting down
            lease = await deferred.settled()
            if isinstance(lease, str):
                return self._skipped(job, lease), None, 0.0
            return await self._endings.cancelled(job, lease, running.cancel_reason), None, 0.0
        except Exception as exc:
            await transaction.finish(commit=False)
            lease = await deferred.settled()
            if isinstance(lease, str):
                return self._skipped(job, lease), None, 0.0
            return await self._endings.failed(job, lease, spec, exc, None)
        if not deferred.started:
            # The handler is done; its concurrency slot and its key can run other jobs
            # while the completion waits for its batch.
            release = HANDLER_DONE.get()
            if release is not None:
                release()
        return await self._finish_unclaimed(
            job, deferred, spec, transaction, result=result, started_at=started_at
        )

    async def _finish_unclaimed(
        self,
        job: JobMessage,
        deferred: DeferredClaim,
        spec: HandlerSpec,
        transaction: JobTransaction,
        *,
        result: Any,
        started_at: dt.datetime,
    ) -> tuple[Outcome, JobMessage | None, float]:
        """Records a handler's result: in one statement if its job is still unclaimed."""
        encoded: str | None = None
        if not deferred.started and self._unclaimed is not None:
            with contextlib.suppress(TypeError):  # the claimed path fails the job with it
                encoded = result_json(result)
        if encoded is not None and self._unclaimed is not None:
            state = await self._unclaimed.complete(job, encoded, started_at)
            if state is None:
                self._stats.completed += 1
                self._metrics.series(job.type, job.priority).completed.inc()
                return Outcome.COMPLETED, None, 0.0
            if state in FINAL_STATES:
                return self._skipped(job, state), None, 0.0
            # A worker holds the job (or counted a later attempt): claim it, as any
            # redelivery would, and record this run's outcome under the lease.
        lease = await deferred.settled()
        if isinstance(lease, str):
            await transaction.finish(commit=False)
            return self._skipped(job, lease), None, 0.0
        return await self._claimed.complete(job, lease, spec, transaction, result)


def _may_run_unclaimed(spec: HandlerSpec | None) -> bool:
    """Whether jobs of ``spec`` may start unclaimed: short ones that retry by topic.

    Long jobs hold a lease from their start (heartbeats renew it), and in-place retries
    (``ordering="key"``) need the claim's attempt count before they run.
    """
    return spec is not None and spec.duration != "long" and spec.ordering != "key"
