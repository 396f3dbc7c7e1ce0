"""What the DLQ sink writes: the ``job_dlq`` row, the job's failed state, the JobFailed event.

The SQL and the record-to-row and record-to-event shapes, kept apart from the consuming
loop in ``conveyor.consumer.dlq_sink``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

INSERT = """
INSERT INTO job_dlq (
    original_job_id, tenant_id, type, payload, content_type, error_reason, attempts,
    error_history, dlq_at, trace_id, source_topic, source_partition, source_offset, key,
    priority, batch_id, dedupe_key, max_attempts, duration, submitted_at
)
VALUES (
    $1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, $9, $10, $11, $12, $13, $14, $15, $16,
    $17, $18, $19, $20
)
ON CONFLICT ON CONSTRAINT job_dlq_source_unique DO NOTHING
RETURNING id, event_published_at
"""

EXISTING = """
SELECT id, event_published_at FROM job_dlq
WHERE source_topic = $1 AND source_partition = $2 AND source_offset = $3
"""

# A job no worker recorded (dead before its claim) gets its row here, so status() says
# failed; a job that already ended keeps its state. A job still processing under a live
# lease is left to its worker, which records the failure right after the DLQ publish is
# acknowledged: writing it here would fence that worker (LeaseLostError) and lose its count.
FAIL_JOB = """
WITH failed AS (
    INSERT INTO jobs AS j (
        job_id, type, key, tenant_id, priority, dedupe_key, max_attempts, submitted_at,
        state, attempts, last_error, finished_at, updated_at
    )
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'failed', $9, $10::text::jsonb, now(), now())
    ON CONFLICT (job_id) DO UPDATE SET
        state = 'failed',
        attempts = greatest(j.attempts, EXCLUDED.attempts),
        last_error = EXCLUDED.last_error,
        finished_at = now(),
        lease_owner = NULL,
        lease_expires_at = NULL,
        updated_at = now()
    WHERE j.state NOT IN ('failed', 'complete', 'cancelled')
      AND (j.state <> 'processing' OR j.lease_expires_at IS NULL OR j.lease_expires_at < now())
    RETURNING j.job_id, j.attempts, j.finished_at
)
INSERT INTO job_transitions (job_id, state, at, attempt, error)
SELECT job_id, 'failed', finished_at, attempts, $10::text::jsonb FROM failed
RETURNING job_id
"""

MARK_PUBLISHED = """
UPDATE job_dlq SET event_published_at = now() WHERE id = $1 AND event_published_at IS NULL
"""


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def history_json(history: Sequence[Mapping[str, Any]]) -> str:
    """The ``error_history`` column: the AttemptError records with ISO 8601 times."""
    return json.dumps([{k: _iso(v) for k, v in error.items()} for error in history])


def last_error(record: Mapping[str, Any]) -> dict[str, Any]:
    """The ``jobs.last_error`` of a dead job, shaped like the worker's error records."""
    reason = record["error_reason"]
    history = record.get("error_history") or []
    if not history:
        return {
            "type": reason,
            "message": f"dead-lettered ({reason}) without a recorded attempt error",
            "at": _iso(record["dead_at"]),
            "reason": reason,
        }
    last = history[-1]
    return {
        "type": last["error_type"],
        "message": last["message"],
        "traceback": last.get("traceback", ""),
        "attempt": last["attempt"],
        "at": _iso(last["at"]),
        "reason": reason,
    }


def job_failed_event(record: Mapping[str, Any], dlq_id: int) -> dict[str, Any]:
    """The ``JobFailed`` event of a dead job held in ``job_dlq`` row ``dlq_id``."""
    history = list(record.get("error_history") or [])
    attempts = int(record["attempts"])
    return {
        "kind": "JobFailed",
        "job_id": str(record["job_id"]),
        "type": record.get("type") or "unknown",
        "tenant_id": record.get("tenant_id"),
        "priority": record.get("priority"),
        "attempt": max(attempts, 1),
        "at": dt.datetime.now(dt.UTC),
        "error_reason": record["error_reason"],
        "error_message": history[-1]["message"] if history else None,
        "error_history": history,
        "attempts": attempts,
        "dlq_id": dlq_id,
        "failed_at": record["dead_at"],
    }


#: What a cleaned row's reason becomes when the one sent is not a name Postgres accepts.
UNKNOWN_REASON = "Unknown"
_REASON = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_PRIORITIES = frozenset({"critical", "high", "normal", "low"})


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\\x00")
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def cleaned(record: Mapping[str, Any]) -> dict[str, Any]:
    """A DLQ record Postgres will take, for one it refused: NUL in any text written as
    ``\\x00`` (text and jsonb refuse it), a negative attempt count as 0, an unknown
    priority as none, and a reason that is not a name as ``UNKNOWN_REASON``. The payload
    is bytes and stays as it is."""
    fixed = {k: v if k == "payload" else _clean(v) for k, v in record.items()}
    fixed["attempts"] = max(0, int(fixed.get("attempts") or 0))
    if fixed.get("priority") not in _PRIORITIES:
        fixed["priority"] = None
    if not _REASON.match(str(fixed.get("error_reason") or "")):
        fixed["error_reason"] = UNKNOWN_REASON
    return fixed
