"""Submitting benchmark jobs to conveyor, and reading their timings back from Postgres.

The worker is never instrumented: every figure about conveyor's jobs comes from the
``jobs`` table after (or while) they run. ``submitted_at`` is set by the producer,
``started_at`` when the worker claims the job, ``finished_at`` when its completion is
written (inside the transaction that commits it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from conveyor import Job, Producer, Settings
from conveyor.db import quote_ident

CHUNK = 1000
"""Jobs per ``submit`` call when preloading (a batch is validated whole)."""


def preload(settings: Settings, count: int, **options: Any) -> float:
    """Submits ``count`` jobs in batches and waits for the broker's acknowledgements.

    Args:
        settings: Where to submit.
        count: How many jobs.
        **options: What ``submit_batches`` takes.

    Returns:
        Jobs per second submitted, acknowledgements included.
    """
    started = time.monotonic()
    with Producer(settings) as producer:
        submit_batches(producer, count, **options)
    return count / (time.monotonic() - started)


def submit_batches(
    producer: Producer,
    count: int,
    *,
    job_type: str = "bench.noop",
    priority: str = "normal",
    key: Callable[[int], str] | None = None,
    payload: Any = None,
) -> None:
    """Submits ``count`` jobs in batches of ``CHUNK`` (queued, not yet acknowledged).

    Args:
        producer: The producer to submit with.
        count: How many jobs.
        job_type: Their type.
        priority: Their priority (and so their topic).
        key: The key of the i-th job; the job id when omitted.
        payload: Every job's payload (``{}`` when omitted).
    """
    body = {} if payload is None else payload
    for low in range(0, count, CHUNK):
        indexes = range(low, min(count, low + CHUNK))
        items = [Job(body) if key is None else Job(body, key=key(i)) for i in indexes]
        producer.submit(job_type, items, priority=priority)


def submit_at_rate(submit: Callable[[int], object], *, rate: float, seconds: float) -> int:
    """Calls ``submit(i)`` at ``rate`` per second for ``seconds``; returns how many calls.

    Every 5 ms it submits the jobs that are due by then, so the offered load is steady.
    """
    total = round(rate * seconds)
    started = time.monotonic()
    sent = 0
    while sent < total:
        due = min(total, int((time.monotonic() - started) * rate) + 1)
        while sent < due:
            submit(sent)
            sent += 1
        time.sleep(0.005)
    return sent


async def connect(settings: Settings) -> asyncpg.Connection[Any]:
    """A connection with the scenario's schema on the search path."""
    return await asyncpg.connect(
        settings.database_url,
        server_settings={"search_path": f"{quote_ident(settings.database_schema)}, public"},
    )


async def count_complete(conn: asyncpg.Connection[Any], key_prefix: str = "") -> int:
    """Jobs in state ``complete`` whose key starts with ``key_prefix``."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM jobs WHERE state = 'complete' AND starts_with(key, $1)",
            key_prefix,
        )
    )


@dataclass(frozen=True)
class Span:
    """When a set of completed jobs ran: from the first start to the last finish."""

    jobs: int
    seconds: float

    @property
    def rate(self) -> float:
        """Jobs per second over the span."""
        return self.jobs / self.seconds if self.seconds > 0 else 0.0


async def span(conn: asyncpg.Connection[Any], key_prefix: str = "") -> Span:
    """The span of the completed jobs whose key starts with ``key_prefix``."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, extract(epoch FROM max(finished_at) - min(started_at)) AS s "
        "FROM jobs WHERE state = 'complete' AND starts_with(key, $1)",
        key_prefix,
    )
    assert row is not None
    return Span(jobs=int(row["n"]), seconds=float(row["s"] or 0.0))


PERCENTILES = (0.5, 0.95, 0.99)


async def latency_ms(
    conn: asyncpg.Connection[Any], key_prefix: str, submitted: Mapping[str, float]
) -> dict[str, dict[str, float]]:
    """Submit-to-start and submit-to-complete p50/p95/p99 in milliseconds.

    The submit times are the bench's own (``time.time()`` just before each submit, by
    job id), as Celery's and Dramatiq's are: the envelope's ``submitted_at`` is Avro's
    timestamp-millis, floored to the millisecond, which would read every job up to 1 ms
    (0.5 on average) late.

    Args:
        conn: A connection to the scenario's schema.
        key_prefix: Only the completed jobs whose key starts with this.
        submitted: When each of those jobs was submitted (Unix seconds), by job id.
    """
    rows = await conn.fetch(
        "SELECT job_id::text AS id, extract(epoch FROM started_at) AS started,"
        " extract(epoch FROM finished_at) AS finished"
        " FROM jobs WHERE state = 'complete' AND starts_with(key, $1)",
        key_prefix,
    )
    at = [(submitted[r["id"]], float(r["started"]), float(r["finished"])) for r in rows]
    return {
        "submit_to_start": percentiles_ms([s - q for q, s, _ in at]),
        "submit_to_complete": percentiles_ms([f - q for q, _, f in at]),
    }


def percentiles_ms(samples: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 of samples in seconds, in milliseconds (linear interpolation)."""
    ordered = sorted(samples)
    result = {}
    for p in PERCENTILES:
        position = p * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        value = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
        result[f"p{round(p * 100)}"] = round(value * 1000, 2)
    return result


async def wait_for(
    check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.25
) -> None:
    """Polls an async ``check`` until it is true; raises TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


async def wait_complete(
    conn: asyncpg.Connection[Any],
    count: int,
    *,
    key_prefix: str = "",
    alive: Callable[[], None],
    timeout: float,
) -> None:
    """Waits until ``count`` jobs whose key starts with ``key_prefix`` are complete.

    Args:
        conn: A connection to the scenario's schema.
        count: How many.
        key_prefix: Which jobs.
        alive: Raises when the worker has died (checked on every poll).
        timeout: Seconds to wait at most.
    """

    async def check() -> bool:
        alive()
        return await count_complete(conn, key_prefix) >= count

    await wait_for(check, timeout=timeout, what=f"{count} complete jobs ({key_prefix or 'all'})")
