"""The DLQ page's reads and its bulk replay with live progress.

Listing filters by type, reason, tenant and date, pending or replayed, newest first,
paged by a ``(dlq_at, id)`` keyset cursor. One entry is ``conveyor.dlq.get_entry``;
replays go through ``conveyor.dlq_replay.replay``, the same once-only replay the CLI uses.
"Replay all matching" runs in the UI process as a :class:`BulkReplay` whose progress the
page follows over Server-Sent Events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg

from conveyor import dlq, dlq_replay
from conveyor.db import database_errors
from conveyor.errors import ConveyorError, DlqEntryNotFound, ReplayRefused
from conveyor.settings import Settings
from conveyor.ui.queries import (
    MAX_PAGE_SIZE,
    PAGE_SIZE,
    QueryError,
    Where,
    decode_cursor,
    decode_payload,
    encode_cursor,
    filter_params,
    jsonable,
    parse_time,
)

log = logging.getLogger("conveyor.ui")

REASONS = ("MaxRetries", "Validation", "HandlerMissing", "Deserialization", "Permanent", "Timeout")
SHOW = ("pending", "replayed", "all")
MAX_BULK = 100_000
"""Most entries one "replay all matching" takes."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DlqFilter:
    """What the DLQ page filters by.

    Args:
        type: Job type.
        reason: One of :data:`REASONS`.
        tenant: Tenant id.
        since: Dead-lettered at or after.
        until: Dead-lettered before.
        show: pending (default), replayed or all.
    """

    type: str | None = None
    reason: str | None = None
    tenant: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    show: str = "pending"

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> DlqFilter:
        """Builds a filter from query or form parameters; empty ones are ignored.

        Raises:
            QueryError: A parameter is malformed.
        """
        get = {k: v.strip() for k, v in params.items() if v and v.strip()}
        reason, show = get.get("reason"), get.get("show", "pending")
        if reason is not None and reason not in REASONS:
            raise QueryError(f"reason must be one of {', '.join(REASONS)}, got {reason!r}")
        if show not in SHOW:
            raise QueryError(f"show must be one of {', '.join(SHOW)}, got {show!r}")
        return cls(
            type=get.get("type"),
            reason=reason,
            tenant=get.get("tenant"),
            since=parse_time(get.get("since"), "since"),
            until=parse_time(get.get("until"), "until"),
            show=show,
        )

    def as_params(self) -> dict[str, str]:
        """The filter as query parameters."""
        return filter_params(self)

    def where(self) -> Where:
        """The filter as a parameterised WHERE clause."""
        w = Where()
        if self.show == "pending":
            w.add("replayed_at IS NULL")
        elif self.show == "replayed":
            w.add("replayed_at IS NOT NULL")
        if self.type is not None:
            w.add("type = {}", self.type)
        if self.reason is not None:
            w.add("error_reason = {}", self.reason)
        if self.tenant is not None:
            w.add("tenant_id = {}", self.tenant)
        if self.since is not None:
            w.add("dlq_at >= {}", self.since)
        if self.until is not None:
            w.add("dlq_at < {}", self.until)
        return w


_LIST_COLUMNS = """id, original_job_id, tenant_id, type, error_reason, attempts, dlq_at,
replayed_at, key, priority"""


async def list_entries(
    pool: asyncpg.Pool[Any], f: DlqFilter, *, cursor: str | None = None, limit: int = PAGE_SIZE
) -> dict[str, Any]:
    """DLQ entries matching ``f``, newest first, one keyset page at a time.

    Returns:
        ``{"entries": [...], "next": cursor or None, "matching": n}``.

    Raises:
        QueryError: The cursor is malformed.
    """
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    w = f.where()
    count_sql = f"SELECT count(*) FROM job_dlq WHERE {w.sql()}"
    count_args = list(w.args)
    after = decode_cursor(cursor)
    if after is not None:
        try:
            after_id = int(after[1])
        except ValueError:
            raise QueryError("cursor is malformed; start from the first page") from None
        w.add("(dlq_at, id) < ({}, {})", after[0], after_id)
    sql = (
        f"SELECT {_LIST_COLUMNS} FROM job_dlq WHERE {w.sql()} "
        f"ORDER BY dlq_at DESC, id DESC LIMIT {limit + 1}"
    )
    with database_errors("listing DLQ entries"):
        async with pool.acquire() as conn:
            rows = await conn.fetch(sql, *w.args)
            matching = await conn.fetchval(count_sql, *count_args)
    page = rows[:limit]
    return {
        "entries": [{k: jsonable(v) for k, v in r.items()} for r in page],
        "next": encode_cursor(page[-1]["dlq_at"], page[-1]["id"]) if len(rows) > limit else None,
        "matching": matching,
    }


async def entry_detail(pool: asyncpg.Pool[Any], entry_id: int) -> dict[str, Any]:
    """One entry: every field, every attempt's error and the decoded payload.

    Raises:
        DlqEntryNotFound: No row has this id.
    """
    entry = await dlq.get_entry(pool, entry_id)
    out = entry.to_json()
    out.pop("payload_base64", None)
    out["payload"] = decode_payload(entry.payload, entry.content_type)
    out["replayable"] = entry.replayable
    return out


async def matching_ids(pool: asyncpg.Pool[Any], f: DlqFilter) -> list[int]:
    """Ids of the pending, replayable entries matching ``f``, oldest first."""
    w = dataclasses.replace(f, show="pending").where()
    sql = (
        f"SELECT id FROM job_dlq WHERE {w.sql()} AND original_job_id IS NOT NULL "
        f"ORDER BY dlq_at, id LIMIT {MAX_BULK}"
    )
    with database_errors("listing DLQ entries to replay"):
        return [r["id"] for r in await pool.fetch(sql, *w.args)]


async def replay_one(pool: asyncpg.Pool[Any], settings: Settings, entry_id: int) -> str:
    """Replays one entry once (see ``conveyor.dlq_replay.replay``) and returns the job id."""
    async with dlq.RecordPublisher(settings) as publisher:
        return await dlq_replay.replay(pool, publisher, settings, entry_id)


@dataclasses.dataclass
class BulkReplay:
    """One "replay all matching" run: its progress, readable while it runs.

    Args:
        id: The run's id, for ``/api/dlq/replays/{id}``.
        total: Entries to replay.
    """

    id: str
    total: int
    done: int = 0
    replayed: int = 0
    skipped: int = 0
    error: str | None = None
    finished: bool = False
    task: asyncio.Task[None] | None = dataclasses.field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The run's progress as JSON-ready data."""
        pct = 100.0 if self.total == 0 else round(100.0 * self.done / self.total, 1)
        return {
            "id": self.id,
            "total": self.total,
            "done": self.done,
            "replayed": self.replayed,
            "skipped": self.skipped,
            "pct": pct,
            "error": self.error,
            "finished": self.finished,
        }


class BulkReplays:
    """The bulk replays this UI process started, by id."""

    def __init__(self) -> None:
        self._runs: dict[str, BulkReplay] = {}

    def get(self, run_id: str) -> BulkReplay | None:
        """The run, or None for an unknown id."""
        return self._runs.get(run_id)

    async def start(self, pool: asyncpg.Pool[Any], settings: Settings, f: DlqFilter) -> BulkReplay:
        """Starts replaying every pending entry matching ``f`` in the background."""
        ids = await matching_ids(pool, f)
        run = BulkReplay(id=uuid.uuid4().hex[:12], total=len(ids))
        self._runs[run.id] = run
        run.task = asyncio.create_task(self._replay(run, pool, settings, ids))
        return run

    async def _replay(
        self, run: BulkReplay, pool: asyncpg.Pool[Any], settings: Settings, ids: list[int]
    ) -> None:
        try:
            async with dlq.RecordPublisher(settings) as publisher:
                for entry_id in ids:
                    try:
                        await dlq_replay.replay(pool, publisher, settings, entry_id)
                        run.replayed += 1
                    except (ReplayRefused, DlqEntryNotFound):
                        run.skipped += 1  # replayed by someone else meanwhile
                    run.done += 1
        except ConveyorError as exc:
            run.error = str(exc)
            log.warning("bulk DLQ replay %s stopped: %s", run.id, exc)
        finally:
            run.finished = True

    async def close(self) -> None:
        """Cancels runs still going (their replayed entries stay replayed)."""
        tasks = [r.task for r in self._runs.values() if r.task is not None and not r.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
