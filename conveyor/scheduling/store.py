"""The named SQL of scheduling: storing delayed jobs, releasing them, reading them back.

Kept together so the life of a ``scheduled_jobs`` row reads in one place (migration
``0030_scheduling``): the scheduler inserts it (:data:`INSERT_SCHEDULED`, with the job's
``scheduled`` row, :data:`INSERT_JOBS`), a dispatcher locks due rows
(:data:`CLAIM_DUE`), publishes them and marks them released (:data:`MARK_RELEASED`), and
``JobStore.cancel`` skips a row not released yet (:data:`LOCK_ONE`, :data:`SKIP_ONE`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from typing import Any

CHANNEL_PREFIX = "conveyor_scheduled_"
_MAX_CHANNEL_BYTES = 63

INSERT_SCHEDULED = """
INSERT INTO scheduled_jobs (
    job_id, due_at, topic, type, priority, tenant_id, message_key, message_value, headers,
    schedule_name
)
SELECT t.job_id, t.due_at, t.topic, t.type, t.priority, t.tenant_id, t.message_key,
    t.message_value, t.headers::jsonb, t.schedule_name
FROM unnest(
    $1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[],
    $7::bytea[], $8::bytea[], $9::text[], $10::text[]
) AS t (
    job_id, due_at, topic, type, priority, tenant_id, message_key, message_value, headers,
    schedule_name
)
ORDER BY t.job_id
ON CONFLICT (job_id) DO NOTHING
"""
"""Stores delayed jobs, once per job id (a redelivered message adds nothing).

$1..$10 arrays, one element per job: job_id, due_at, topic (its priority topic), type,
priority, tenant_id, message key, message value, headers (JSON text), schedule name.
"""

INSERT_JOBS = """
WITH input AS (
    SELECT * FROM unnest(
        $1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::uuid[], $7::text[],
        $8::int[], $9::timestamptz[], $10::timestamptz[]
    ) AS t (
        job_id, type, key, tenant_id, priority, batch_id, dedupe_key, max_attempts,
        submitted_at, scheduled_for
    )
), created AS (
    INSERT INTO jobs (
        job_id, type, key, tenant_id, priority, batch_id, dedupe_key, max_attempts,
        submitted_at, scheduled_for, state, attempts
    )
    SELECT job_id, type, key, tenant_id, priority, batch_id, dedupe_key, max_attempts,
        submitted_at, scheduled_for, 'scheduled', 0
    FROM input
    ORDER BY job_id
    ON CONFLICT (job_id) DO NOTHING
    RETURNING job_id, submitted_at
)
INSERT INTO job_transitions (job_id, state, at, attempt)
SELECT job_id, 'scheduled', coalesce(submitted_at, now()), 0 FROM created ORDER BY job_id
"""
"""Records each new delayed job ``scheduled`` with its due time and first transition.

A job id already in ``jobs`` (a duplicate submit, or a cancel that came first) is left as
it is. $1..$10 arrays: job_id, type, key, tenant_id, priority, batch_id, dedupe_key,
max_attempts, submitted_at, scheduled_for.
"""

CLAIM_DUE = """
SELECT s.job_id, s.due_at, s.topic, s.priority, s.message_key, s.message_value, s.headers,
    j.state
FROM scheduled_jobs AS s
LEFT JOIN jobs AS j USING (job_id)
WHERE s.released_at IS NULL AND s.due_at <= now()
ORDER BY s.due_at
LIMIT $1
FOR UPDATE OF s SKIP LOCKED
"""
"""Locks up to $1 due rows no other dispatcher holds, earliest first, with their job's
state (a cancelled one is skipped, not released)."""

QUEUE_JOBS = """
WITH queued AS (
    UPDATE jobs SET state = 'queued', updated_at = clock_timestamp()
    WHERE job_id = ANY($1::uuid[]) AND state = 'scheduled'
    RETURNING job_id, updated_at, attempts
)
INSERT INTO job_transitions (job_id, state, at, attempt)
SELECT job_id, 'queued', updated_at, attempts FROM queued ORDER BY job_id
"""
"""Moves the jobs about to be released ($1) from ``scheduled`` to ``queued``. Run before
the publish, in the releasing transaction: the job rows stay locked until it commits, so a
worker that receives a job at once records ``processing`` after ``queued``, never before."""

MARK_RELEASED = """
UPDATE scheduled_jobs
SET released_at = clock_timestamp(), skipped = NOT (job_id = ANY($1::uuid[]))
WHERE job_id = ANY($1::uuid[] || $2::uuid[]) AND released_at IS NULL
"""
"""Marks rows released ($1, published and acknowledged) or skipped ($2, their job was
cancelled)."""

LOCK_ONE = "SELECT 1 FROM scheduled_jobs WHERE job_id = $1 FOR UPDATE"
"""Locks a job's scheduled row, if any, before its ``jobs`` row: the order the dispatcher
takes them in, so a cancel and a release never deadlock. $1 job_id."""

NEXT_DUE = """
SELECT extract(epoch FROM min(due_at) - now())::float8 FROM scheduled_jobs
WHERE released_at IS NULL
"""
"""Seconds until the earliest pending row is due (negative when late); NULL when none."""

PENDING_COUNT = "SELECT count(*) FROM scheduled_jobs WHERE released_at IS NULL"
"""Rows not released yet (the ``conveyor_scheduled_jobs`` gauge)."""

SKIP_ONE = """
UPDATE scheduled_jobs SET released_at = now(), skipped = true
WHERE job_id = $1 AND released_at IS NULL
"""
"""Skips a cancelled job's row before release. $1 job_id."""


def wake_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel that announces new scheduled rows in ``schema``.

    Mirrors ``notify_scheduled_jobs()`` in migration ``0030_scheduling``.
    """
    channel = CHANNEL_PREFIX + schema
    if len(channel.encode()) > _MAX_CHANNEL_BYTES:
        channel = CHANNEL_PREFIX + hashlib.md5(schema.encode(), usedforsecurity=False).hexdigest()
    return channel


def headers_json(headers: Sequence[tuple[str, bytes | str | None]] | None) -> str:
    """Kafka headers as the JSON text of ``scheduled_jobs.headers``."""
    out: list[list[Any]] = []
    for name, value in headers or ():
        raw = value.encode() if isinstance(value, str) else value
        out.append([name, None if raw is None else base64.b64encode(raw).decode()])
    return json.dumps(out)


def headers_from(data: Any) -> list[tuple[str, str | bytes | None]]:
    """Kafka headers back from ``scheduled_jobs.headers`` (JSON text or decoded)."""
    items = json.loads(data) if isinstance(data, str) else data
    return [
        (str(name), None if value is None else base64.b64decode(value)) for name, value in items
    ]


__all__ = [
    "CLAIM_DUE",
    "INSERT_JOBS",
    "INSERT_SCHEDULED",
    "LOCK_ONE",
    "MARK_RELEASED",
    "NEXT_DUE",
    "PENDING_COUNT",
    "QUEUE_JOBS",
    "SKIP_ONE",
    "headers_from",
    "headers_json",
    "wake_channel",
]
