"""Row-level security by tenant on jobs, job_dlq and job_transitions.

A tenant-facing role (not the owner, not a superuser) sees and writes only the rows of
the tenant named by its ``conveyor.tenant_id`` session setting. The owner, which runs the
migrations and the workers, is not restricted because RLS is enabled but not forced.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from conveyor import migrations
from conveyor.db import quote_ident
from conveyor.settings import Settings
from tests.conftest import unique_name

TABLES = ("jobs", "job_dlq", "job_transitions")


async def _insert_tenant_rows(
    conn: asyncpg.Connection[Any], schema: str, tenant: str | None
) -> uuid.UUID:
    """One job with two transitions and one DLQ row for ``tenant``; returns the job id."""
    s = quote_ident(schema)
    job_id = uuid.uuid4()
    await conn.execute(
        f"INSERT INTO {s}.jobs (job_id, type, state, tenant_id)"
        " VALUES ($1, 'report', 'failed', $2)",
        job_id,
        tenant,
    )
    await conn.execute(
        f"INSERT INTO {s}.job_transitions (job_id, state, attempt)"
        " VALUES ($1, 'queued', 0), ($1, 'failed', 1)",
        job_id,
    )
    await conn.execute(
        f"INSERT INTO {s}.job_dlq (original_job_id, tenant_id, type, payload, error_reason,"
        " attempts, error_history) VALUES ($1, $2, 'report', '\\x00'::bytea, 'Permanent', 1, '[]')",
        job_id,
        tenant,
    )
    return job_id


async def _visible(conn: asyncpg.Connection[Any], schema: str) -> dict[str, set[uuid.UUID]]:
    """The job ids each table shows to the connection's current role."""
    s = quote_ident(schema)
    queries = {
        "jobs": f"SELECT job_id AS id FROM {s}.jobs",
        "job_dlq": f"SELECT original_job_id AS id FROM {s}.job_dlq",
        "job_transitions": f"SELECT job_id AS id FROM {s}.job_transitions",
    }
    return {table: {row["id"] for row in await conn.fetch(q)} for table, q in queries.items()}


def _everywhere(*job_ids: uuid.UUID) -> dict[str, set[uuid.UUID]]:
    return {table: set(job_ids) for table in TABLES}


@pytest.fixture
async def tenant_role(migrated: Settings, db: asyncpg.Connection[Any]) -> AsyncIterator[str]:
    """A LOGIN role that is neither superuser nor owner, allowed to read and insert."""
    role = quote_ident(unique_name("cv_tenant_"))
    schema = quote_ident(migrated.database_schema)
    await db.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS")
    try:
        await db.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        tables = ", ".join(f"{schema}.{t}" for t in TABLES)
        await db.execute(f"GRANT SELECT, INSERT ON {tables} TO {role}")
        yield role
    finally:
        await db.execute(f"DROP OWNED BY {role}")
        await db.execute(f"DROP ROLE {role}")


@pytest.fixture
async def as_tenant_role(
    migrated: Settings, tenant_role: str
) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A fresh session switched to the tenant role, with no tenant set yet."""
    conn = await asyncpg.connect(migrated.database_url)
    try:
        await conn.execute(f"SET ROLE {tenant_role}")
        yield conn
    finally:
        await conn.close()


async def test_tenant_role_is_not_a_superuser(as_tenant_role: asyncpg.Connection[Any]) -> None:
    row = await as_tenant_role.fetchrow(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
    )

    assert row is not None
    assert (row["rolsuper"], row["rolbypassrls"]) == (False, False)


async def test_tenant_role_sees_only_its_tenants_rows(
    migrated: Settings, db: asyncpg.Connection[Any], as_tenant_role: asyncpg.Connection[Any]
) -> None:
    schema = migrated.database_schema
    job_a = await _insert_tenant_rows(db, schema, "a")
    job_b = await _insert_tenant_rows(db, schema, "b")
    await _insert_tenant_rows(db, schema, None)

    unset = await _visible(as_tenant_role, schema)
    await as_tenant_role.execute("SET conveyor.tenant_id = 'a'")
    as_a = await _visible(as_tenant_role, schema)
    await as_tenant_role.execute("SET conveyor.tenant_id = 'b'")
    as_b = await _visible(as_tenant_role, schema)
    await as_tenant_role.execute("RESET conveyor.tenant_id")
    after_reset = await _visible(as_tenant_role, schema)

    assert unset == _everywhere()
    assert as_a == _everywhere(job_a)
    assert as_b == _everywhere(job_b)
    assert after_reset == _everywhere()


async def test_tenant_role_cannot_write_rows_of_another_tenant(
    migrated: Settings, as_tenant_role: asyncpg.Connection[Any]
) -> None:
    schema = migrated.database_schema
    await as_tenant_role.execute("SET conveyor.tenant_id = 'a'")
    own = await _insert_tenant_rows(as_tenant_role, schema, "a")

    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await _insert_tenant_rows(as_tenant_role, schema, "b")

    assert await _visible(as_tenant_role, schema) == _everywhere(own)


def _url_as(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


async def test_owner_that_ran_the_migrations_sees_every_tenant(
    settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    """RLS is enabled, not forced: a non-superuser owner (the workers' role) is not filtered."""
    owner = unique_name("cv_owner_")
    password = secrets.token_hex(16)
    database = quote_ident(await db.fetchval("SELECT current_database()"))
    await db.execute(f"CREATE ROLE {quote_ident(owner)} LOGIN NOSUPERUSER PASSWORD '{password}'")
    try:
        await db.execute(f"GRANT CREATE ON DATABASE {database} TO {quote_ident(owner)}")
        as_owner = settings.replace(database_url=_url_as(settings.database_url, owner, password))
        await migrations.migrate(as_owner)
        conn = await asyncpg.connect(as_owner.database_url)
        try:
            job_a = await _insert_tenant_rows(conn, settings.database_schema, "a")
            job_b = await _insert_tenant_rows(conn, settings.database_schema, "b")
            seen = await _visible(conn, settings.database_schema)
            flags = await conn.fetch(
                "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, r.rolsuper"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " JOIN pg_roles r ON r.oid = c.relowner"
                " WHERE n.nspname = $1 AND c.relname = ANY($2::text[])",
                settings.database_schema,
                list(TABLES),
            )
        finally:
            await conn.close()
    finally:
        # Drops the schema the owner created, and its grant on the database.
        await db.execute(f"DROP OWNED BY {quote_ident(owner)}")
        await db.execute(f"DROP ROLE {quote_ident(owner)}")

    assert seen == _everywhere(job_a, job_b)
    assert sorted(tuple(row) for row in flags) == sorted((t, True, False, False) for t in TABLES)


async def test_tenant_role_deleting_its_job_deletes_that_jobs_history_only(
    migrated: Settings,
    db: asyncpg.Connection[Any],
    tenant_role: str,
    as_tenant_role: asyncpg.Connection[Any],
) -> None:
    """The history goes with its job although the tenant's policy hides it once the job
    is gone (0060: a SECURITY DEFINER trigger, where a foreign key's cascade was)."""
    schema = migrated.database_schema
    s = quote_ident(schema)
    await db.execute(f"GRANT DELETE ON {s}.jobs TO {tenant_role}")
    doomed = await _insert_tenant_rows(db, schema, "a")
    kept_a = await _insert_tenant_rows(db, schema, "a")
    kept_b = await _insert_tenant_rows(db, schema, "b")
    await as_tenant_role.execute("SET conveyor.tenant_id = 'a'")

    status = await as_tenant_role.execute(f"DELETE FROM {s}.jobs WHERE job_id = $1", doomed)

    assert status == "DELETE 1"
    rows = await db.fetch(f"SELECT job_id, count(*) AS n FROM {s}.job_transitions GROUP BY 1")
    assert {row["job_id"]: row["n"] for row in rows} == {kept_a: 2, kept_b: 2}


async def test_tenant_role_cannot_execute_the_owners_history_trigger_function(
    migrated: Settings, as_tenant_role: asyncpg.Connection[Any]
) -> None:
    """The trigger runs as the owner; a role that could attach it elsewhere would delete
    any job's history as the owner."""
    function = f"{quote_ident(migrated.database_schema)}.delete_job_transitions()"

    allowed = await as_tenant_role.fetchval(
        "SELECT has_function_privilege(current_user, $1, 'EXECUTE')", function
    )

    assert allowed is False
