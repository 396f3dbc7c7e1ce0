"""The reads behind every page and every ``/api/`` answer of ``conveyor ui``.

Pages and the JSON API call the same functions here, so a script sees what an operator
sees. Each function takes a pool and returns JSON-ready data (``dict``/``list`` of plain
values, times as ISO 8601). The SQL uses the indexes of ``0020_ui_indexes.sql``: job
searches page by ``(created_at, job_id)`` with a keyset cursor, never OFFSET; counts per
state stop at :data:`COUNT_CAP` so a page never counts a million rows.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from conveyor.db import database_errors
from conveyor.errors import ConveyorError
from conveyor.topology.model import PRIORITIES

STATES = ("scheduled", "queued", "processing", "complete", "failed", "cancelled")
FINAL = ("complete", "failed", "cancelled")
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
COUNT_CAP = 10_000
"""Counts per state stop here; the page shows ``10000+``."""


class QueryError(ConveyorError):
    """A filter or cursor given to a UI query is malformed (the API answers 400)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobFilter:
    """What the Jobs page searches by; every field is optional.

    Args:
        job_id: One job, exactly.
        type: Job type.
        state: queued, processing, complete, failed or cancelled.
        tenant: Tenant id.
        key: Entity key.
        batch_id: Batch id.
        since: Created at or after.
        until: Created before.
    """

    job_id: str | None = None
    type: str | None = None
    state: str | None = None
    tenant: str | None = None
    key: str | None = None
    batch_id: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> JobFilter:
        """Builds a filter from query parameters; empty ones are ignored.

        Raises:
            QueryError: A parameter is malformed (not a UUID, not a state, not a time).
        """
        get = {k: v.strip() for k, v in params.items() if v and v.strip()}
        state = get.get("state")
        if state is not None and state not in STATES:
            raise QueryError(f"state must be one of {', '.join(STATES)}, got {state!r}")
        return cls(
            job_id=_uuid(get.get("job_id"), "job_id"),
            type=get.get("type"),
            state=state,
            tenant=get.get("tenant"),
            key=get.get("key"),
            batch_id=_uuid(get.get("batch_id"), "batch_id"),
            since=parse_time(get.get("since"), "since"),
            until=parse_time(get.get("until"), "until"),
        )

    def as_params(self) -> dict[str, str]:
        """The filter as query parameters (for links to the next page)."""
        return filter_params(self)


def _uuid(text: str | None, name: str) -> str | None:
    if text is None:
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise QueryError(f"{name} must be a UUID, got {text!r}") from None


def filter_params(search: Any) -> dict[str, str]:
    """A filter dataclass's set fields as query parameters (times in ISO 8601), for links."""
    out = {}
    for f in dataclasses.fields(search):
        value = getattr(search, f.name)
        if value is not None:
            out[f.name] = value.isoformat() if isinstance(value, dt.datetime) else str(value)
    return out


def parse_time(text: str | None, name: str) -> dt.datetime | None:
    """Parses an ISO 8601 time (a date, or a time without zone, is taken as UTC).

    Raises:
        QueryError: ``text`` is not a time.
    """
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(f"{name} must be an ISO 8601 time, got {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def encode_cursor(at: dt.datetime, row_id: Any) -> str:
    """An opaque cursor for the row after which the next page starts."""
    raw = json.dumps([at.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[dt.datetime, str] | None:
    """Reads a cursor made by :func:`encode_cursor`.

    Raises:
        QueryError: The cursor is malformed.
    """
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        at, row_id = json.loads(base64.urlsafe_b64decode(padded))
        return dt.datetime.fromisoformat(at), str(row_id)
    except (ValueError, TypeError) as exc:
        raise QueryError(f"cursor {cursor!r} is malformed; start from the first page") from exc


def jsonable(value: Any) -> Any:
    """Makes a database value JSON-ready (times ISO 8601, UUIDs strings, jsonb decoded)."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _row(record: asyncpg.Record, json_columns: Sequence[str] = ()) -> dict[str, Any]:
    out = {}
    for name, value in record.items():
        decoded = json.loads(value) if name in json_columns and isinstance(value, str) else value
        out[name] = jsonable(decoded)
    return out


class Where:
    """Builds a parameterised WHERE clause; values never enter the SQL text.

    ``add("type = {}", value)`` appends a condition whose ``{}`` become ``$n`` references.
    """

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.args: list[Any] = []

    def add(self, template: str, *values: Any) -> None:
        refs = []
        for value in values:
            self.args.append(value)
            refs.append(f"${len(self.args)}")
        self.parts.append(template.format(*refs))

    def sql(self) -> str:
        return " AND ".join(self.parts) if self.parts else "true"


def _job_where(f: JobFilter, *, with_state: bool = True) -> Where:
    w = Where()
    if f.job_id is not None:
        w.add("job_id = {}::uuid", f.job_id)
    if f.type is not None:
        w.add("type = {}", f.type)
    if with_state and f.state is not None:
        w.add("state = {}", f.state)
    if f.tenant is not None:
        w.add("tenant_id = {}", f.tenant)
    if f.key is not None:
        w.add("key = {}", f.key)
    if f.batch_id is not None:
        w.add("batch_id = {}::uuid", f.batch_id)
    if f.since is not None:
        w.add("created_at >= {}", f.since)
    if f.until is not None:
        w.add("created_at < {}", f.until)
    return w


_JOB_COLUMNS = """job_id, type, key, tenant_id, priority, batch_id, state, attempts,
progress_pct, created_at, submitted_at, started_at, finished_at"""


async def search_jobs(
    pool: asyncpg.Pool[Any], f: JobFilter, *, cursor: str | None = None, limit: int = PAGE_SIZE
) -> dict[str, Any]:
    """Jobs matching ``f``, newest first, one keyset page at a time.

    Returns:
        ``{"jobs": [...], "next": cursor or None, "counts": {state: n}, "capped": bool}``;
        a count of :data:`COUNT_CAP` means "at least that many".

    Raises:
        QueryError: The cursor is malformed.
    """
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    w = _job_where(f)
    after = decode_cursor(cursor)
    if after is not None:
        w.add("(created_at, job_id) < ({}, {}::uuid)", after[0], after[1])
    sql = (
        f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {w.sql()} "
        f"ORDER BY created_at DESC, job_id DESC LIMIT {limit + 1}"
    )
    counts_w = _job_where(f, with_state=False)
    # One capped count per state in one round trip; each inner scan stops at the cap. The
    # states are literals (our constants, not input) so the planner uses each one's
    # statistics: an index for a rare state, a short scan for a common one.
    counts_sql = " UNION ALL ".join(
        f"SELECT '{state}' AS state, count(*) AS n FROM (SELECT 1 FROM jobs "
        f"WHERE state = '{state}' AND {counts_w.sql()} LIMIT {COUNT_CAP}) x"
        for state in STATES
    )
    with database_errors("searching jobs"):
        async with pool.acquire() as conn:
            rows = await conn.fetch(sql, *w.args)
            count_rows = await conn.fetch(counts_sql, *counts_w.args)
    page = rows[:limit]
    next_cursor = (
        encode_cursor(page[-1]["created_at"], page[-1]["job_id"]) if len(rows) > limit else None
    )
    counts = {r["state"]: r["n"] for r in count_rows}
    return {
        "jobs": [_row(r) for r in page],
        "next": next_cursor,
        "counts": counts,
        "count_cap": COUNT_CAP,
    }


_JOB = """
SELECT job_id, type, key, tenant_id, priority, batch_id, dedupe_key, state, attempts,
       max_attempts, result, last_error, progress_pct, progress_message, progress_at,
       cancel_requested_at, lease_owner, created_at, submitted_at, started_at, finished_at
FROM jobs WHERE job_id = $1
"""
_HISTORY = "SELECT state, at, attempt, error FROM job_transitions WHERE job_id = $1 ORDER BY id"
_JOB_DLQ = """
SELECT id, payload, content_type, trace_id, error_reason, dlq_at, replayed_at
FROM job_dlq WHERE original_job_id = $1 ORDER BY dlq_at DESC, id DESC
"""


async def job_detail(pool: asyncpg.Pool[Any], job_id: str) -> dict[str, Any] | None:
    """One job: its row, a timeline of every transition with durations, its DLQ entries.

    The payload is shown from the job's latest DLQ entry: the ``jobs`` table keeps no
    payload, so a job that never died has none to show.

    Returns:
        The job, or None when no worker recorded it.
    """
    job_id = _uuid(job_id, "job id") or ""
    with database_errors(f"reading job {job_id}"):
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            row = await conn.fetchrow(_JOB, job_id)
            if row is None:
                return None
            history = await conn.fetch(_HISTORY, job_id)
            dead = await conn.fetch(_JOB_DLQ, job_id)
    job = _row(row, json_columns=("result", "last_error"))
    job["progress_pct"] = None if row["progress_pct"] is None else round(row["progress_pct"], 2)
    job["timeline"] = _timeline(history, row["finished_at"])
    job["errors"] = [t for t in job["timeline"] if t["error"] is not None]
    job["dlq"] = [
        {k: jsonable(d[k]) for k in ("id", "error_reason", "dlq_at", "replayed_at")} for d in dead
    ]
    job["trace_id"] = next((d["trace_id"] for d in dead if d["trace_id"]), None)
    job["payload"] = decode_payload(dead[0]["payload"], dead[0]["content_type"]) if dead else None
    return job


def _timeline(history: Sequence[asyncpg.Record], ended: dt.datetime | None) -> list[dict[str, Any]]:
    steps = []
    now = dt.datetime.now(dt.UTC)
    for i, t in enumerate(history):
        following = history[i + 1]["at"] if i + 1 < len(history) else None
        if following is None and t["state"] not in FINAL:
            following = now  # still in this state
        seconds = None if following is None else (following - t["at"]).total_seconds()
        steps.append(
            {
                "state": t["state"],
                "at": t["at"].isoformat(),
                "attempt": t["attempt"],
                "seconds": seconds,
                "current": following is now,
                "error": None if t["error"] is None else json.loads(t["error"]),
            }
        )
    return steps


def decode_payload(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """A payload as the UI shows it: pretty-printed JSON, else text, else hex.

    Returns:
        ``{"content_type", "text", "encoding"}``; ``encoding`` is json, text or hex.
    """
    data = bytes(raw)
    if content_type is None or "json" in content_type:
        try:
            text = json.dumps(json.loads(data), indent=2, ensure_ascii=False, sort_keys=True)
            return {"content_type": content_type, "text": text, "encoding": "json"}
        except ValueError:
            pass
    try:
        return {"content_type": content_type, "text": data.decode("utf-8"), "encoding": "text"}
    except UnicodeDecodeError:
        return {"content_type": content_type, "text": data.hex(" ", 2), "encoding": "hex"}


_BATCH_COUNTS = "SELECT state, count(*) AS n FROM jobs WHERE batch_id = $1 GROUP BY state"
_BATCH_JOBS = f"""
SELECT {_JOB_COLUMNS} FROM jobs WHERE batch_id = $1
ORDER BY array_position($2::text[], state), created_at, job_id LIMIT {MAX_PAGE_SIZE}
"""


async def batch_detail(pool: asyncpg.Pool[Any], batch_id: str) -> dict[str, Any]:
    """A batch: counts per state, the share finished, and its jobs by state.

    Raises:
        QueryError: ``batch_id`` is not a UUID.
    """
    batch_id = _uuid(batch_id, "batch id") or ""
    with database_errors(f"reading batch {batch_id}"):
        async with pool.acquire() as conn:
            counts = {r["state"]: r["n"] for r in await conn.fetch(_BATCH_COUNTS, batch_id)}
            jobs = await conn.fetch(_BATCH_JOBS, batch_id, list(STATES))
    total = sum(counts.values())
    done = sum(counts.get(s, 0) for s in FINAL)
    return {
        "batch_id": batch_id,
        "counts": {s: counts.get(s, 0) for s in STATES},
        "total": total,
        "finished_pct": round(100.0 * done / total, 1) if total else 0.0,
        "jobs": [_row(r) for r in jobs],
        "shown": len(jobs),
    }


def known_priority(priority: str | None) -> str:
    """The priority a row is counted under (rows without one count as normal)."""
    return priority if priority in PRIORITIES else "normal"
