"""The migration runner against a real Postgres, and the constraints and purge functions
that 0001_jobs.sql creates. Each test migrates its own random schema."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import asyncpg
import pytest

from conveyor import migrations
from conveyor.db import quote_ident
from conveyor.errors import MigrationError
from conveyor.settings import Settings

DEADLINE = 10.0

JOB_COLUMNS = {
    "job_id", "type", "key", "tenant_id", "priority", "batch_id", "dedupe_key", "state",
    "attempts", "max_attempts", "result", "last_error", "progress_pct", "progress_message",
    "lease_owner", "lease_epoch", "lease_expires_at", "cancel_requested_at", "submitted_at",
    "created_at", "updated_at", "started_at", "finished_at",
}  # fmt: skip
TRANSITION_COLUMNS = {"id", "job_id", "state", "at", "attempt", "error"}
DLQ_COLUMNS = {
    "id", "original_job_id", "tenant_id", "type", "payload", "content_type", "error_reason",
    "attempts", "error_history", "dlq_at", "replayed_at", "trace_id", "source_topic",
    "source_partition", "source_offset",
}  # fmt: skip


def _all_names() -> list[str]:
    return [m.name for m in migrations.load_migrations()]


async def _columns(db: asyncpg.Connection[Any], schema: str, table: str) -> set[str]:
    rows = await db.fetch(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = $1 AND table_name = $2",
        schema,
        table,
    )
    return {row["column_name"] for row in rows}


async def _recorded(db: asyncpg.Connection[Any], schema: str) -> list[tuple[int, str]]:
    rows = await db.fetch(
        f"SELECT version, name FROM {quote_ident(schema)}.schema_migrations ORDER BY version"
    )
    return [(row["version"], row["name"]) for row in rows]


async def _insert_job(
    db: asyncpg.Connection[Any],
    schema: str,
    *,
    state: str,
    finished_days_ago: float | None,
    tenant_id: str | None = None,
) -> uuid.UUID:
    job_id = uuid.uuid4()
    await db.execute(
        f"INSERT INTO {quote_ident(schema)}.jobs (job_id, type, state, tenant_id, finished_at)"
        " VALUES ($1, 'email.send', $2, $3,"
        " CASE WHEN $4::float8 IS NULL THEN NULL ELSE now() - make_interval(days => 1) * $4 END)",
        job_id,
        state,
        tenant_id,
        finished_days_ago,
    )
    await db.execute(
        f"INSERT INTO {quote_ident(schema)}.job_transitions (job_id, state, attempt)"
        " VALUES ($1, 'queued', 0), ($1, $2, 1)",
        job_id,
        state,
    )
    return job_id


async def _insert_dlq(
    db: asyncpg.Connection[Any],
    schema: str,
    *,
    replayed_days_ago: float | None = None,
    error_history: str = "[]",
    source: tuple[str, int, int] | None = None,
) -> int:
    topic, partition, offset = source or (None, None, None)
    row_id: int = await db.fetchval(
        f"INSERT INTO {quote_ident(schema)}.job_dlq (original_job_id, type, payload,"
        " error_reason, attempts, error_history, replayed_at, source_topic, source_partition,"
        " source_offset)"
        " VALUES ($1, 'email.send', '\\x00'::bytea, 'MaxRetries', 5, $2::jsonb,"
        " CASE WHEN $3::float8 IS NULL THEN NULL ELSE now() - make_interval(days => 1) * $3 END,"
        " $4, $5, $6) RETURNING id",
        uuid.uuid4(),
        error_history,
        replayed_days_ago,
        topic,
        partition,
        offset,
    )
    return row_id


async def test_migrate_creates_the_tables_and_purge_functions_in_the_configured_schema(
    settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    schema = settings.database_schema

    applied = await migrations.migrate(settings)

    assert applied == _all_names()
    tables = await db.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
    )
    assert {"jobs", "job_transitions", "job_dlq", "schema_migrations"} <= {
        row["table_name"] for row in tables
    }
    functions = await db.fetch(
        "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = $1",
        schema,
    )
    assert {"purge_finished_jobs", "purge_replayed_dlq"} <= {row["proname"] for row in functions}
    assert await _columns(db, schema, "jobs") >= JOB_COLUMNS
    assert await _columns(db, schema, "job_transitions") >= TRANSITION_COLUMNS
    assert await _columns(db, schema, "job_dlq") >= DLQ_COLUMNS
    expected = [(m.version, m.name) for m in migrations.load_migrations()]
    assert await _recorded(db, schema) == expected


async def test_pending_lists_everything_before_and_nothing_after_migrate(
    settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    before = await migrations.pending(settings)
    schema_after_pending = await db.fetchval(
        "SELECT count(*) FROM pg_namespace WHERE nspname = $1", settings.database_schema
    )

    await migrations.migrate(settings)

    assert before == _all_names()
    assert schema_after_pending == 0
    assert await migrations.pending(settings) == []


async def test_second_migrate_applies_nothing(settings: Settings) -> None:
    first = await migrations.migrate(settings)

    second = await migrations.migrate(settings)

    assert first == _all_names()
    assert second == []


async def test_concurrent_migrates_both_succeed_and_apply_each_migration_once(
    settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    first, second = await asyncio.gather(migrations.migrate(settings), migrations.migrate(settings))

    assert sorted(first + second) == sorted(_all_names())
    expected = [(m.version, m.name) for m in migrations.load_migrations()]
    assert await _recorded(db, settings.database_schema) == expected


async def _wait_until_blocked_by(db: asyncpg.Connection[Any]) -> None:
    holder = db.get_server_pid()
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        blocked = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", holder
        )
        if blocked:
            return
        await asyncio.sleep(0.02)  # polling with a deadline, not a bare sleep
    raise AssertionError(f"no session waited on the lock within {DEADLINE}s")


async def test_migrate_waits_for_the_schema_lock_before_creating_the_schema(
    settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    """The lock comes before CREATE SCHEMA, so racing first runs cannot collide on it."""
    key = f"conveyor.migrations:{settings.database_schema}"
    await db.execute("SELECT pg_advisory_lock(hashtext($1))", key)
    try:
        run = asyncio.create_task(migrations.migrate(settings))
        await _wait_until_blocked_by(db)
        schemas = await db.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1", settings.database_schema
        )
        assert schemas == 0
        assert not run.done()
    finally:
        await db.execute("SELECT pg_advisory_unlock(hashtext($1))", key)

    assert await asyncio.wait_for(run, DEADLINE) == _all_names()


async def test_migrate_gives_up_when_the_lock_stays_held(
    settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    key = f"conveyor.migrations:{settings.database_schema}"
    await db.execute("SELECT pg_advisory_lock(hashtext($1))", key)
    try:
        with pytest.raises(MigrationError, match="migration lock"):
            await migrations.migrate(settings, lock_timeout=0.2)
    finally:
        await db.execute("SELECT pg_advisory_unlock(hashtext($1))", key)


async def test_failing_migration_is_rolled_back_and_named_in_the_error(
    settings: Settings, db: asyncpg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = migrations.load_migrations()
    broken = migrations.Migration(
        version=9999,
        name="9999_broken",
        sql="CREATE TABLE half_done (id int);\nSELECT * FROM no_such_table;\n",
    )
    monkeypatch.setattr(migrations, "load_migrations", lambda: [*real, broken])
    schema = settings.database_schema

    with pytest.raises(MigrationError) as caught:
        await migrations.migrate(settings)

    message = str(caught.value)
    assert "9999_broken.sql" in message
    assert 'relation "no_such_table" does not exist' in message
    assert "at line 2" in message
    half_done = await db.fetchval("SELECT to_regclass($1)", f"{schema}.half_done")
    assert half_done is None
    assert await _recorded(db, schema) == [(m.version, m.name) for m in real]
    assert await migrations.pending(settings) == ["9999_broken"]


async def test_dlq_error_history_must_be_a_json_array(
    migrated: Settings, db: asyncpg.Connection[Any]
) -> None:
    schema = migrated.database_schema
    await _insert_dlq(db, schema, error_history=json.dumps([{"attempt": 1, "error": "boom"}]))

    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await _insert_dlq(db, schema, error_history=json.dumps({"error": "boom"}))

    assert caught.value.constraint_name == "job_dlq_error_history_is_array"


async def test_dlq_source_position_cannot_be_recorded_twice(
    migrated: Settings, db: asyncpg.Connection[Any]
) -> None:
    schema = migrated.database_schema
    source = ("t.jobs.dlq", 3, 42)
    await _insert_dlq(db, schema, source=source)
    await _insert_dlq(db, schema, source=("t.jobs.dlq", 3, 43))

    with pytest.raises(asyncpg.UniqueViolationError):
        await _insert_dlq(db, schema, source=source)

    redelivered = await db.fetchval(
        f"INSERT INTO {quote_ident(schema)}.job_dlq (payload, error_reason, attempts,"
        " error_history, source_topic, source_partition, source_offset)"
        " VALUES ('\\x00'::bytea, 'Deserialization', 1, '[]', $1, $2, $3)"
        " ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING RETURNING id",
        *source,
    )
    assert redelivered is None
    count = await db.fetchval(f"SELECT count(*) FROM {quote_ident(schema)}.job_dlq")
    assert count == 2


async def test_purge_finished_jobs_deletes_only_jobs_finished_over_7_days_ago(
    migrated: Settings, db: asyncpg.Connection[Any]
) -> None:
    """Called with the default search_path: the function pins its own schema."""
    schema = migrated.database_schema
    old = [
        await _insert_job(db, schema, state=state, finished_days_ago=8)
        for state in ("complete", "failed", "cancelled")
    ]
    kept = {
        await _insert_job(db, schema, state="complete", finished_days_ago=6),
        await _insert_job(db, schema, state="processing", finished_days_ago=None),
        # Not in a final state, so kept even with an old finished_at.
        await _insert_job(db, schema, state="processing", finished_days_ago=30),
    }

    deleted = await db.fetchval(f"SELECT {quote_ident(schema)}.purge_finished_jobs()")

    assert deleted == len(old)
    jobs = await db.fetch(f"SELECT job_id FROM {quote_ident(schema)}.jobs")
    assert {row["job_id"] for row in jobs} == kept
    transitions = await db.fetch(
        f"SELECT DISTINCT job_id FROM {quote_ident(schema)}.job_transitions"
    )
    assert {row["job_id"] for row in transitions} == kept


async def test_purge_finished_jobs_takes_the_age_and_refuses_a_negative_one(
    migrated: Settings, db: asyncpg.Connection[Any]
) -> None:
    schema = quote_ident(migrated.database_schema)
    await _insert_job(db, migrated.database_schema, state="complete", finished_days_ago=2)
    await _insert_job(db, migrated.database_schema, state="failed", finished_days_ago=0.5)

    deleted = await db.fetchval(f"SELECT {schema}.purge_finished_jobs(interval '1 day')")

    assert deleted == 1
    with pytest.raises(asyncpg.RaiseError, match="non-negative"):
        await db.fetchval(f"SELECT {schema}.purge_finished_jobs(interval '-1 day')")


async def test_purge_replayed_dlq_deletes_only_rows_replayed_over_30_days_ago(
    migrated: Settings, db: asyncpg.Connection[Any]
) -> None:
    schema = migrated.database_schema
    await _insert_dlq(db, schema, replayed_days_ago=31)
    kept = {
        await _insert_dlq(db, schema, replayed_days_ago=29),
        await _insert_dlq(db, schema, replayed_days_ago=None),
    }
    # A row dead-lettered long ago but never replayed is pending work, never purged.
    await db.execute(
        f"UPDATE {quote_ident(schema)}.job_dlq SET dlq_at = now() - interval '90 days'"
        " WHERE replayed_at IS NULL"
    )

    deleted = await db.fetchval(f"SELECT {quote_ident(schema)}.purge_replayed_dlq()")

    assert deleted == 1
    rows = await db.fetch(f"SELECT id FROM {quote_ident(schema)}.job_dlq")
    assert {row["id"] for row in rows} == kept


async def test_deleting_jobs_deletes_their_transitions_and_no_others(
    migrated: Settings, db: asyncpg.Connection[Any]
) -> None:
    """0060 replaced the foreign key's cascade by a statement trigger."""
    schema = migrated.database_schema
    s = quote_ident(schema)
    doomed = [
        await _insert_job(db, schema, state="complete", finished_days_ago=1) for _ in range(3)
    ]
    kept = await _insert_job(db, schema, state="queued", finished_days_ago=None)

    status = await db.execute(f"DELETE FROM {s}.jobs WHERE job_id = ANY($1::uuid[])", doomed)

    assert status == "DELETE 3"
    rows = await db.fetch(f"SELECT job_id, count(*) AS n FROM {s}.job_transitions GROUP BY 1")
    assert {row["job_id"]: row["n"] for row in rows} == {kept: 2}


async def test_a_tenant_search_reads_the_partial_tenant_index(
    migrated: Settings, db: asyncpg.Connection[Any]
) -> None:
    """0070 keeps only rows with a tenant in jobs_tenant_idx; the UI's search by tenant
    (a parameter, as the page sends it) and a tenant role's policy still read it."""
    schema = migrated.database_schema
    s = quote_ident(schema)
    await db.execute(
        f"INSERT INTO {s}.jobs (job_id, type, state, tenant_id)"
        " SELECT gen_random_uuid(), 'email.send', 'complete',"
        " CASE WHEN i % 10 = 0 THEN 't' || (i % 7) END FROM generate_series(1, 2000) AS i"
    )
    await db.execute(f"ANALYZE {s}.jobs")
    entries = await db.fetchval(
        "SELECT reltuples FROM pg_class WHERE oid = $1::regclass",
        f"{s}.jobs_tenant_idx",
    )
    assert entries == 200  # the 1,800 rows without a tenant are not in it

    await db.execute(f"SET search_path TO {s}")
    await db.execute("SET enable_seqscan = off")
    await db.execute("SET plan_cache_mode = force_generic_plan")
    try:
        async with db.transaction():
            await db.execute("SET LOCAL conveyor.tenant_id = 't3'")
            for sql, args in [
                (
                    "SELECT job_id FROM jobs WHERE tenant_id = $1"
                    " ORDER BY created_at DESC, job_id DESC LIMIT 51",
                    ["t3"],
                ),
                (
                    "SELECT job_id FROM jobs WHERE tenant_id = current_setting($1, true)",
                    ["conveyor.tenant_id"],
                ),
            ]:
                plan = "\n".join(row[0] for row in await db.fetch(f"EXPLAIN {sql}", *args))
                assert "jobs_tenant_idx" in plan, plan
    finally:
        await db.execute("RESET ALL")
