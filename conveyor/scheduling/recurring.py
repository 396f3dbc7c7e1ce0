"""Recurring (cron) schedules: stored in Postgres, each tick submitted once across the fleet.

A schedule row holds its cron expression, zone, job (type, payload, priority, key,
tenant), ``catch_up`` policy and ``next_fire_at``. Every scheduler runs
:class:`RecurringLoop`; a round locks the due rows (``FOR UPDATE SKIP LOCKED``: one
scheduler per row at a time), submits the ticks :func:`conveyor.scheduling.cronexpr.due_ticks`
chooses and waits for their acks, then advances ``next_fire_at`` and commits. A tick's job
id is the dedupe id of (schedule name, tick time), so a scheduler that crashed after the
ack and before the commit resubmits the same job id, which workers dedupe; a second
scheduler never sees the row until the first committed.

Schedules come from code (:meth:`conveyor.Worker.schedule`, upserted when the worker
starts) or from ``conveyor schedule add``; both use :func:`upsert`, which keeps the
stored ``next_fire_at`` (so ticks missed while nothing ran are caught up) unless the
expression or zone changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from conveyor.db import database_errors
from conveyor.errors import (
    ConveyorError,
    ProducerFatalError,
    ScheduleError,
    ScheduleNotFound,
    ValidationError,
)
from conveyor.producer.aio import AsyncProducer
from conveyor.producer.jobs import type_problem
from conveyor.scheduling import cron as cronexpr
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology.model import PRIORITIES

log = logging.getLogger("conveyor.scheduler")

Clock = Callable[[], dt.datetime]
DEFAULT_MAX_SLEEP = 2.0
MAX_ROWS = 100
MIN_BACKOFF = 0.5
MAX_BACKOFF = 30.0


def utc_now() -> dt.datetime:
    """The real clock, in UTC."""
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScheduleSpec:
    """A recurring schedule as declared: what to submit, and when.

    Args:
        name: Unique name; part of each tick's job id.
        cron: Five-field cron expression, read in ``timezone``.
        type: The job type submitted at each tick.
        payload: The job payload (JSON-compatible).
        timezone: IANA zone name.
        priority: The jobs' priority.
        key: The jobs' entity key.
        tenant_id: The jobs' tenant.
        catch_up: ``none``, ``last`` or ``all``, for ticks missed while nothing ran.
    """

    name: str
    cron: str
    type: str
    payload: Any = None
    timezone: str = "UTC"
    priority: str = "normal"
    key: str | None = None
    tenant_id: str | None = None
    catch_up: str = cronexpr.DEFAULT_CATCH_UP

    def check(self) -> cronexpr.Cron:
        """Validates every field; returns the parsed cron.

        Raises:
            ScheduleError: One clear message naming what is wrong.
        """
        if not isinstance(self.name, str) or not self.name.strip() or len(self.name) > 200:
            raise ScheduleError(f"schedule name must be 1-200 characters, got {self.name!r}")
        if (problem := type_problem(self.type)) is not None:
            raise ScheduleError(f"schedule {self.name!r}: {problem}")
        if self.priority not in PRIORITIES:
            raise ScheduleError(
                f"schedule {self.name!r}: priority {self.priority!r} is not one of "
                f"{', '.join(PRIORITIES)}"
            )
        cronexpr.check_catch_up(self.catch_up)
        try:
            json.dumps(self.payload)
        except (TypeError, ValueError) as exc:
            raise ScheduleError(f"schedule {self.name!r}: payload is not JSON: {exc}") from exc
        return cronexpr.parse(self.cron, self.timezone)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScheduleRow:
    """A stored schedule, as ``conveyor schedule list`` and the UI show it."""

    name: str
    cron: str
    timezone: str
    type: str
    payload: Any
    priority: str
    key: str | None
    tenant_id: str | None
    catch_up: str
    paused: bool
    next_fire_at: dt.datetime
    last_fire_at: dt.datetime | None
    source: str

    def to_json(self) -> dict[str, Any]:
        """JSON-ready data; times ISO 8601."""
        out = dataclasses.asdict(self)
        for field in ("next_fire_at", "last_fire_at"):
            value = out[field]
            out[field] = value.isoformat() if value is not None else None
        return out


_UPSERT = """
INSERT INTO schedules AS s (
    name, cron, timezone, type, payload, priority, key, tenant_id, catch_up, next_fire_at,
    source
)
VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7, $8, $9, $10, $11)
ON CONFLICT (name) DO UPDATE SET
    cron = EXCLUDED.cron, timezone = EXCLUDED.timezone, type = EXCLUDED.type,
    payload = EXCLUDED.payload, priority = EXCLUDED.priority, key = EXCLUDED.key,
    tenant_id = EXCLUDED.tenant_id, catch_up = EXCLUDED.catch_up, source = EXCLUDED.source,
    updated_at = now(),
    next_fire_at = CASE
        WHEN s.cron IS DISTINCT FROM EXCLUDED.cron OR s.timezone IS DISTINCT FROM EXCLUDED.timezone
        THEN EXCLUDED.next_fire_at ELSE s.next_fire_at END
RETURNING (xmax = 0) AS inserted
"""
_SELECT = """
SELECT name, cron, timezone, type, payload::text AS payload, priority, key, tenant_id,
    catch_up, paused, next_fire_at, last_fire_at, source
FROM schedules
"""
_LIST = _SELECT + " ORDER BY name"
_DUE = (
    _SELECT
    + " WHERE NOT paused AND next_fire_at <= $1 ORDER BY next_fire_at LIMIT $2"
    + " FOR UPDATE SKIP LOCKED"
)
_ADVANCE = """
UPDATE schedules SET next_fire_at = $2, last_fire_at = coalesce($3, last_fire_at),
    updated_at = now()
WHERE name = $1
"""
_NEXT = "SELECT min(next_fire_at) FROM schedules WHERE NOT paused"
_PAUSE = """
UPDATE schedules SET paused = $2, updated_at = now(),
    next_fire_at = CASE WHEN $2 THEN next_fire_at ELSE $3 END
WHERE name = $1 RETURNING name
"""
_REMOVE = "DELETE FROM schedules WHERE name = $1 RETURNING name"


def _row(record: asyncpg.Record) -> ScheduleRow:
    values = dict(record)
    values["payload"] = json.loads(values["payload"])
    return ScheduleRow(**values)


async def upsert(
    conn: Any, spec: ScheduleSpec, *, source: str, now: dt.datetime | None = None
) -> bool:
    """Stores ``spec``; returns True if it was new.

    An existing schedule keeps its ``next_fire_at`` (so missed ticks are caught up) and its
    paused flag, unless its expression or zone changed.

    Raises:
        ScheduleError: The spec is invalid.
    """
    parsed = spec.check()
    first = parsed.next_after(now or utc_now())
    with database_errors(f"storing schedule {spec.name}"):
        inserted: bool = await conn.fetchval(
            _UPSERT,
            spec.name,
            spec.cron,
            spec.timezone,
            spec.type,
            json.dumps(spec.payload),
            spec.priority,
            spec.key,
            spec.tenant_id,
            spec.catch_up,
            first,
            source,
        )
    return inserted


async def list_schedules(conn: Any) -> list[ScheduleRow]:
    """Every stored schedule, by name."""
    with database_errors("listing schedules"):
        return [_row(r) for r in await conn.fetch(_LIST)]


async def set_paused(conn: Any, name: str, paused: bool, *, now: dt.datetime | None = None) -> None:
    """Pauses or resumes a schedule. A resumed schedule fires from its next tick after now
    (ticks that fell while it was paused are not caught up).

    Raises:
        ScheduleNotFound: No schedule has this name.
    """
    with database_errors(f"pausing schedule {name}"):
        rows = await conn.fetch(_SELECT + " WHERE name = $1", name)
        if not rows:
            raise ScheduleNotFound(name)
        stored = _row(rows[0])
        resume_at = cronexpr.parse(stored.cron, stored.timezone).next_after(now or utc_now())
        if await conn.fetchval(_PAUSE, name, paused, resume_at) is None:
            raise ScheduleNotFound(name)


async def remove(conn: Any, name: str) -> None:
    """Deletes a schedule.

    Raises:
        ScheduleNotFound: No schedule has this name.
    """
    with database_errors(f"removing schedule {name}"):
        if await conn.fetchval(_REMOVE, name) is None:
            raise ScheduleNotFound(name)


def tick_dedupe_key(name: str, tick: dt.datetime) -> str:
    """The dedupe key of a schedule's tick; the job id derives from it."""
    return f"schedule:{name}@{tick.astimezone(dt.UTC).isoformat()}"


class RecurringLoop:
    """Submits the due ticks of every stored schedule, each once across the fleet.

    Args:
        settings: Broker, database, registry and topic settings.
        pool: Connections to conveyor's schema.
        serde: Encodes the ticks' envelopes.
        clock: What time it is (injected by tests); the real UTC clock by default.
        max_sleep: Longest sleep between rounds: how soon a schedule added elsewhere
            is noticed.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        pool: asyncpg.Pool[Any],
        serde: Serde,
        clock: Clock = utc_now,
        max_sleep: float = DEFAULT_MAX_SLEEP,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._serde = serde
        self._clock = clock
        self._max_sleep = max_sleep
        self._producer: AsyncProducer | None = None
        self.submitted = 0

    async def start(self) -> None:
        """Creates the producer the ticks are submitted with."""
        self._producer = AsyncProducer(self._settings, serde=self._serde)

    async def declare(self, specs: Sequence[ScheduleSpec]) -> None:
        """Upserts schedules declared in code (``Worker.schedule``)."""
        async with self._pool.acquire() as conn:
            for spec in specs:
                await upsert(conn, spec, source="code", now=self._clock())

    async def run(self, stop: asyncio.Event) -> None:
        """Runs rounds until ``stop`` is set, then closes the producer.

        A failed round is rolled back and tried again with backoff.

        Raises:
            ProducerFatalError: The producer hit a fatal error, so no tick can be submitted
                again; the round that saw it advanced nothing.
        """
        if self._producer is None:
            raise RuntimeError("call RecurringLoop.start() before run()")
        backoff = MIN_BACKOFF
        try:
            while not stop.is_set():
                try:
                    await self.run_once()
                    wait = await self._seconds_to_next()
                    backoff = MIN_BACKOFF
                except ProducerFatalError:
                    raise  # not retried: the producer sends no more
                except (ConveyorError, asyncpg.PostgresError, OSError) as exc:
                    log.warning("recurring schedules not advanced (%s); trying again", exc)
                    wait, backoff = backoff, min(backoff * 2, MAX_BACKOFF)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(wait, 0.01))
        finally:
            await self.close()

    async def _seconds_to_next(self) -> float:
        with database_errors("reading the next schedule fire time"):
            nxt = await self._pool.fetchval(_NEXT)
        if nxt is None:
            return self._max_sleep
        seconds: float = (nxt - self._clock()).total_seconds()
        return min(max(seconds, 0.0), self._max_sleep)

    async def run_once(self) -> int:
        """Submits the ticks of every due schedule no other scheduler holds.

        Returns:
            How many ticks were submitted.
        """
        assert self._producer is not None
        now = self._clock()
        count = 0
        with database_errors("firing recurring schedules"):
            async with self._pool.acquire() as conn, conn.transaction():
                for record in await conn.fetch(_DUE, now, MAX_ROWS):
                    row = _row(record)
                    try:
                        parsed = cronexpr.parse(row.cron, row.timezone)
                    except ScheduleError as exc:  # edited by hand into something invalid
                        log.error("schedule %s skipped: %s", row.name, exc)
                        continue
                    ticks, following = cronexpr.due_ticks(
                        parsed, row.next_fire_at, now, row.catch_up
                    )
                    try:
                        for tick in ticks:
                            await self._producer.submit(
                                row.type,
                                row.payload,
                                key=row.key,
                                priority=row.priority,
                                dedupe_key=tick_dedupe_key(row.name, tick),
                                tenant_id=row.tenant_id,
                                wait=True,
                            )
                    except ValidationError as exc:
                        # The job itself is refused (a payload over the size limit): trying
                        # again cannot help, and must not hold back the other schedules.
                        log.error("schedule %s: tick not submitted: %s", row.name, exc)
                        ticks = []
                    await conn.execute(_ADVANCE, row.name, following, ticks[-1] if ticks else None)
                    count += len(ticks)
        self.submitted += count
        return count

    async def close(self) -> None:
        """Flushes and closes the producer. Idempotent."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.close()


__all__ = [
    "RecurringLoop",
    "ScheduleRow",
    "ScheduleSpec",
    "list_schedules",
    "remove",
    "set_paused",
    "tick_dedupe_key",
    "upsert",
    "utc_now",
]
