"""The handlers running in one worker, and the cancel commands aimed at them.

A cancel command (``conveyor cancel`` of a running job, read from the control topic by
every worker) interrupts the handler's task where the job runs. A command can arrive
just before the handler starts here (its claim races the command), so a cancel for a job
not running is remembered for ``EARLY_CANCEL_TTL`` and applied when the job starts.

A short job's handler runs in its delivery's own task (``inline``), not a task of its
own: the interrupt then cancels that task while it awaits inside the handler, and a
handler that ended is never interrupted (its delivery is writing the outcome).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

#: How long a cancel for a job not (yet) running here is remembered, and how many.
EARLY_CANCEL_TTL = 600.0
EARLY_CANCEL_MAX = 10_000


@dataclasses.dataclass
class RunningJob:
    """One handler running here, and why it was interrupted, if it was."""

    task: asyncio.Task[Any]
    cancel_requested: bool = False
    cancel_reason: str | None = None
    lease_lost: bool = False  # its lease was taken over: the job is another worker's now
    refused: bool = False  # its deferred claim was refused: the job ended elsewhere
    ended: bool = False  # the handler returned or raised: nothing left to interrupt
    interrupts: int = 0  # cancels of ``task`` made here (an inline task uncancels them)

    def refuse(self) -> None:
        """Interrupts the handler because its job's claim was refused."""
        if not self.ended:
            self.refused = True
            self.interrupt()

    def interrupt(self) -> None:
        """Cancels the handler's task (counted, so an inline task can undo it)."""
        self.interrupts += 1
        self.task.cancel()

    @property
    def interrupted(self) -> bool:
        """This worker interrupted the handler: a cancel, or a refused claim."""
        return self.cancel_requested or self.refused


class RunningJobs:
    """The handlers running here by job id, and the cancels that came early."""

    def __init__(self) -> None:
        self._running: dict[str, RunningJob] = {}
        self._early: dict[str, tuple[float, str | None]] = {}  # job id -> (when, reason)

    def start(self, job_id: str, task: asyncio.Task[Any], *, inline: bool = False) -> RunningJob:
        """Registers a handler's task; a cancel that came early interrupts it at once.

        Args:
            inline: ``task`` is the delivery's own, about to call the handler: an early
                cancel only sets ``cancel_requested``, and the caller skips the handler.
        """
        running = self._running[job_id] = RunningJob(task)
        early = self._early.pop(job_id, None)
        # A stale cancel is dropped, never applied: the same job id may come back days
        # later, replayed from the DLQ.
        if early is not None and time.monotonic() - early[0] < EARLY_CANCEL_TTL:
            if inline:
                running.cancel_requested = True
                running.cancel_reason = early[1]
            else:
                self.cancel(job_id, early[1])
        return running

    def finish(self, job_id: str) -> None:
        """Forgets a handler that ended."""
        running = self._running.pop(job_id, None)
        if running is not None:
            running.ended = True

    def cancel(self, job_id: str, reason: str | None = None) -> bool:
        """Interrupts a running job (a cancel command); True if it runs here.

        A cancel for a job that is not running here is remembered for a while, so a job
        whose handler starts just after the command arrived is still interrupted.

        Args:
            job_id: The job to interrupt.
            reason: Why (``conveyor cancel --reason``), kept in the job's history.
        """
        running = self._running.get(job_id)
        if running is None:
            now = time.monotonic()
            if len(self._early) >= EARLY_CANCEL_MAX:
                self._early = {
                    j: e for j, e in self._early.items() if now - e[0] < EARLY_CANCEL_TTL
                }
            if len(self._early) < EARLY_CANCEL_MAX:
                self._early[job_id] = (now, reason)
            return False
        running.cancel_requested = True
        running.cancel_reason = reason
        running.interrupt()
        return True


__all__ = ["EARLY_CANCEL_MAX", "EARLY_CANCEL_TTL", "RunningJob", "RunningJobs"]
