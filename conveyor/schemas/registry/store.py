"""The registry's Postgres storage: schemas, subject versions and compatibility config.

Tables (migration ``0002_schema_registry.sql``): ``registry_schemas`` holds each
distinct schema once, keyed by its fingerprint, so one schema has one id across
subjects; ``registry_versions`` maps ``(subject, version)`` to a schema id with a
soft-delete flag; ``registry_config`` holds compatibility levels, ``''`` being global.

Registration runs in one transaction holding an advisory lock per subject, so two
clients registering concurrently get one version, and inserts the schema row with
``ON CONFLICT DO NOTHING``, so two subjects registering the same schema get one id.
Failures are :class:`RegistryError` carrying Confluent's HTTP status and error code.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from conveyor.schemas.registry import compat

_Conn: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

TABLES = ("registry_schemas", "registry_versions", "registry_config")
GLOBAL = ""

# Two-key form: the first key keeps these locks apart from any other advisory lock
# and from registries of other conveyor schemas in the same database.
_LOCK_SUBJECT = "SELECT pg_advisory_xact_lock(hashtext(current_schema()), hashtext($1))"
_SUBJECT_ROWS = """
    SELECT v.subject, v.version, v.schema_id, v.deleted,
           s.guid::text AS guid, s.schema_type, s.schema_text, s.fingerprint
    FROM registry_versions v JOIN registry_schemas s ON s.id = v.schema_id
    WHERE v.subject = $1
    ORDER BY v.version
"""
_INSERT_SCHEMA = """
    INSERT INTO registry_schemas (schema_type, schema_text, fingerprint) VALUES ($1, $2, $3)
    ON CONFLICT (fingerprint) DO NOTHING
    RETURNING id, guid::text AS guid
"""
_SCHEMA_BY_FINGERPRINT = (
    "SELECT id, guid::text AS guid FROM registry_schemas WHERE fingerprint = $1"
)
_INSERT_VERSION = "INSERT INTO registry_versions (subject, version, schema_id) VALUES ($1, $2, $3)"
_SCHEMA_BY_ID = """
    SELECT id, guid::text AS guid, schema_type, schema_text FROM registry_schemas WHERE id = $1
"""
_SCHEMA_BY_GUID = """
    SELECT id, guid::text AS guid, schema_type, schema_text FROM registry_schemas WHERE guid = $1
"""
_VERSIONS_OF_SCHEMA = """
    SELECT subject, version FROM registry_versions
    WHERE schema_id = $1 AND ($2::text IS NULL OR subject = $2) AND ($3 OR NOT deleted)
    ORDER BY subject, version
"""
_SUBJECTS = """
    SELECT subject, bool_or(NOT deleted) AS live FROM registry_versions
    WHERE starts_with(subject, $1) GROUP BY subject ORDER BY subject
"""
_SOFT_DELETE_VERSION = (
    "UPDATE registry_versions SET deleted = true WHERE subject = $1 AND version = $2"
)
_HARD_DELETE_VERSION = "DELETE FROM registry_versions WHERE subject = $1 AND version = $2"
_SOFT_DELETE_SUBJECT = (
    "UPDATE registry_versions SET deleted = true WHERE subject = $1 AND NOT deleted"
)
_HARD_DELETE_SUBJECT = "DELETE FROM registry_versions WHERE subject = $1"
_GET_CONFIG = "SELECT compatibility FROM registry_config WHERE subject = $1"
_LEVELS = "SELECT subject, compatibility FROM registry_config WHERE subject IN ($1, '')"
_SET_CONFIG = """
    INSERT INTO registry_config (subject, compatibility) VALUES ($1, $2)
    ON CONFLICT (subject) DO UPDATE SET compatibility = EXCLUDED.compatibility
"""
_DELETE_CONFIG = "DELETE FROM registry_config WHERE subject = $1 RETURNING compatibility"
_MISSING_TABLES = """
    SELECT t FROM unnest($1::text[]) AS t
    WHERE to_regclass(quote_ident($2) || '.' || quote_ident(t)) IS NULL
"""


class RegistryError(Exception):
    """A request the registry refuses, with Confluent's HTTP status and error code.

    Args:
        status: The HTTP status code.
        error_code: Confluent's error code (``40401``, ``42201``, ``409``, ...).
        message: What went wrong, for the client.
    """

    def __init__(self, status: int, error_code: int, message: str) -> None:
        self.status = status
        self.error_code = error_code
        self.message = message
        super().__init__(f"{error_code}: {message}")


def subject_not_found(subject: str) -> RegistryError:
    """Error 40401."""
    return RegistryError(404, 40401, f"Subject '{subject}' not found.")


def version_not_found(subject: str, version: int | None) -> RegistryError:
    """Error 40402."""
    shown = "latest" if version is None else version
    return RegistryError(404, 40402, f"Version {shown} not found for subject '{subject}'.")


def schema_not_found(what: str = "Schema") -> RegistryError:
    """Error 40403."""
    return RegistryError(404, 40403, f"{what} not found.")


def config_not_found(subject: str) -> RegistryError:
    """Error 40408."""
    return RegistryError(
        404, 40408, f"Subject '{subject}' does not have subject-level compatibility configured"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class StoredSchema:
    """A schema as stored: its global id, guid, type and text."""

    id: int
    guid: str
    schema_type: str
    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class SubjectVersion:
    """One version of a subject and the schema it holds."""

    subject: str
    version: int
    schema_id: int
    guid: str
    schema_type: str
    text: str
    deleted: bool
    fingerprint: str


class RegistryStore:
    """Queries of the schema registry over an asyncpg pool.

    Args:
        pool: A pool whose connections have conveyor's schema first on the search path
            (``conveyor.db.create_pool``).
    """

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def register(self, subject: str, schema: compat.ParsedSchema) -> SubjectVersion:
        """Registers ``schema`` under ``subject``, or returns its live version if it has one.

        Raises:
            RegistryError: 409 when the schema is incompatible with the subject's versions.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_LOCK_SUBJECT, subject)
            rows = await _subject_rows(conn, subject)
            live = [r for r in rows if not r.deleted]
            for row in reversed(live):
                if row.fingerprint == schema.fingerprint:
                    return row
            level = await _effective_level(conn, subject)
            messages = compat.check_compatibility(level, schema.avro, _previous(live))
            if messages:
                raise RegistryError(
                    409,
                    409,
                    "Schema being registered is incompatible with an earlier schema for "
                    f'subject "{subject}", details: [{"; ".join(messages)}]',
                )
            ids = await conn.fetchrow(
                _INSERT_SCHEMA, schema.schema_type, schema.text, schema.fingerprint
            )
            if ids is None:  # another transaction stored the same schema first
                ids = await conn.fetchrow(_SCHEMA_BY_FINGERPRINT, schema.fingerprint)
            if ids is None:  # schema rows are never deleted, so this is a broken store
                raise RegistryError(500, 50001, "Error in the backend data store: schema row lost")
            version = max((r.version for r in rows), default=0) + 1
            await conn.execute(_INSERT_VERSION, subject, version, ids["id"])
            return SubjectVersion(
                subject,
                version,
                ids["id"],
                ids["guid"],
                schema.schema_type,
                schema.text,
                False,
                schema.fingerprint,
            )

    async def lookup(
        self, subject: str, schema: compat.ParsedSchema, *, deleted: bool = False
    ) -> SubjectVersion:
        """Finds the version of ``subject`` holding ``schema``.

        Raises:
            RegistryError: 40401 no such subject, 40403 the schema is not registered there.
        """
        candidates = await self._candidates(subject, deleted=deleted)
        matches = [r for r in candidates if r.fingerprint == schema.fingerprint]
        if not matches:
            raise schema_not_found()
        # A schema re-registered after a soft delete has several versions: prefer a live one.
        return max(matches, key=lambda r: (not r.deleted, r.version))

    async def schema_by_id(self, schema_id: int) -> StoredSchema:
        """Returns the schema with this global id, or raises 40403."""
        row = await self._pool.fetchrow(_SCHEMA_BY_ID, schema_id)
        if row is None:
            raise schema_not_found(f"Schema {schema_id}")
        return StoredSchema(row["id"], row["guid"], row["schema_type"], row["schema_text"])

    async def schema_by_guid(self, guid: str) -> StoredSchema:
        """Returns the schema with this guid, or raises 40403."""
        try:
            key = uuid.UUID(guid)
        except ValueError as exc:
            raise schema_not_found(f"Schema {guid}") from exc
        row = await self._pool.fetchrow(_SCHEMA_BY_GUID, key)
        if row is None:
            raise schema_not_found(f"Schema {guid}")
        return StoredSchema(row["id"], row["guid"], row["schema_type"], row["schema_text"])

    async def versions_of_schema(
        self, schema_id: int, *, subject: str | None = None, deleted: bool = False
    ) -> list[tuple[str, int]]:
        """Returns the ``(subject, version)`` pairs holding a schema; 40403 if no such id."""
        await self.schema_by_id(schema_id)
        rows = await self._pool.fetch(_VERSIONS_OF_SCHEMA, schema_id, subject, deleted)
        return [(r["subject"], r["version"]) for r in rows]

    async def subjects(
        self, *, prefix: str = "", deleted: bool = False, deleted_only: bool = False
    ) -> list[str]:
        """Lists subjects with a live version; soft-deleted ones too, or only, on request."""
        rows = await self._pool.fetch(_SUBJECTS, prefix)
        if deleted_only:
            return [r["subject"] for r in rows if not r["live"]]
        return [r["subject"] for r in rows if deleted or r["live"]]

    async def versions(
        self, subject: str, *, deleted: bool = False, deleted_only: bool = False
    ) -> list[int]:
        """Lists the versions of a subject; raises 40401 when it has none to show."""
        rows = await _subject_rows(self._pool, subject)
        if deleted_only:
            shown = [r.version for r in rows if r.deleted]
        else:
            shown = [r.version for r in rows if deleted or not r.deleted]
        if not rows or not (shown or deleted_only):
            raise subject_not_found(subject)
        return shown

    async def version(
        self, subject: str, version: int | None, *, deleted: bool = False
    ) -> SubjectVersion:
        """Returns one version (``None``: the latest), or raises 40401/40402."""
        candidates = await self._candidates(subject, deleted=deleted)
        return _pick(subject, candidates, version)

    async def delete_version(self, subject: str, version: int | None, *, permanent: bool) -> int:
        """Soft-deletes a version, or hard-deletes one that was soft-deleted first.

        Raises:
            RegistryError: 40401, 40402, 40406 (already soft-deleted) or 40407 (hard
                delete of a version not soft-deleted first).
        """
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_LOCK_SUBJECT, subject)
            rows = await _subject_rows(conn, subject)
            if not rows:
                raise subject_not_found(subject)
            # "latest" names the newest live version, or for a hard delete the newest one.
            latest_of = rows if permanent else [r for r in rows if not r.deleted]
            row = _pick(subject, latest_of if version is None else rows, version)
            if permanent and not row.deleted:
                raise RegistryError(
                    404,
                    40407,
                    f"Subject '{subject}' Version {row.version} was not deleted "
                    "first before being permanently deleted",
                )
            if not permanent and row.deleted:
                raise RegistryError(
                    404,
                    40406,
                    f"Subject '{subject}' Version {row.version} was soft deleted. "
                    "Set permanent=true to delete permanently",
                )
            query = _HARD_DELETE_VERSION if permanent else _SOFT_DELETE_VERSION
            await conn.execute(query, subject, row.version)
            return row.version

    async def delete_subject(self, subject: str, *, permanent: bool) -> list[int]:
        """Soft-deletes every live version, or hard-deletes a soft-deleted subject.

        A hard delete also drops the subject's compatibility config.

        Raises:
            RegistryError: 40401, 40404 (already soft-deleted) or 40405 (hard delete of a
                subject not soft-deleted first).
        """
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_LOCK_SUBJECT, subject)
            rows = await _subject_rows(conn, subject)
            if not rows:
                raise subject_not_found(subject)
            live = [r.version for r in rows if not r.deleted]
            if not permanent:
                if not live:
                    raise RegistryError(
                        404,
                        40404,
                        f"Subject '{subject}' was soft deleted. "
                        "Set permanent=true to delete permanently",
                    )
                await conn.execute(_SOFT_DELETE_SUBJECT, subject)
                return live
            if live:
                raise RegistryError(
                    404,
                    40405,
                    f"Subject '{subject}' was not deleted first before being permanently deleted",
                )
            await conn.execute(_HARD_DELETE_SUBJECT, subject)
            await conn.execute(_DELETE_CONFIG, subject)
            return [r.version for r in rows]

    async def check(
        self, subject: str, version: int | None, schema: compat.ParsedSchema
    ) -> list[str]:
        """Tests ``schema`` against one version, or (``None``) every live version the
        subject's level requires; returns the incompatibility messages.

        Raises:
            RegistryError: 40401 no live subject, 40402 no such version.
        """
        async with self._pool.acquire() as conn:
            live = [r for r in await _subject_rows(conn, subject) if not r.deleted]
            if not live:
                raise subject_not_found(subject)
            against = live if version is None else [_pick(subject, live, version)]
            level = await _effective_level(conn, subject)
        return compat.check_compatibility(level, schema.avro, _previous(against))

    async def check_all(self, subject: str, schema: compat.ParsedSchema) -> list[str]:
        """Runs the registration check without registering; a new subject is compatible."""
        async with self._pool.acquire() as conn:
            live = [r for r in await _subject_rows(conn, subject) if not r.deleted]
            level = await _effective_level(conn, subject)
        return compat.check_compatibility(level, schema.avro, _previous(live))

    async def config(self, subject: str = GLOBAL) -> str | None:
        """Returns the level configured for a subject (``''``: global), or ``None``."""
        level: str | None = await self._pool.fetchval(_GET_CONFIG, subject)
        return level

    async def effective_level(self, subject: str) -> str:
        """Returns the subject's level, else the global one, else BACKWARD."""
        async with self._pool.acquire() as conn:
            return await _effective_level(conn, subject)

    async def set_config(self, level: str, subject: str = GLOBAL) -> None:
        """Sets the compatibility level of a subject (``''``: global)."""
        await self._pool.execute(_SET_CONFIG, subject, level)

    async def delete_config(self, subject: str = GLOBAL) -> str | None:
        """Removes a subject's (or the global) level; returns the removed level or ``None``."""
        level: str | None = await self._pool.fetchval(_DELETE_CONFIG, subject)
        return level

    async def _candidates(self, subject: str, *, deleted: bool) -> list[SubjectVersion]:
        rows = await _subject_rows(self._pool, subject)
        candidates = [r for r in rows if deleted or not r.deleted]
        if not candidates:
            raise subject_not_found(subject)
        return candidates


async def missing_tables(conn: asyncpg.Connection[Any], schema: str) -> list[str]:
    """Returns the names of the registry tables absent from the Postgres ``schema``."""
    rows = await conn.fetch(_MISSING_TABLES, list(TABLES), schema)
    return [r["t"] for r in rows]


async def _subject_rows(conn: _Conn | asyncpg.Pool[Any], subject: str) -> list[SubjectVersion]:
    rows = await conn.fetch(_SUBJECT_ROWS, subject)
    return [
        SubjectVersion(
            r["subject"],
            r["version"],
            r["schema_id"],
            r["guid"],
            r["schema_type"],
            r["schema_text"],
            r["deleted"],
            r["fingerprint"],
        )
        for r in rows
    ]


async def _effective_level(conn: _Conn, subject: str) -> str:
    levels = {r["subject"]: r["compatibility"] for r in await conn.fetch(_LEVELS, subject)}
    level: str = levels.get(subject) or levels.get(GLOBAL) or compat.DEFAULT_COMPATIBILITY
    return level


def _pick(subject: str, rows: Sequence[SubjectVersion], version: int | None) -> SubjectVersion:
    if not rows:
        raise version_not_found(subject, version)
    if version is None:
        return rows[-1]
    for row in rows:
        if row.version == version:
            return row
    raise version_not_found(subject, version)


def _previous(rows: Sequence[SubjectVersion]) -> list[compat.PreviousVersion]:
    return [compat.PreviousVersion(r.version, compat.stored_schema(r.text)) for r in rows]
