"""The Overview page's figures: per priority, now, over 5 minutes and over the hour.

From Postgres: queued and running jobs, jobs done and failed in the last 5 minutes and
hour, p50/p99 wait (submit to start) of the jobs started in the last 5 minutes, the DLQ's
pending rows, and per-minute series for the last hour (completed, failed and the median
wait per priority). Every query reads an index range bounded by time or by live state
(``0020_ui_indexes.sql``), so the cost follows the last hour's traffic, not the table.
The consumer-group lag per priority comes from Kafka (``conveyor.ui.cluster``).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

import asyncpg

from conveyor.db import database_errors
from conveyor.topology.model import PRIORITIES
from conveyor.ui.queries import known_priority

WINDOW_MINUTES = 60

_LIVE = """
SELECT priority, state, count(*) AS n FROM jobs
WHERE state IN ('queued', 'processing') GROUP BY priority, state
"""

_FINISHED = """
SELECT priority, state,
       count(*) FILTER (WHERE finished_at >= now() - interval '5 minutes') AS m5,
       count(*) AS h1
FROM jobs
WHERE state IN ('complete', 'failed', 'cancelled') AND finished_at >= now() - interval '1 hour'
GROUP BY priority, state
"""

_WAITS = """
SELECT priority,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - submitted_at))
           AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - submitted_at))
           AS p99
FROM jobs
WHERE started_at IS NOT NULL AND started_at >= now() - interval '5 minutes'
  AND submitted_at IS NOT NULL
GROUP BY priority
"""

_DLQ = """
SELECT priority, count(*) AS n FROM job_dlq WHERE replayed_at IS NULL GROUP BY priority
"""

_THROUGHPUT = """
SELECT date_trunc('minute', finished_at) AS minute, priority, state, count(*) AS n
FROM jobs
WHERE state IN ('complete', 'failed') AND finished_at >= date_trunc('minute', now()) - $1::interval
GROUP BY 1, 2, 3
"""

_WAIT_SERIES = """
SELECT date_trunc('minute', started_at) AS minute, priority,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - submitted_at))
           AS p50
FROM jobs
WHERE started_at IS NOT NULL AND started_at >= date_trunc('minute', now()) - $1::interval
  AND submitted_at IS NOT NULL
GROUP BY 1, 2
"""


def _empty_priority() -> dict[str, Any]:
    return {
        "queued": 0,
        "running": 0,
        "lag": None,
        "complete_5m": 0,
        "complete_1h": 0,
        "failed_5m": 0,
        "failed_1h": 0,
        "cancelled_1h": 0,
        "wait_p50_ms": None,
        "wait_p99_ms": None,
        "dlq_pending": 0,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)


async def overview(
    pool: asyncpg.Pool[Any], lag: dict[str, int | None] | None = None
) -> dict[str, Any]:
    """Everything the Overview page shows, per priority, with the per-minute series.

    Args:
        pool: Connections to conveyor's schema.
        lag: Consumer-group lag per priority, when Kafka answered.

    Returns:
        ``{"at", "priorities": {p: {...}}, "dlq_pending", "series": {...}}``.
    """
    window = dt.timedelta(minutes=WINDOW_MINUTES)
    with database_errors("reading the overview"):
        async with pool.acquire() as conn:
            now = await conn.fetchval("SELECT now()")
            live = await conn.fetch(_LIVE)
            finished = await conn.fetch(_FINISHED)
            waits = await conn.fetch(_WAITS)
            dlq = await conn.fetch(_DLQ)
            throughput = await conn.fetch(_THROUGHPUT, window)
            wait_series = await conn.fetch(_WAIT_SERIES, window)
    per = {p: _empty_priority() for p in PRIORITIES}
    for r in live:
        per[known_priority(r["priority"])]["queued" if r["state"] == "queued" else "running"] += r[
            "n"
        ]
    for r in finished:
        row = per[known_priority(r["priority"])]
        if r["state"] == "cancelled":
            row["cancelled_1h"] += r["h1"]
        else:
            row[f"{r['state']}_5m"] += r["m5"]
            row[f"{r['state']}_1h"] += r["h1"]
    for r in waits:
        row = per[known_priority(r["priority"])]
        row["wait_p50_ms"], row["wait_p99_ms"] = _ms(r["p50"]), _ms(r["p99"])
    for r in dlq:
        per[known_priority(r["priority"])]["dlq_pending"] += r["n"]
    for priority, value in (lag or {}).items():
        if priority in per:
            per[priority]["lag"] = value
    return {
        "at": now.isoformat(),
        "priorities": per,
        "dlq_pending": sum(row["dlq_pending"] for row in per.values()),
        "series": _series(now, throughput, wait_series),
    }


def _series(
    now: dt.datetime, throughput: list[asyncpg.Record], waits: list[asyncpg.Record]
) -> dict[str, Any]:
    """Per-minute points for the last hour, zero-filled, oldest first."""
    end = now.replace(second=0, microsecond=0)
    minutes = [end - dt.timedelta(minutes=i) for i in range(WINDOW_MINUTES, -1, -1)]
    index = {m: i for i, m in enumerate(minutes)}
    counts: dict[str, dict[str, list[int]]] = {
        state: {p: [0] * len(minutes) for p in PRIORITIES} for state in ("complete", "failed")
    }
    for r in throughput:
        i = index.get(r["minute"])
        if i is not None:
            counts[r["state"]][known_priority(r["priority"])][i] += r["n"]
    wait: defaultdict[str, list[float | None]] = defaultdict(lambda: [None] * len(minutes))
    for r in waits:
        i = index.get(r["minute"])
        if i is not None:
            wait[known_priority(r["priority"])][i] = _ms(r["p50"])
    return {
        "minutes": [m.isoformat() for m in minutes],
        "complete": counts["complete"],
        "failed": counts["failed"],
        "wait_p50_ms": {p: wait[p] for p in PRIORITIES},
    }
