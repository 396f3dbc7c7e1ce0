"""Scenario ui: how fast every page of ``conveyor ui`` answers on big tables.

The tables are filled by bulk ``INSERT ... SELECT generate_series`` (no Kafka, no worker):
1,000,000 job rows in a full run, spread over the last 7 days (most complete, some failed,
cancelled, queued and running, 24 types, 50 tenants, 10,000 keys, a batch id on every 10th
job), two transitions for each of the newest 100,000 jobs, and 100,000 DLQ rows (a third
replayed). Then ``conveyor ui`` serves on a loopback port and each page is fetched
``repeats`` times over real HTTP, one request at a time; the figures are p50 and p95 in
milliseconds per page. The goal is every page within 300 ms.

Run it alone with ``python -m bench.scenarios.ui [--quick]``; ``run(ctx)`` is the
scenario function ``bench.scenarios.SCENARIOS`` takes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import asyncpg
import httpx

from bench import stack
from bench.context import Context
from bench.sizes import FULL, QUICK
from conveyor.db import quote_ident
from conveyor.settings import Settings
from conveyor.ui import server
from conveyor.ui.state import UiOptions

FULL_JOBS = 1_000_000
FULL_DLQ = 100_000
FULL_REPEATS = 40
QUICK_JOBS = 20_000
QUICK_DLQ = 2_000
QUICK_REPEATS = 5
TRANSITION_JOBS = 100_000
GOAL_MS = 300.0

_JOBS = """
INSERT INTO jobs (job_id, type, key, tenant_id, priority, batch_id, state, attempts,
                  max_attempts, result, created_at, updated_at, submitted_at, started_at,
                  finished_at)
SELECT md5('job' || i)::uuid,
       'type.' || (i % 24),
       'key-' || (i % 10000),
       'tenant-' || (i % 50),
       (ARRAY['critical', 'high', 'normal', 'low'])[1 + i % 4],
       CASE WHEN i % 10 = 0 THEN md5('batch' || (i / 1000))::uuid END,
       st,
       1, 5,
       CASE WHEN st = 'complete' THEN '{"ok": true}'::jsonb END,
       at, at, at, at + interval '20 ms',
       CASE WHEN st IN ('complete', 'failed', 'cancelled') THEN at + interval '120 ms' END
FROM (
    SELECT i,
           now() - (($1::bigint - i) * (interval '7 days' / $1::bigint)) AS at,
           CASE WHEN i % 100 < 90 THEN 'complete'
                WHEN i % 100 < 94 THEN 'failed'
                WHEN i % 100 < 95 THEN 'cancelled'
                WHEN i % 1000 < 990 THEN 'queued'
                ELSE 'processing' END AS st
    FROM generate_series(1, $1::bigint) AS i
) AS g
"""

_TRANSITIONS = """
INSERT INTO job_transitions (job_id, state, at, attempt)
SELECT job_id, s.state, j.started_at + s.after, 1
FROM (SELECT job_id, started_at FROM jobs ORDER BY created_at DESC LIMIT $1) AS j,
     (VALUES ('processing', interval '0'), ('complete', interval '100 ms')) AS s (state, after)
"""

_DLQ = """
INSERT INTO job_dlq (original_job_id, tenant_id, type, payload, content_type, error_reason,
                     attempts, error_history, dlq_at, replayed_at, source_topic,
                     source_partition, source_offset, key, priority)
SELECT md5('dead' || i)::uuid, 'tenant-' || (i % 50), 'type.' || (i % 24),
       convert_to('{"n": ' || i || '}', 'UTF8'), 'application/json',
       (ARRAY['MaxRetries', 'Validation', 'HandlerMissing', 'Deserialization', 'Permanent',
              'Timeout'])[1 + i % 6],
       5, '[{"attempt": 1, "error_type": "Boom", "message": "no", "at": null}]'::jsonb,
       now() - (($1::bigint - i) * (interval '30 days' / $1::bigint)),
       CASE WHEN i % 3 = 0 THEN now() END,
       'bench.jobs.dlq', i % 4, i, 'key-' || (i % 10000),
       (ARRAY['critical', 'high', 'normal', 'low'])[1 + i % 4]
FROM generate_series(1, $1::bigint) AS i
"""


async def fill(settings: Settings, jobs: int, dead: int) -> dict[str, float]:
    """Fills the workspace's tables; returns how long each step took, in seconds."""
    conn = await asyncpg.connect(
        settings.database_url,
        server_settings={"search_path": quote_ident(settings.database_schema)},
    )
    timings: dict[str, float] = {}
    try:
        for name, sql, count in (
            ("jobs", _JOBS, jobs),
            ("transitions", _TRANSITIONS, min(jobs, TRANSITION_JOBS)),
            ("dlq", _DLQ, dead),
        ):
            started = time.monotonic()
            await conn.execute(sql, count)
            timings[f"insert_{name}_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        await conn.execute("ANALYZE jobs; ANALYZE job_transitions; ANALYZE job_dlq")
        timings["analyze_s"] = round(time.monotonic() - started, 1)
    finally:
        await conn.close()
    return timings


async def _sample_ids(settings: Settings) -> dict[str, str]:
    conn = await asyncpg.connect(
        settings.database_url,
        server_settings={"search_path": quote_ident(settings.database_schema)},
    )
    try:
        job = await conn.fetchval("SELECT job_id FROM jobs ORDER BY created_at DESC LIMIT 1")
        batch = await conn.fetchval(
            "SELECT batch_id FROM jobs WHERE batch_id IS NOT NULL ORDER BY created_at DESC LIMIT 1"
        )
        entry = await conn.fetchval("SELECT max(id) FROM job_dlq")
    finally:
        await conn.close()
    return {"job": str(job), "batch": str(batch), "entry": str(entry)}


def pages(ids: dict[str, str], cursor: str) -> dict[str, str]:
    """Page name -> path, the pages an operator opens, with typical filters."""
    return {
        "overview": "/",
        "api_overview": "/api/overview",
        "jobs": "/jobs",
        "jobs_page_2": f"/jobs?cursor={cursor}",
        "jobs_by_id": f"/jobs?job_id={ids['job']}",
        "jobs_by_type": "/jobs?type=type.7",
        "jobs_by_state_failed": "/jobs?state=failed",
        "jobs_by_tenant": "/jobs?tenant=tenant-3",
        "jobs_by_key": "/jobs?key=key-42",
        "jobs_type_and_state": "/jobs?type=type.7&state=failed",
        "jobs_last_hour": "/jobs?since=" + time.strftime("%Y-%m-%dT%H:00", time.gmtime()),
        "job": f"/jobs/{ids['job']}",
        "batch": f"/batches/{ids['batch']}",
        "dlq": "/dlq",
        "dlq_all": "/dlq?show=all",
        "dlq_by_reason": "/dlq?reason=Timeout",
        "dlq_by_type_tenant": "/dlq?type=type.5&tenant=tenant-5",
        "dlq_entry": f"/dlq/{ids['entry']}",
        "workers": "/workers",
        "topology": "/topology",
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 1)


async def measure(url: str, paths: dict[str, str], repeats: int) -> dict[str, dict[str, float]]:
    """Fetches each path ``repeats`` times (after one warm-up); p50/p95/max in ms."""
    figures: dict[str, dict[str, float]] = {}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for name, path in paths.items():
            (await client.get(path)).raise_for_status()  # warm-up: plans, pool, caches
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                response = await client.get(path)
                times.append((time.perf_counter() - started) * 1000.0)
                response.raise_for_status()
            figures[name] = {
                "p50_ms": _percentile(times, 0.5),
                "p95_ms": _percentile(times, 0.95),
                "max_ms": round(max(times), 1),
                "mean_ms": round(statistics.fmean(times), 1),
            }
    return figures


async def run(ctx: Context) -> dict[str, Any]:
    """Fills big tables and measures every page of the UI."""
    quick = ctx.sizes == QUICK
    jobs, dead = (QUICK_JOBS, QUICK_DLQ) if quick else (FULL_JOBS, FULL_DLQ)
    repeats = QUICK_REPEATS if quick else FULL_REPEATS
    async with stack.workspace(ctx.stack, "ui") as settings:
        ctx.log(f"ui: inserting {jobs} jobs and {dead} DLQ rows")
        timings = await fill(settings, jobs, dead)
        ids = await _sample_ids(settings)
        port = server.free_port(preferred=0)
        with server.serving(settings, UiOptions(), "127.0.0.1", port) as url:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                cursor = (await client.get("/api/jobs")).json()["next"]
            ctx.log(f"ui: fetching {len(pages(ids, cursor))} pages {repeats} times each")
            figures = await measure(url, pages(ids, cursor), repeats)
    slowest = max(figures.items(), key=lambda item: item[1]["p95_ms"])
    return {
        "params": {"jobs": jobs, "dlq_rows": dead, "repeats": repeats, **timings},
        "contenders": {
            "conveyor": {
                "pages": figures,
                "slowest_page": slowest[0],
                "slowest_p95_ms": slowest[1]["p95_ms"],
                "all_within_goal": all(f["p95_ms"] <= GOAL_MS for f in figures.values()),
            }
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Runs the scenario alone and prints its result as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.scenarios.ui")
    parser.add_argument("--quick", action="store_true", help="20,000 jobs, 2,000 DLQ rows")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)

    with stack.services() as running:
        ctx = Context(stack=running, sizes=QUICK if args.quick else FULL, results={}, log=log)
        result = asyncio.run(run(ctx))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
