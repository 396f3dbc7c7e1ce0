"""How a delivery of a job ended, and the worker's counters of those endings."""

from __future__ import annotations

import dataclasses
import enum


class Outcome(enum.Enum):
    """How one delivery of a job ended."""

    COMPLETED = "completed"
    RETRIED = (
        "retried"  # another attempt is scheduled (retry topic, or in place for ordering="key")
    )
    FAILED = "failed"  # dead-lettered: the DLQ has it and the job's state is failed
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # already final: a duplicate, or cancelled before it ran
    FENCED = "fenced"  # another worker owns the job now; its outcome is that worker's


@dataclasses.dataclass
class WorkerStats:
    """Counters of one worker process; they only grow (``max_*`` are high-water marks)."""

    started: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    cancelled: int = 0
    duplicates_skipped: int = 0
    fenced: int = 0
    undecodable: int = 0
    unrecorded: int = 0  # outcomes that failed to be recorded and were tried again
    rebalances: int = 0
    max_in_flight: int = 0
    max_buffered: int = 0


__all__ = ["Outcome", "WorkerStats"]
