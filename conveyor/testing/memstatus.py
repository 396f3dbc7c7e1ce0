"""Job status kept in memory, with the lifecycle ``StatusStore`` records in Postgres.

:class:`MemoryStatus` is the in-process mode's ``StatusStore``: the worker's real
``JobRunner`` claims, completes, retries, fails and cancels through it, and it writes
what the SQL in ``conveyor.consumer.queries`` writes (a ``queued`` then ``processing``
transition on the first claim, a new lease epoch on every claim, fenced outcomes, errors
and results as the same JSON). :meth:`MemoryStatus.status` answers with the
``JobStatus`` that ``JobStore.status`` would.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from conveyor.consumer.claims import Lease
from conveyor.consumer.job import FINAL_STATES, JobMessage
from conveyor.consumer.status import LeaseLostError, StatusStore, error_json, result_json
from conveyor.jobstatus import JobStatus, Progress, Transition
from conveyor.testing.clock import FakeClock


@dataclasses.dataclass
class _Row:
    """One job, as the ``jobs`` table and its ``job_transitions`` hold it."""

    job_id: str
    state: str
    attempts: int = 0
    type: str | None = None
    key: str | None = None
    tenant_id: str | None = None
    priority: str | None = None
    batch_id: str | None = None
    submitted_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    result: Any = None
    last_error: dict[str, Any] | None = None
    progress: Progress | None = None
    lease_owner: str | None = None
    lease_epoch: int = 0
    cancel_requested: bool = False
    scheduled_for: dt.datetime | None = None
    history: list[Transition] = dataclasses.field(default_factory=list)


def canonical(job_id: str) -> str:
    """The job id as Postgres returns a uuid: lower case, with hyphens.

    Raises:
        ValueError: ``job_id`` is not a UUID.
    """
    try:
        return str(uuid.UUID(str(job_id).strip()))
    except ValueError:
        raise ValueError(f"job id {job_id!r} is not a UUID") from None


def _cancel_error(reason: str | None) -> dict[str, Any] | None:
    if reason is None:
        return None
    loaded: dict[str, Any] = json.loads(error_json({"type": "Cancelled", "message": reason}))
    return loaded


class MemoryStatus(StatusStore):
    """Records each job's lifecycle in memory, fenced by lease epochs like Postgres.

    The base class's constructor is not called: it would want a connection pool.

    Args:
        clock: Dates the transitions.
        worker_id: The lease owner recorded on claims.
    """

    def __init__(self, clock: FakeClock, *, worker_id: str = "test-worker") -> None:
        self.worker_id = worker_id
        self.lease_seconds = 30.0
        self._clock = clock
        self._rows: dict[str, _Row] = {}

    # -- what JobStore reads ----------------------------------------------------------

    def status(self, job_id: str) -> JobStatus:
        """The job's status; ``unknown`` for a job no worker has recorded.

        Raises:
            ValueError: ``job_id`` is not a UUID.
        """
        row = self._rows.get(canonical(job_id))
        if row is None:
            return JobStatus.unknown(canonical(job_id))
        return JobStatus(
            job_id=row.job_id,
            state=row.state,
            attempts=row.attempts,
            history=list(row.history),
            result=row.result,
            last_error=row.last_error,
            progress=row.progress,
            type=row.type,
            key=row.key,
            tenant_id=row.tenant_id,
            priority=row.priority,
            batch_id=row.batch_id,
            submitted_at=row.submitted_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            scheduled_for=row.scheduled_for,
        )

    def job_ids(self) -> list[str]:
        """Every job recorded, in the order first seen."""
        return list(self._rows)

    def request_cancel(self, job_id: str, reason: str | None) -> str:
        """``JobStore.cancel``'s row change; returns the state after it.

        A job no worker has seen, or a queued one, is cancelled at once. A processing
        job is marked, and stays processing until its runner records the cancel.
        """
        job_id = canonical(job_id)
        now = self._clock.now()
        row = self._rows.get(job_id)
        if row is None:
            row = _Row(job_id=job_id, state="cancelled", cancel_requested=True, finished_at=now)
            row.history.append(Transition("cancelled", now, 0, _cancel_error(reason)))
            self._rows[job_id] = row
            return "cancelled"
        if row.state in FINAL_STATES:
            return row.state
        row.cancel_requested = True
        if row.state in ("queued", "scheduled"):
            row.state, row.finished_at, row.lease_owner = "cancelled", now, None
            row.history.append(Transition("cancelled", now, row.attempts, _cancel_error(reason)))
            return "cancelled"
        return row.state

    def schedule(self, envelope: Mapping[str, Any], due: dt.datetime) -> bool:
        """The scheduler's ``INSERT_JOBS``: records a new delayed job ``scheduled``.

        Returns:
            False when the job id was already recorded (left as it is).
        """
        job_id = canonical(str(envelope["job_id"]))
        if job_id in self._rows:
            return False
        row = _Row(
            job_id=job_id,
            state="scheduled",
            type=envelope["type"],
            key=envelope.get("key"),
            tenant_id=envelope.get("tenant_id"),
            priority=envelope.get("priority"),
            batch_id=envelope.get("batch_id"),
            submitted_at=envelope.get("submitted_at"),
            scheduled_for=due,
        )
        row.history.append(Transition("scheduled", envelope.get("submitted_at") or due, 0))
        self._rows[job_id] = row
        return True

    def release(self, job_id: str) -> bool:
        """The dispatcher's ``QUEUE_JOBS``: a scheduled job becomes ``queued``.

        Returns:
            False when the job is no longer scheduled (cancelled): it is not released.
        """
        row = self._rows.get(canonical(job_id))
        if row is None or row.state != "scheduled":
            return row is None or row.state not in FINAL_STATES
        row.state = "queued"
        row.history.append(Transition("queued", self._clock.now(), row.attempts))
        return True

    def requeue(self, job_id: str, envelope: Mapping[str, Any], error: Mapping[str, Any]) -> None:
        """A DLQ replay's row change: the job is queued again at attempt 0, history kept."""
        job_id = canonical(job_id)
        now = self._clock.now()
        row = self._rows.setdefault(job_id, _Row(job_id=job_id, state="queued"))
        row.type, row.key, row.tenant_id = envelope["type"], envelope["key"], envelope["tenant_id"]
        row.priority, row.batch_id = envelope["priority"], envelope["batch_id"]
        row.state, row.attempts, row.submitted_at = "queued", 0, envelope["submitted_at"]
        row.lease_owner, row.cancel_requested, row.result, row.progress = None, False, None, None
        row.started_at = row.finished_at = None
        loaded: dict[str, Any] = json.loads(error_json(error))
        row.history.append(Transition("queued", now, 0, loaded))

    def fail_unrecorded(self, record: Mapping[str, Any], error: Mapping[str, Any]) -> None:
        """The DLQ sink's ``FAIL_JOB``: marks failed a dead job no live lease holds."""
        job_id = canonical(str(record["job_id"]))
        row = self._rows.get(job_id)
        now = self._clock.now()
        if row is None:
            row = _Row(
                job_id=job_id,
                state="queued",
                type=record.get("type"),
                key=record.get("key"),
                tenant_id=record.get("tenant_id"),
                priority=record.get("priority"),
                submitted_at=record.get("submitted_at"),
            )
            self._rows[job_id] = row
        elif row.state in FINAL_STATES or row.lease_owner is not None:
            return
        loaded: dict[str, Any] = json.loads(error_json(error))
        row.state, row.last_error, row.finished_at = "failed", loaded, now
        row.attempts = max(row.attempts, int(record["attempts"]))
        row.history.append(Transition("failed", now, row.attempts, loaded))

    # -- what the worker writes -------------------------------------------------------

    async def claim(self, job: JobMessage, *, in_place: bool = False) -> Lease | str:
        """Marks the job processing under a new lease, unless it already ended or this
        delivery is an attempt older than the row's (``CLAIM_MANY``'s rules)."""
        job_id = canonical(job.job_id)
        now = self._clock.now()
        row = self._rows.get(job_id)
        attempt = job.attempt
        if row is not None:
            if row.state in FINAL_STATES:
                return row.state
            if in_place:
                retried = row.state == "queued" and row.last_error is not None
                attempt = max(attempt, row.attempts + int(retried))
            elif attempt < row.attempts:
                return row.state
        if row is None:
            row = _Row(job_id=job_id, state="queued")
            row.history.append(Transition("queued", job.submitted_at, attempt))
            self._rows[job_id] = row
        row.type, row.key, row.tenant_id = job.type, job.key, job.tenant_id
        row.priority, row.batch_id, row.submitted_at = job.priority, job.batch_id, job.submitted_at
        row.state, row.attempts, row.started_at = "processing", attempt, now
        row.lease_owner, row.lease_epoch = self.worker_id, row.lease_epoch + 1
        row.progress = None
        row.history.append(Transition("processing", now, attempt))
        return Lease(
            job_id=job.job_id,
            owner=self.worker_id,
            epoch=row.lease_epoch,
            attempt=attempt,
            cancel_requested=row.cancel_requested,
        )

    def _held(self, lease: Lease, action: str) -> _Row:
        row = self._rows.get(canonical(lease.job_id))
        if (
            row is None
            or row.state != "processing"
            or row.lease_owner != lease.owner
            or row.lease_epoch != lease.epoch
        ):
            raise LeaseLostError(lease, action)
        return row

    def _finish(self, lease: Lease, action: str, state: str, error: Any) -> None:
        row = self._held(lease, action)
        now = self._clock.now()
        row.state, row.lease_owner = state, None
        if state != "queued":
            row.finished_at = now
        if error is not None and state != "cancelled":
            row.last_error = error
        row.history.append(Transition(state, now, row.attempts, error))

    async def complete_alone(self, lease: Lease, result: Any) -> None:
        """Records the job complete with its result."""
        encoded = result_json(result)
        row = self._held(lease, "complete")
        row.result = json.loads(encoded)
        self._finish(lease, "complete", "complete", None)

    async def complete(self, lease: Lease, result: Any, conn: Any) -> None:
        """Records the job complete; the handler's ``ctx.db`` work commits right after."""
        await self.complete_alone(lease, result)

    async def fail(self, lease: Lease, error: Mapping[str, Any]) -> None:
        """Records the job failed for good, with its last error."""
        self._finish(lease, "fail", "failed", json.loads(error_json(error)))

    async def retry(self, lease: Lease, error: Mapping[str, Any]) -> None:
        """Returns the job to ``queued`` after a failed attempt that will be retried."""
        self._finish(lease, "retry", "queued", json.loads(error_json(error)))

    async def fail_after(
        self, lease: Lease, error: Mapping[str, Any], publish: Callable[[], Awaitable[Any]]
    ) -> None:
        """Publishes the dead letter only while the lease is current, then records it."""
        self._held(lease, "fail")
        await publish()
        await self.fail(lease, error)

    async def retry_after(
        self, lease: Lease, error: Mapping[str, Any], publish: Callable[[], Awaitable[Any]]
    ) -> None:
        """Publishes the next attempt only while the lease is current, then requeues."""
        self._held(lease, "retry")
        await publish()
        await self.retry(lease, error)

    async def cancelled(self, lease: Lease, reason: str | None = None) -> None:
        """Records the job cancelled."""
        self._finish(lease, "record the cancel of", "cancelled", _cancel_error(reason))

    async def heartbeat(self, lease: Lease) -> bool:
        """True while the lease is current."""
        try:
            self._held(lease, "heartbeat")
        except LeaseLostError:
            return False
        return True

    async def progress(self, lease: Lease, pct: float, message: str | None) -> bool:
        """Records how far the job is.

        Raises:
            ValueError: ``pct`` is not between 0 and 100.
        """
        if not 0.0 <= pct <= 100.0:
            raise ValueError(f"progress must be between 0 and 100 percent, got {pct}")
        try:
            row = self._held(lease, "progress")
        except LeaseLostError:
            return False
        row.progress = Progress(pct=float(pct), message=message, at=self._clock.now())
        return True

    async def is_cancel_requested(self, job_id: str) -> bool:
        """Whether someone asked to cancel the job."""
        row = self._rows.get(canonical(job_id))
        return row is not None and row.cancel_requested
