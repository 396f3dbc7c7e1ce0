"""Replaying dead jobs: a ``job_dlq`` entry's job resubmitted once, as attempt 1.

:func:`replay` resubmits one entry read through ``conveyor.dlq``, :func:`replay_all`
every pending entry of a job type::

    pool = await conveyor.db.create_pool(settings)
    async with conveyor.producer.records.RecordPublisher(settings) as publisher:
        job_id = await replay(pool, publisher, settings, entry_id)

A replay resubmits the job under its own id, with its stored payload, key, priority,
tenant and limits, as attempt 1; resets the ``jobs`` row to ``queued`` (attempts 0) and
appends a ``queued`` transition whose error says which entry it came from, so the
earlier history stays; and sets ``replayed_at``. All of it happens in one transaction
that holds the row lock while the broker acknowledges the message, so two replays of
one entry, even from two processes, publish once: the second waits for the lock, then
finds ``replayed_at`` set and raises :class:`~conveyor.errors.ReplayRefused`.

If the transaction fails after the broker acknowledged (the connection dropped at
commit), the message is out but the job still reads ``failed``: the worker skips it as
finished, and the entry, still pending, can be replayed again.

The in-process ``TestWorker`` replays with the same envelope, headers and refusals
(:func:`replay_envelope`, :func:`replay_headers`, :func:`check_replayable`,
:func:`check_job_failed`).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
from opentelemetry import propagate

from conveyor.consumer.status import error_json
from conveyor.db import database_errors
from conveyor.dlq import COLUMNS, DlqEntry
from conveyor.errors import DlqEntryNotFound, ReplayRefused
from conveyor.producer.jobs import (
    DEFAULT_DURATION,
    DEFAULT_PRIORITY,
    HEADER_JOB_ID,
    HEADER_JOB_TYPE,
    HEADER_PRIORITY,
)
from conveyor.producer.records import RecordPublisher
from conveyor.schemas.contracts import CONTENT_TYPE_JSON, JOB_ENVELOPE
from conveyor.settings import Settings
from conveyor.topology.model import Topology

# Replays log under conveyor.dlq, with the rest of the dead-letter table's operations.
log = logging.getLogger("conveyor.dlq")

ProgressCallback = Callable[[int, int], None]
"""Called with (entries done, entries in total) after each entry of a bulk replay."""

_LOCK = f"SELECT {COLUMNS} FROM job_dlq WHERE id = $1 FOR UPDATE"

_PENDING_IDS = """
SELECT id FROM job_dlq
WHERE replayed_at IS NULL AND original_job_id IS NOT NULL
  AND type = $1 AND ($2::text IS NULL OR tenant_id = $2)
ORDER BY dlq_at, id
"""

# The jobs row may be gone (purged 7 days after the failure) while its DLQ row lives on.
_REQUEUE = """
WITH requeued AS (
    INSERT INTO jobs AS j (
        job_id, type, key, tenant_id, priority, batch_id, dedupe_key, max_attempts,
        submitted_at, state, attempts, updated_at
    )
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'queued', 0, now())
    ON CONFLICT (job_id) DO UPDATE SET
        state = 'queued',
        attempts = 0,
        submitted_at = EXCLUDED.submitted_at,
        lease_owner = NULL,
        lease_expires_at = NULL,
        cancel_requested_at = NULL,
        result = NULL,
        progress_pct = NULL,
        progress_message = NULL,
        progress_at = NULL,
        started_at = NULL,
        finished_at = NULL,
        updated_at = now()
    RETURNING j.job_id
)
INSERT INTO job_transitions (job_id, state, at, attempt, error)
SELECT job_id, 'queued', now(), 0, $10::text::jsonb FROM requeued
"""

_MARK_REPLAYED = "UPDATE job_dlq SET replayed_at = now() WHERE id = $1"

# The dead job's row, locked so no worker moves it while the replay decides.
_JOB_STATE = "SELECT state FROM jobs WHERE job_id = $1 FOR UPDATE"


async def replay(
    pool: asyncpg.Pool[Any], publisher: RecordPublisher, settings: Settings, entry_id: int
) -> str:
    """Resubmits a dead job as attempt 1 and marks its entry replayed, at most once.

    Args:
        pool: Connections to conveyor's schema.
        publisher: Publishes the job to the topic of its priority.
        settings: Names the topics.
        entry_id: The ``job_dlq`` row.

    Returns:
        The job id (the dead job's own: status and history continue under it).

    Raises:
        DlqEntryNotFound: No row has this id.
        ReplayRefused: The entry was replayed already, has no job (undecodable), or its
            job is not failed now (it completed, or is queued or running again).
        DeliveryError: The broker did not acknowledge the job; nothing changed.
        RegistryUnavailableError: The registry did not answer; nothing changed.
        DatabaseUnavailableError: Postgres cannot be reached.
    """
    topology = Topology.from_settings(settings)
    with database_errors(f"replaying DLQ entry {entry_id}"):
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_LOCK, entry_id)
            if row is None:
                raise DlqEntryNotFound(entry_id)
            entry = DlqEntry.from_row(row)
            check_replayable(entry)
            job_id = str(entry.original_job_id)
            check_job_failed(entry, await conn.fetchval(_JOB_STATE, job_id))
            envelope = replay_envelope(entry, submitted_at=dt.datetime.now(dt.UTC))
            await conn.execute(
                _REQUEUE,
                job_id,
                envelope["type"],
                entry.key,
                entry.tenant_id,
                envelope["priority"],
                _uuid_or_none(entry.batch_id),
                entry.dedupe_key,
                entry.max_attempts,
                envelope["submitted_at"],
                error_json({"type": "Replayed", "message": f"replayed from DLQ entry {entry.id}"}),
            )
            # Published while the row lock is held: a concurrent replay of this entry
            # waits here and then sees replayed_at, so the job goes out once.
            await publisher.publish(
                JOB_ENVELOPE,
                topology.job_topic(envelope["priority"]),
                envelope,
                key=(entry.key or job_id).encode(),
                job_id=job_id,
                headers=replay_headers(job_id, envelope["type"], envelope["priority"]),
            )
            await conn.execute(_MARK_REPLAYED, entry.id)
    log.info("replayed DLQ entry %d as job %s", entry.id, job_id)
    return job_id


def check_replayable(entry: DlqEntry) -> None:
    """Refuses an entry that was replayed already or holds no job.

    Raises:
        ReplayRefused: Either of those.
    """
    if entry.replayed_at is not None:
        raise ReplayRefused(
            f"DLQ entry {entry.id} was already replayed at "
            f"{entry.replayed_at.isoformat(timespec='seconds')}; a DLQ entry is replayed once "
            "(if the job failed again, it has a newer entry)"
        )
    if entry.original_job_id is None or entry.type is None:
        raise ReplayRefused(
            f"DLQ entry {entry.id} holds an undecodable message ({entry.error_reason}), "
            "not a job: there is nothing to resubmit; `conveyor dlq show` has its raw bytes"
        )


def check_job_failed(entry: DlqEntry, state: str | None) -> None:
    """Refuses to replay a job that is not failed now.

    A dead letter is not proof the job ended failed: a worker that lost the job may have
    dead-lettered it while its new owner completed it, or the job may already be queued
    or running again. Replaying it then would run it twice. A job whose row is gone
    (purged long after it failed) may be replayed.

    Args:
        entry: The DLQ entry.
        state: The job's state now; None when its row was purged.

    Raises:
        ReplayRefused: The job is not failed.
    """
    if state is None or state == "failed":
        return
    raise ReplayRefused(
        f"DLQ entry {entry.id}: job {entry.original_job_id} is {state}, not failed, so it "
        "is not replayed (it would run again); `conveyor status` shows its history"
    )


def replay_envelope(entry: DlqEntry, *, submitted_at: dt.datetime) -> dict[str, Any]:
    """The JobEnvelope a replay of ``entry`` publishes: attempt 1, the same job id."""
    return {
        "job_id": entry.original_job_id,
        "type": entry.type,
        "key": entry.key,
        "priority": entry.priority or DEFAULT_PRIORITY,
        "payload": entry.payload,
        "content_type": entry.content_type or CONTENT_TYPE_JSON,
        "tenant_id": entry.tenant_id,
        "batch_id": entry.batch_id,
        "dedupe_key": entry.dedupe_key,
        "attempt": 1,
        "max_attempts": entry.max_attempts,
        "submitted_at": submitted_at,
        "not_before": None,
        "duration": entry.duration or DEFAULT_DURATION,
        "errors": [],
    }


def replay_headers(
    job_id: str, job_type: str, priority: str
) -> list[tuple[str, str | bytes | None]]:
    """The headers of a replayed job: its id, type, priority and the trace context."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [
        (HEADER_JOB_ID, job_id.encode()),
        (HEADER_JOB_TYPE, job_type.encode()),
        (HEADER_PRIORITY, priority.encode()),
        *((k, v.encode()) for k, v in carrier.items()),
    ]


def _uuid_or_none(text: str | None) -> uuid.UUID | None:
    # jobs.batch_id is a uuid; a batch id some other producer wrote may not be one.
    if text is None:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


async def replay_all(
    pool: asyncpg.Pool[Any],
    publisher: RecordPublisher,
    settings: Settings,
    *,
    type: str,
    tenant: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> list[str]:
    """Replays every pending entry of a job type (and tenant), oldest first.

    Entries replayed by someone else meanwhile are skipped, not errors.

    Args:
        pool: Connections to conveyor's schema.
        publisher: Publishes the jobs.
        settings: Names the topics.
        type: The job type whose entries are replayed.
        tenant: Only entries of this tenant.
        on_progress: Called with (done, total) after each entry.

    Returns:
        The ids of the jobs this call replayed, in replay order.

    Raises:
        DeliveryError: The broker did not acknowledge a job; entries before it stay
            replayed, it and the rest stay pending.
        DatabaseUnavailableError: Postgres cannot be reached.
    """
    with database_errors(f"listing pending DLQ entries of type {type}"):
        ids = [row["id"] for row in await pool.fetch(_PENDING_IDS, type, tenant)]
    replayed: list[str] = []
    for done, entry_id in enumerate(ids, start=1):
        try:
            replayed.append(await replay(pool, publisher, settings, entry_id))
        except (ReplayRefused, DlqEntryNotFound) as exc:
            log.info("skipped DLQ entry %d: %s", entry_id, exc)
        if on_progress is not None:
            on_progress(done, len(ids))
    return replayed


__all__ = [
    "ProgressCallback",
    "check_job_failed",
    "check_replayable",
    "replay",
    "replay_all",
    "replay_envelope",
    "replay_headers",
]
