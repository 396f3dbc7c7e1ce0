"""What ``JobStore`` reports about a job: its status, history and progress.

:class:`JobStatus` is a frozen snapshot of one job, holding its :class:`Transition`
history and latest :class:`Progress`. ``JobStore`` (``conveyor.jobstore``) builds these
from the ``jobs`` and ``job_transitions`` tables; ``JobStatus.to_json`` gives the form
the CLI prints.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from conveyor.consumer.job import FINAL_STATES

UNKNOWN = "unknown"
"""The state reported for a job id nothing has recorded yet (or whose history was purged)."""


@dataclasses.dataclass(frozen=True)
class Transition:
    """One state change in a job's history.

    Args:
        state: The state entered: scheduled, queued, processing, complete, failed or
            cancelled.
        at: When.
        attempt: The attempt it belongs to.
        error: The error that caused it (``type``, ``message``, ``traceback``, ``at``), if any.
    """

    state: str
    at: dt.datetime
    attempt: int
    error: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Progress:
    """How far a running job is, as its handler last reported.

    Args:
        pct: Percent done, 0 to 100.
        message: What the job said it is doing.
        at: When it was reported.
    """

    pct: float
    message: str | None
    at: dt.datetime | None


@dataclasses.dataclass(frozen=True)
class JobStatus:
    """Everything recorded about one job.

    Args:
        job_id: The job's id.
        state: scheduled, queued, processing, complete, failed, cancelled, or ``unknown``
            when neither the scheduler, the ledger nor a worker has recorded the job.
        attempts: The number of the latest attempt (0 before the first).
        history: Every state change, oldest first.
        result: What the handler returned (complete jobs only).
        last_error: The latest attempt's error, if one failed.
        progress: The latest progress report of the current attempt.
        type: The job type, once the ledger or a worker has seen the job.
        key: The entity key.
        tenant_id: The owning tenant.
        priority: critical, high, normal or low.
        batch_id: The batch the job was submitted in.
        submitted_at: When the producer built the job.
        started_at: When the latest attempt started.
        finished_at: When the job ended.
        scheduled_for: When a delayed or ``run_at`` job is due (state ``scheduled``
            until the scheduler releases it).
        position: For a queued job the ledger recorded: how many jobs of its partition
            are ahead of it that the workers have not finished (its offset minus the
            worker group's committed offset); None when unknown or not queued.
    """

    job_id: str
    state: str
    attempts: int
    history: list[Transition]
    result: Any = None
    last_error: dict[str, Any] | None = None
    progress: Progress | None = None
    type: str | None = None
    key: str | None = None
    tenant_id: str | None = None
    priority: str | None = None
    batch_id: str | None = None
    submitted_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    scheduled_for: dt.datetime | None = None
    position: int | None = None

    @classmethod
    def unknown(cls, job_id: str) -> JobStatus:
        """The status of a job no worker has recorded."""
        return cls(job_id=job_id, state=UNKNOWN, attempts=0, history=[])

    @property
    def is_final(self) -> bool:
        """True once the job is complete, failed or cancelled: nothing will change."""
        return self.state in FINAL_STATES

    def to_json(self) -> dict[str, Any]:
        """The status as JSON-ready data; keys are the field names, times ISO 8601."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


__all__ = ["UNKNOWN", "JobStatus", "Progress", "Transition"]
