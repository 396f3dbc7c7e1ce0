"""The worker heartbeat's `workers` rows, and how the UI reads them (live, stale, stopped)."""

from __future__ import annotations

import dataclasses
from typing import Any

import asyncpg

from conveyor import db as conveyor_db
from conveyor.consumer.heartbeat import Heartbeat
from conveyor.settings import Settings
from conveyor.ui import cluster


@dataclasses.dataclass
class _Worker:
    worker_id: str = "host-a-1234"
    priorities: list[str] = dataclasses.field(default_factory=lambda: ["critical", "high"])
    concurrency: int = 8
    in_flight: int = 3
    assignment: frozenset[tuple[str, int]] = frozenset({("p.jobs.high", 1), ("p.jobs.high", 0)})


async def test_a_beat_upserts_the_row_and_leaving_marks_it_stopped(
    migrated: Settings, db: asyncpg.Connection[Any]
) -> None:
    pool = await conveyor_db.create_pool(migrated)
    worker = _Worker()
    try:
        heartbeat = Heartbeat(pool, worker, interval=5.0)
        await heartbeat.beat()
        worker.in_flight = 5
        await heartbeat.beat()
        (row,) = await cluster.workers(pool)
        assert (row["worker_id"], row["status"], row["in_flight"]) == ("host-a-1234", "live", 5)
        assert row["partitions"] == ["p.jobs.high:0", "p.jobs.high:1"]
        assert row["priorities"] == ["critical", "high"]
        await db.execute(
            f'UPDATE "{migrated.database_schema}".workers '
            "SET heartbeat_at = now() - interval '16 seconds'"
        )
        assert [w["status"] for w in await cluster.workers(pool)] == ["stale"]
        await heartbeat.leave()
        (left,) = await cluster.workers(pool)
        assert (left["status"], left["in_flight"], left["partitions"]) == ("stopped", 0, [])
    finally:
        await pool.close()
