"""Cancelling a job in Postgres: the ``jobs`` row a cancel writes or flags.

:func:`cancel_row` is the database half of ``JobStore.cancel`` (``conveyor.jobstore``),
run in the caller's transaction. A job not yet run is cancelled there and then: a job id
no worker has seen gets a ``cancelled`` row, so the worker that later consumes the job
skips it; a ``queued`` or ``scheduled`` row becomes ``cancelled`` (and a scheduled one is
never released). A running job's row is only flagged (``cancel_requested_at``); the store
then asks the worker running it to interrupt it, on the control topic. A job that ended is
left as it is.
"""

from __future__ import annotations

from conveyor.consumer.job import FINAL_STATES
from conveyor.consumer.status import AnyConnection, error_json
from conveyor.errors import ConveyorError
from conveyor.scheduling import store as scheduling_store

_LOCK = "SELECT state FROM jobs WHERE job_id = $1 FOR UPDATE"

_CANCEL_UNSEEN = """
WITH created AS (
    INSERT INTO jobs (job_id, state, attempts, cancel_requested_at, finished_at)
    VALUES ($1, 'cancelled', 0, now(), now())
    ON CONFLICT (job_id) DO NOTHING
    RETURNING job_id, finished_at
)
INSERT INTO job_transitions (job_id, state, at, attempt, error)
SELECT job_id, 'cancelled', finished_at, 0, $2::text::jsonb FROM created
RETURNING job_id
"""

_CANCEL_QUEUED = """
WITH done AS (
    UPDATE jobs
    SET state = 'cancelled', cancel_requested_at = now(), finished_at = now(),
        lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
    WHERE job_id = $1
    RETURNING job_id, attempts, finished_at
)
INSERT INTO job_transitions (job_id, state, at, attempt, error)
SELECT job_id, 'cancelled', finished_at, attempts, $2::text::jsonb FROM done
"""

_REQUEST_CANCEL = """
UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()), updated_at = now()
WHERE job_id = $1
"""


def cancel_error(reason: str | None) -> str | None:
    """The error a cancel records in the job's history: its reason, if it has one."""
    return None if reason is None else error_json({"type": "Cancelled", "message": reason})


async def cancel_row(conn: AnyConnection, job_id: str, error: str | None) -> tuple[str, str | None]:
    """Cancels or flags the job's row; its state after, and before (None: no row)."""
    # A scheduled row is locked first, as the dispatcher does, then the job's row:
    # that lock orders this cancel against a release or a claim of the same job.
    await conn.execute(scheduling_store.LOCK_ONE, job_id)
    state: str | None = await conn.fetchval(_LOCK, job_id)
    if state is None:
        if await conn.fetchval(_CANCEL_UNSEEN, job_id, error) is not None:
            return "cancelled", None
        # A worker inserted the row first (the insert waited for it): lock that row.
        state = await conn.fetchval(_LOCK, job_id)
        if state is None:
            raise ConveyorError(f"job {job_id} vanished while being cancelled; try again")
    if state in FINAL_STATES:
        return state, state
    if state in ("queued", "scheduled"):
        await conn.execute(_CANCEL_QUEUED, job_id, error)
        if state == "scheduled":  # before its release: the dispatcher skips the row
            await conn.execute(scheduling_store.SKIP_ONE, job_id)
        return "cancelled", state
    await conn.execute(_REQUEST_CANCEL, job_id)
    return state, state


__all__ = ["cancel_error", "cancel_row"]
