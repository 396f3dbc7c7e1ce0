"""``python -m bench.ledgerinsert``: the ledger's insert as ``unnest`` arrays against COPY,
and the Postgres cost of a job's whole write path (SCALING.md builds on it).

The ledger writes one statement per fetch. Two ways to hand Postgres a fetch of rows:
``unnest`` over one array per column (``conveyor.ledger.rows.INSERT_QUEUED``, one round
trip), or COPY into a temporary table and the same insert from it (a transaction, the
COPY, then the statement). This times both on batches of ``BATCH`` new jobs into a
migrated schema, alternating so both see the same load, then the unnest insert without
the jobs insert trigger's notification, and a re-read where every row exists already.
Then the three statements a job meets with the ledger on: the ledger's insert, the
worker's claim over that row (``CLAIM_MANY``) and its completion (``COMPLETE_MANY``), each
on a batch of ``BATCH``, with the time per job (one backend, so it is that backend's
time) and the WAL bytes per job (``pg_current_wal_insert_lsn`` before and after), and
the bytes the two tables then hold per completed job (heap and indexes).
Prints microseconds (and bytes) per row: medians, the first rounds left out as warm-up.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import statistics
import time
import uuid
from typing import Any

import asyncpg

from bench import stack
from conveyor import db, migrations
from conveyor.consumer import queries
from conveyor.ledger import rows
from conveyor.ledger.envelopes import QueuedRow
from conveyor.producer.jobids import new_job_id
from conveyor.settings import Settings

BATCH = 2000
ROUNDS = 15
WARM_UP = 3

_TEMP = """
CREATE TEMP TABLE IF NOT EXISTS ledger_input (
    job_id uuid, type text, key text, tenant_id text, priority text, batch_id uuid,
    dedupe_key text, max_attempts int, submitted_at timestamptz, attempt int,
    source_topic text, source_partition int, source_offset bigint
) ON COMMIT DELETE ROWS
"""

_FROM_TEMP = """
WITH inserted AS (
    INSERT INTO jobs (
        job_id, type, key, tenant_id, priority, batch_id, dedupe_key, max_attempts,
        submitted_at, state, attempts, source_topic, source_partition, source_offset
    )
    SELECT job_id, type, key, tenant_id, priority, batch_id, dedupe_key, max_attempts,
        submitted_at, 'queued', 0, source_topic, source_partition, source_offset
    FROM ledger_input ORDER BY job_id
    ON CONFLICT (job_id) DO NOTHING
    RETURNING job_id
)
INSERT INTO job_transitions (job_id, state, at, attempt)
SELECT i.job_id, 'queued', i.submitted_at, i.attempt
FROM inserted JOIN ledger_input AS i USING (job_id) ORDER BY i.job_id
"""


def _batch(first_offset: int) -> list[QueuedRow]:
    now = dt.datetime.now(dt.UTC)
    return [
        QueuedRow(
            new_job_id(),  # as the producer makes them
            "bench.noop",
            f"k{i}",
            None,
            "normal",
            None,
            None,
            None,
            now,
            1,
            "bench.jobs.normal",
            i % 4,
            first_offset + i,
        )
        for i in range(BATCH)
    ]


def _per_row_us(seconds: list[float]) -> float:
    return round(statistics.median(seconds[WARM_UP:]) / BATCH * 1e6, 1)


async def _unnest(pool: asyncpg.Pool[Any], batch: list[QueuedRow]) -> float:
    started = time.perf_counter()
    await pool.execute(rows.INSERT_QUEUED, *rows.arguments(batch))
    return time.perf_counter() - started


async def _copy(pool: asyncpg.Pool[Any], batch: list[QueuedRow]) -> float:
    started = time.perf_counter()
    async with pool.acquire() as conn, conn.transaction():
        await conn.copy_records_to_table("ledger_input", records=batch)
        await conn.execute(_FROM_TEMP)
    return time.perf_counter() - started


async def measure(database_url: str) -> dict[str, float]:
    """Times both ways in a fresh schema (dropped after); µs per row by method."""
    settings = Settings(
        database_url=database_url, database_schema=f"bench_ledger_{uuid.uuid4().hex[:8]}"
    )
    await migrations.migrate(settings)
    pool = await db.create_pool(settings, min_size=1, max_size=1)
    try:
        await pool.execute(_TEMP)
        unnest: list[float] = []
        copy: list[float] = []
        for n in range(ROUNDS):
            unnest.append(await _unnest(pool, _batch(2 * n * BATCH)))
            copy.append(await _copy(pool, _batch((2 * n + 1) * BATCH)))
        await pool.execute("ALTER TABLE jobs DISABLE TRIGGER jobs_notify_insert")
        quiet = [await _unnest(pool, _batch(-(n + 1) * BATCH)) for n in range(ROUNDS)]
        await pool.execute("ALTER TABLE jobs ENABLE TRIGGER jobs_notify_insert")
        again = _batch(0)
        await _unnest(pool, again)
        reread = [await _unnest(pool, again) for _ in range(ROUNDS)]
    finally:
        await pool.close()
        await stack.drop_schema(database_url, settings.database_schema)
    return {
        "unnest_us_per_row": _per_row_us(unnest),
        "copy_us_per_row": _per_row_us(copy),
        "unnest_without_notify_us_per_row": _per_row_us(quiet),
        "reread_all_present_us_per_row": _per_row_us(reread),
    }


async def _timed_wal(pool: asyncpg.Pool[Any], sql: str, *args: Any) -> tuple[float, int]:
    async with pool.acquire() as conn:
        before = await conn.fetchval("SELECT pg_current_wal_insert_lsn()")
        started = time.perf_counter()
        await conn.execute(sql, *args)
        seconds = time.perf_counter() - started
        wal = await conn.fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::pg_lsn)", before
        )
    return seconds, int(wal)


async def lifecycle(database_url: str) -> dict[str, float]:
    """µs and WAL bytes per job of the ledger insert, the claim over it, the completion."""
    settings = Settings(
        database_url=database_url, database_schema=f"bench_life_{uuid.uuid4().hex[:8]}"
    )
    await migrations.migrate(settings)
    pool = await db.create_pool(settings, min_size=1, max_size=1, custom_plans=True)
    times: dict[str, list[float]] = {"insert": [], "claim": [], "complete": []}
    wal: dict[str, list[float]] = {"insert": [], "claim": [], "complete": []}
    try:
        for n in range(ROUNDS):
            batch = _batch(n * BATCH)
            ids = [r.job_id for r in batch]
            steps: dict[str, tuple[Any, ...]] = {
                "insert": (rows.INSERT_QUEUED, *rows.arguments(batch)),
                "claim": (
                    queries.CLAIM_MANY,
                    ids,
                    [r.type for r in batch],
                    [r.key for r in batch],
                    [None] * BATCH,
                    [r.priority for r in batch],
                    [None] * BATCH,
                    [None] * BATCH,
                    [None] * BATCH,
                    [r.submitted_at for r in batch],
                    [1] * BATCH,
                    "bench-worker",
                    30.0,
                ),
                "complete": (
                    queries.COMPLETE_MANY,
                    ids,
                    ["bench-worker"] * BATCH,
                    [1] * BATCH,
                    ["null"] * BATCH,
                ),
            }
            for name, (sql, *args) in steps.items():
                seconds, written = await _timed_wal(pool, str(sql), *args)
                times[name].append(seconds)
                wal[name].append(written * 1e-6)  # MB, so _per_row_us gives bytes
        size = await pool.fetchval(
            "SELECT pg_total_relation_size('jobs') + pg_total_relation_size('job_transitions')"
        )
    finally:
        await pool.close()
        await stack.drop_schema(database_url, settings.database_schema)
    figures = {f"{k}_us_per_job": _per_row_us(v) for k, v in times.items()}
    figures |= {f"{k}_wal_bytes_per_job": _per_row_us(v) for k, v in wal.items()}
    # Heap, indexes and TOAST of both tables, per completed job.
    figures["stored_bytes_per_job"] = round(int(size) / (ROUNDS * BATCH), 1)
    return figures


def main() -> None:
    """Starts (or finds) Postgres as ``python -m bench`` does and prints the figures."""
    with stack.services() as services:
        url = services.settings.database_url
        figures = asyncio.run(measure(url)) | asyncio.run(lifecycle(url))
    for name, value in figures.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
