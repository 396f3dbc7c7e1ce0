"""The dead-letter table as operators read it: list and show.

The DLQ sink (``conveyor.consumer.dlq_sink``) writes one ``job_dlq`` row per dead job.
This module reads those rows as :class:`DlqEntry`::

    pool = await conveyor.db.create_pool(settings)
    pending = await list_entries(pool, type="email.send")
    entry = await get_entry(pool, pending[0].id)

Replaying an entry (resubmitting its job once) is ``conveyor.dlq_replay``.
:class:`~conveyor.producer.records.RecordPublisher` lives in ``conveyor.producer.records``
and the retention purge (:func:`~conveyor.retention.purge`, which also deletes replayed DLQ
rows) in ``conveyor.retention``; both are re-exported here for existing imports.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg

from conveyor.db import database_errors
from conveyor.errors import DlqEntryNotFound
from conveyor.producer.records import PUBLISH_TIMEOUT, RecordPublisher
from conveyor.retention import DEFAULT_PURGE_INTERVAL, purge, purge_periodically
from conveyor.schemas.contracts import CONTENT_TYPE_JSON

DEFAULT_LIST_LIMIT = 100

COLUMNS = """
id, original_job_id, tenant_id, type, payload, content_type, error_reason, attempts,
error_history, dlq_at, replayed_at, trace_id, source_topic, source_partition,
source_offset, key, priority, event_published_at, batch_id, dedupe_key, max_attempts,
duration, submitted_at
"""
"""The ``job_dlq`` columns a :class:`DlqEntry` is built from."""

_LIST = f"""
SELECT {COLUMNS} FROM job_dlq
WHERE ($1::text IS NULL OR type = $1)
  AND ($2::text IS NULL OR tenant_id = $2)
  AND (NOT $3 OR replayed_at IS NULL)
ORDER BY dlq_at, id
LIMIT $4
"""

_GET = f"SELECT {COLUMNS} FROM job_dlq WHERE id = $1"


@dataclasses.dataclass(frozen=True, slots=True)
class DlqEntry:
    """One ``job_dlq`` row: a dead job, why it died, and whether it was replayed.

    Args:
        id: The row's id, what ``conveyor dlq show|replay`` take.
        original_job_id: The dead job's id; None for an undecodable message.
        tenant_id: The job's tenant.
        type: The job type; None for an undecodable message.
        payload: The job's payload, or the raw message bytes when it was undecodable.
        content_type: How ``payload`` is encoded.
        error_reason: MaxRetries, Validation, HandlerMissing, Deserialization, Permanent
            or Timeout.
        attempts: How many attempts ran.
        error_history: The error of every attempt, oldest first (``attempt``,
            ``error_type``, ``message``, ``traceback``, ``at`` as ISO 8601).
        dlq_at: When the job was dead-lettered.
        replayed_at: When it was replayed; None while pending.
        trace_id: The job's OpenTelemetry trace id.
        source_topic: The topic the job was last consumed from.
        source_partition: Its partition.
        source_offset: Its offset.
        key: The job's entity key.
        priority: The job's priority.
        event_published_at: When the JobFailed event was acknowledged; None if not (yet).
        batch_id: The job's batch.
        dedupe_key: The job's deduplication key.
        max_attempts: The job's own attempt limit, if it had one.
        duration: ``short`` or ``long``.
        submitted_at: When the job was first submitted.
    """

    id: int
    original_job_id: str | None
    tenant_id: str | None
    type: str | None
    payload: bytes
    content_type: str | None
    error_reason: str
    attempts: int
    error_history: list[dict[str, Any]]
    dlq_at: dt.datetime
    replayed_at: dt.datetime | None
    trace_id: str | None
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    key: str | None
    priority: str | None
    event_published_at: dt.datetime | None
    batch_id: str | None
    dedupe_key: str | None
    max_attempts: int | None
    duration: str | None
    submitted_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> DlqEntry:
        """Builds an entry from a ``job_dlq`` row."""
        values = {f.name: row[f.name] for f in dataclasses.fields(cls)}
        job_id = values["original_job_id"]
        values["original_job_id"] = None if job_id is None else str(job_id)
        values["payload"] = bytes(values["payload"])
        values["error_history"] = json.loads(values["error_history"])
        return cls(**values)

    @property
    def replayable(self) -> bool:
        """Whether a replay would be accepted: pending, and holding a job to resubmit."""
        return self.replayed_at is None and self.original_job_id is not None

    def to_json(self) -> dict[str, Any]:
        """The entry as JSON-ready data; times are ISO 8601.

        The payload appears as ``payload`` (the decoded value) when it is JSON, and as
        ``payload_base64`` otherwise (Avro payloads, raw bytes of undecodable messages).
        """
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "payload":
                out.update(_payload_json(value, self.content_type))
            elif isinstance(value, dt.datetime):
                out[f.name] = value.isoformat()
            else:
                out[f.name] = value
        return out


def _payload_json(payload: bytes, content_type: str | None) -> dict[str, Any]:
    if content_type == CONTENT_TYPE_JSON:
        with contextlib.suppress(ValueError):
            return {"payload": json.loads(payload)}
    return {"payload_base64": base64.b64encode(payload).decode("ascii")}


async def list_entries(
    pool: asyncpg.Pool[Any],
    *,
    type: str | None = None,
    tenant: str | None = None,
    pending_only: bool = True,
    limit: int = DEFAULT_LIST_LIMIT,
) -> list[DlqEntry]:
    """DLQ entries, oldest first.

    Args:
        pool: Connections to conveyor's schema.
        type: Only entries of this job type.
        tenant: Only entries of this tenant.
        pending_only: Leave out entries already replayed.
        limit: At most this many entries.

    Raises:
        DatabaseUnavailableError: Postgres cannot be reached.
        MigrationError: The schema is not migrated.
    """
    with database_errors("listing DLQ entries"):
        rows = await pool.fetch(_LIST, type, tenant, pending_only, limit)
    return [DlqEntry.from_row(row) for row in rows]


_FIND_BY_JOB = """
SELECT id FROM job_dlq WHERE original_job_id = $1
ORDER BY (replayed_at IS NULL) DESC, dlq_at DESC, id DESC
LIMIT 1
"""


async def find_entry_id(pool: asyncpg.Pool[Any], job_id: str) -> int:
    """The DLQ entry of a job: its pending one, else its latest.

    Raises:
        DlqEntryNotFound: The job has no DLQ entry.
        DatabaseUnavailableError: Postgres cannot be reached.
        MigrationError: The schema is not migrated.
    """
    with database_errors(f"finding the DLQ entry of job {job_id}"):
        found = await pool.fetchval(_FIND_BY_JOB, uuid.UUID(job_id))
    if found is None:
        raise DlqEntryNotFound(job_id)
    return int(found)


async def get_entry(pool: asyncpg.Pool[Any], entry_id: int) -> DlqEntry:
    """One DLQ entry by id.

    Raises:
        DlqEntryNotFound: No row has this id.
        DatabaseUnavailableError: Postgres cannot be reached.
        MigrationError: The schema is not migrated.
    """
    with database_errors(f"reading DLQ entry {entry_id}"):
        row = await pool.fetchrow(_GET, entry_id)
    if row is None:
        raise DlqEntryNotFound(entry_id)
    return DlqEntry.from_row(row)


__all__ = [
    "COLUMNS",
    "DEFAULT_LIST_LIMIT",
    "DEFAULT_PURGE_INTERVAL",
    "PUBLISH_TIMEOUT",
    "DlqEntry",
    "RecordPublisher",
    "database_errors",
    "get_entry",
    "list_entries",
    "purge",
    "purge_periodically",
]
