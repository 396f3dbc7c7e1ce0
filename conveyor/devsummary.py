"""What ``conveyor dev`` shows while it runs: per-priority counts, waits, retries, the DLQ.

The counts and waits come from Postgres (the durable truth); in-flight jobs and retries
from the running worker. A terminal gets a table redrawn in place; a pipe gets one status
line per refresh, so logs and tests read it line by line.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import asyncpg

from conveyor.consumer.worker import Worker
from conveyor.topology.model import PRIORITIES

_COUNTS = "SELECT priority, state, count(*) AS n FROM jobs GROUP BY 1, 2"
# The wait of a job's latest start (a retried job's includes its backoff), per priority
# and overall (the row whose priority is null).
_WAITS = """
SELECT priority,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - submitted_at))
           AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - submitted_at))
           AS p99
FROM jobs
WHERE started_at IS NOT NULL AND submitted_at IS NOT NULL
GROUP BY GROUPING SETS ((priority), ())
"""
_DLQ = "SELECT count(*) FROM job_dlq WHERE replayed_at IS NULL"

_HEADER = (
    f"{'priority':<9}{'queued':>7}{'running':>8}{'complete':>9}{'failed':>7}"
    f"{'cancelled':>10}{'wait p50':>10}{'wait p99':>10}"
)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The state of the dev run at one moment."""

    states: dict[str, Counter[str]]
    waits: dict[str | None, tuple[float, float]]
    dlq_pending: int
    in_flight: int
    retried: int

    def total(self, state: str) -> int:
        """Jobs of every priority in ``state``."""
        return sum(c[state] for c in self.states.values())


async def take(conn: asyncpg.Connection[Any], worker: Worker) -> Snapshot:
    """Reads the counts and waits from Postgres and the live figures from the worker."""
    states: dict[str, Counter[str]] = {p: Counter() for p in PRIORITIES}
    for row in await conn.fetch(_COUNTS):
        states.setdefault(row["priority"], Counter())[row["state"]] = row["n"]
    waits = {row["priority"]: (row["p50"], row["p99"]) for row in await conn.fetch(_WAITS)}
    dlq_pending = int(await conn.fetchval(_DLQ))
    return Snapshot(states, waits, dlq_pending, worker.in_flight, worker.stats.retried)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def table(snapshot: Snapshot) -> list[str]:
    """The per-priority table and a totals line."""
    lines = [_HEADER]
    for priority in PRIORITIES:
        c = snapshot.states[priority]
        p50, p99 = snapshot.waits.get(priority, (None, None))
        lines.append(
            f"{priority:<9}{c['queued']:>7}{c['processing']:>8}{c['complete']:>9}"
            f"{c['failed']:>7}{c['cancelled']:>10}{_ms(p50):>10}{_ms(p99):>10}"
        )
    lines.append(
        f"in flight {snapshot.in_flight}, retries {snapshot.retried}, "
        f"DLQ {snapshot.dlq_pending} pending (conveyor dlq list)"
    )
    return lines


def status_line(snapshot: Snapshot) -> str:
    """One line: completions per priority, in flight, retries, DLQ and the overall waits."""
    per = " ".join(f"{p[0]}{snapshot.states[p]['complete']}" for p in PRIORITIES)
    p50, p99 = snapshot.waits.get(None, (None, None))
    return (
        f"complete {snapshot.total('complete')} ({per}), failed {snapshot.total('failed')}, "
        f"in flight {snapshot.in_flight}, retries {snapshot.retried}, "
        f"DLQ {snapshot.dlq_pending}, wait p50 {_ms(p50)} p99 {_ms(p99)}"
    )


def redraw(previous_lines: int, lines: list[str]) -> str:
    """The terminal text replacing the last ``previous_lines`` lines with ``lines``."""
    up = f"\x1b[{previous_lines}F\x1b[J" if previous_lines else ""
    return up + "\n".join(lines) + "\n"
