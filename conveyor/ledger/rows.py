"""The ledger's one statement per fetch: ``queued`` rows and their transitions.

``INSERT_QUEUED`` takes one array per column (``unnest``), inserts a ``queued`` row for
every job that has none (``ON CONFLICT (job_id) DO NOTHING``) and a ``queued``
transition only for the rows it actually inserted. A row that exists already, whatever
its state (a worker claimed the job first, it ended, it was cancelled before anyone read
it, or this is a re-read after a crash), is left as it is, so the statement is
idempotent and a job's history holds one ``queued`` entry whoever writes first: the
worker's claim (``conveyor.consumer.queries.CLAIM_MANY``) writes ``queued`` only when it
inserts the row itself, and otherwise updates the ledger's row to ``processing``.

Rows go in job-id order, the order the worker's claim locks them in, so a ledger batch
and a claim batch waiting on each other's uncommitted rows never deadlock.

ARCHITECTURE.md (Ledger) has the measurement behind unnest arrays over COPY.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from conveyor.ledger.envelopes import QueuedRow

INSERT_QUEUED = """
WITH input AS (
    SELECT *
    FROM unnest(
        $1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::uuid[], $7::text[],
        $8::int[], $9::timestamptz[], $10::int[], $11::text[], $12::int[], $13::bigint[]
    ) AS t (
        job_id, type, key, tenant_id, priority, batch_id, dedupe_key, max_attempts,
        submitted_at, attempt, source_topic, source_partition, source_offset
    )
), inserted AS (
    INSERT INTO jobs (
        job_id, type, key, tenant_id, priority, batch_id, dedupe_key, max_attempts,
        submitted_at, state, attempts, source_topic, source_partition, source_offset
    )
    SELECT
        job_id, type, key, tenant_id, priority, batch_id, dedupe_key, max_attempts,
        submitted_at, 'queued', 0, source_topic, source_partition, source_offset
    FROM input
    ORDER BY job_id
    ON CONFLICT (job_id) DO NOTHING
    RETURNING job_id
)
INSERT INTO job_transitions (job_id, state, at, attempt)
SELECT i.job_id, 'queued', i.submitted_at, i.attempt
FROM inserted JOIN input AS i USING (job_id)
ORDER BY i.job_id
"""
"""Inserts the queued rows that do not exist yet, with their transitions.

$1..$13 are arrays, one element per job (distinct job ids): job_id (uuid), type, key,
tenant_id, priority, batch_id (uuid), dedupe_key, max_attempts (int), submitted_at
(timestamptz), attempt (int, of the queued transition), source topic, partition and
offset. The status string says how many transitions (so rows) were inserted.
"""


def distinct(rows: Iterable[QueuedRow]) -> list[QueuedRow]:
    """The rows with one per job id, the first read kept (a duplicate submit or a retry
    republished in the same fetch names the same job again)."""
    by_id: dict[Any, QueuedRow] = {}
    for row in rows:
        by_id.setdefault(row.job_id, row)
    return list(by_id.values())


def arguments(rows: list[QueuedRow]) -> list[list[Any]]:
    """``INSERT_QUEUED``'s thirteen arrays for distinct rows."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * 13


def inserted_count(status: str) -> int:
    """The number of rows an ``INSERT ...`` status string (``"INSERT 0 42"``) reports."""
    return int(status.rsplit(" ", 1)[-1])


__all__ = ["INSERT_QUEUED", "arguments", "distinct", "inserted_count"]
