"""Postgres migrations: numbered SQL files shipped as package data, and their runner.

Each ``NNNN_name.sql`` file in this package is one migration. ``migrate(settings)``
applies the ones the target schema (``settings.database_schema``) has not seen yet, in
number order, each in its own transaction with ``SET LOCAL search_path TO <schema>,
public`` so the files never name the schema. What was applied is recorded in
``<schema>.schema_migrations``.

A session advisory lock keyed by the schema name is held for the whole run, taken before
``CREATE SCHEMA``: concurrent runs (several workers starting at once, ``conveyor migrate``
in two deploy jobs) queue behind each other, and the later ones find nothing to do.

Migration files run inside a transaction, so they must not contain ``BEGIN``/``COMMIT``
or statements that refuse to run in one (``CREATE INDEX CONCURRENTLY``).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import re
from collections.abc import Callable
from typing import Any

import asyncpg

from conveyor import db
from conveyor.errors import DatabaseUnavailableError, MigrationError
from conveyor.settings import Settings, mask_url

log = logging.getLogger(__name__)

PACKAGE = "conveyor.migrations"
"""The package whose ``NNNN_name.sql`` files are the migrations."""

LOCK_TIMEOUT = 300.0
"""Seconds to wait for another run holding the schema's migration lock."""

_FILE_RE = re.compile(r"^(?P<version>\d{4})_(?P<label>[a-z0-9_]+)\.sql$")

_CREATE_HISTORY = """
CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL migration.

    Args:
        version: The number the file name starts with (``1`` for ``0001_jobs.sql``).
        name: The file name without ``.sql`` (``"0001_jobs"``); what is recorded and reported.
        sql: The statements, run as one transaction.
    """

    version: int
    name: str
    sql: str

    @property
    def filename(self) -> str:
        """The file the migration was loaded from (``"0001_jobs.sql"``)."""
        return f"{self.name}.sql"


def load_migrations(package: str = PACKAGE) -> list[Migration]:
    """Loads every ``NNNN_name.sql`` file of ``package``, sorted by number.

    Args:
        package: The package holding the files; conveyor's own migrations by default.

    Returns:
        The migrations in the order they must be applied.

    Raises:
        MigrationError: A ``.sql`` file is not named ``NNNN_name.sql``, or two files share
            a number.
    """
    by_version: dict[int, Migration] = {}
    for entry in importlib.resources.files(package).iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_RE.match(entry.name)
        if match is None:
            raise MigrationError(
                f"migration file {entry.name} in {package} is not named NNNN_name.sql "
                "(four digits, an underscore, lower-case letters, digits or underscores)"
            )
        version = int(match.group("version"))
        if version in by_version:
            raise MigrationError(
                f"migration files {by_version[version].filename} and {entry.name} in "
                f"{package} share the number {version:04d}; renumber one of them"
            )
        by_version[version] = Migration(
            version=version, name=entry.name[: -len(".sql")], sql=entry.read_text("utf-8")
        )
    return [by_version[v] for v in sorted(by_version)]


async def pending(settings: Settings) -> list[str]:
    """Names of the migrations not yet applied to ``settings.database_schema``.

    Reads only; creates nothing, takes no lock.

    Raises:
        DatabaseUnavailableError: Postgres cannot be reached.
        MigrationError: The migration history cannot be read.
    """
    migrations = load_migrations()
    conn = await db.connect(settings)
    try:
        applied = await _applied_versions(conn, settings.database_schema)
    except asyncpg.PostgresConnectionError as exc:
        raise _lost(settings, exc) from exc
    except asyncpg.PostgresError as exc:
        raise MigrationError(
            f"cannot read the migration history of schema {settings.database_schema}: {exc}"
        ) from exc
    finally:
        await conn.close()
    return [m.name for m in migrations if m.version not in applied]


async def migrate(
    settings: Settings,
    *,
    on_applied: Callable[[str], None] | None = None,
    lock_timeout: float = LOCK_TIMEOUT,
) -> list[str]:
    """Applies every pending migration to ``settings.database_schema``.

    Safe to call from several processes at once: they serialize on an advisory lock and
    each migration is applied exactly once.

    Args:
        settings: Where to connect, and the schema to migrate (created if missing).
        on_applied: Called with each migration's name right after it commits, so a caller
            can show progress.
        lock_timeout: Seconds to wait for a concurrent run to release the lock.

    Returns:
        The names of the migrations applied by this call, empty when already up to date.

    Raises:
        DatabaseUnavailableError: Postgres cannot be reached, or the connection was lost.
        MigrationError: A migration failed (it was rolled back, earlier ones stay applied),
            the schema could not be prepared, or the lock was not granted in time.
    """
    migrations = load_migrations()
    schema = settings.database_schema
    conn = await db.connect(settings)
    try:
        await _lock(conn, schema, lock_timeout)
        try:
            applied_before = await _prepare(conn, schema)
            applied_now: list[str] = []
            for migration in migrations:
                if migration.version in applied_before:
                    continue
                await _apply(conn, schema, migration)
                log.info("applied migration %s to schema %s", migration.name, schema)
                applied_now.append(migration.name)
                if on_applied is not None:
                    on_applied(migration.name)
            return applied_now
        finally:
            await _unlock(conn, schema)
    except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError) as exc:
        raise _lost(settings, exc) from exc
    finally:
        await conn.close()


def _lock_key(schema: str) -> str:
    return f"conveyor.migrations:{schema}"


async def _lock(conn: asyncpg.Connection[Any], schema: str, wait: float) -> None:
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", _lock_key(schema), timeout=wait)
    except TimeoutError as exc:
        raise MigrationError(
            f"another `conveyor migrate` has held the migration lock of schema {schema} for "
            f"more than {wait:g}s; wait for it to finish, or look for a stuck session in "
            "pg_locks (locktype = 'advisory')"
        ) from exc


async def _unlock(conn: asyncpg.Connection[Any], schema: str) -> None:
    # Closing the connection releases the lock too; unlocking first lets a queued run
    # go on without waiting for the close to reach the server.
    if not conn.is_closed():
        await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", _lock_key(schema))


async def _prepare(conn: asyncpg.Connection[Any], schema: str) -> set[int]:
    quoted = db.quote_ident(schema)
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        await conn.execute(_CREATE_HISTORY.format(schema=quoted))
        return await _applied_versions(conn, schema)
    except asyncpg.PostgresConnectionError:
        raise
    except asyncpg.PostgresError as exc:
        raise MigrationError(
            f"cannot prepare schema {schema} for migrations: {exc}; the database role needs "
            "CREATE on the database (or an existing schema it owns)"
        ) from exc


async def _applied_versions(conn: asyncpg.Connection[Any], schema: str) -> set[int]:
    table = f"{db.quote_ident(schema)}.schema_migrations"
    if await conn.fetchval("SELECT to_regclass($1)", table) is None:
        return set()
    rows = await conn.fetch(f"SELECT version FROM {table}")
    return {int(row["version"]) for row in rows}


async def _apply(conn: asyncpg.Connection[Any], schema: str, migration: Migration) -> None:
    quoted = db.quote_ident(schema)
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL search_path TO {quoted}, public")
            await conn.execute(migration.sql)
            await conn.execute(
                f"INSERT INTO {quoted}.schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
    except asyncpg.PostgresConnectionError:
        raise
    except asyncpg.PostgresError as exc:
        raise MigrationError(_failure(schema, migration, exc)) from exc


def _failure(schema: str, migration: Migration, exc: asyncpg.PostgresError) -> str:
    where = ""
    position = getattr(exc, "position", None)
    if position:
        line = migration.sql.count("\n", 0, max(int(position) - 1, 0)) + 1
        where = f" at line {line}"
    message = f"migration {migration.filename} failed{where} in schema {schema}: {exc}"
    if exc.sqlstate:
        message += f" (SQLSTATE {exc.sqlstate})"
    hint = getattr(exc, "hint", None)
    if hint:
        message += f"; hint: {hint}"
    return message + "; it was rolled back and earlier migrations stay applied"


def _lost(settings: Settings, exc: BaseException) -> DatabaseUnavailableError:
    return DatabaseUnavailableError(
        f"lost the connection to Postgres at {mask_url(settings.database_url)} while "
        f"migrating schema {settings.database_schema}: {exc}"
    )


__all__ = ["LOCK_TIMEOUT", "PACKAGE", "Migration", "load_migrations", "migrate", "pending"]
