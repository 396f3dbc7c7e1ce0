"""Postgres connections for conveyor: one place that opens them and translates failures."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import asyncpg

from conveyor.errors import DatabaseUnavailableError, MigrationError
from conveyor.settings import Settings, mask_url

CONNECT_TIMEOUT = 10.0


def _unavailable(settings: Settings, exc: BaseException) -> DatabaseUnavailableError:
    return DatabaseUnavailableError(
        f"cannot connect to Postgres at {mask_url(settings.database_url)}: {exc}; "
        "check CONVEYOR_DATABASE_URL and that the server is running"
    )


@contextlib.contextmanager
def database_errors(what: str) -> Iterator[None]:
    """Translates asyncpg failures while doing ``what`` into conveyor errors.

    Raises:
        DatabaseUnavailableError: The connection was lost.
        MigrationError: conveyor's tables are missing or older than this code.
    """
    try:
        yield
    except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError) as exc:
        raise DatabaseUnavailableError(
            f"lost the connection to Postgres while {what}: {exc}"
        ) from exc
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as exc:
        raise MigrationError(
            f"conveyor's tables are missing or out of date ({exc}) while {what}; "
            "run `conveyor migrate`"
        ) from exc


def quote_ident(name: str) -> str:
    """Quotes an SQL identifier (settings already restrict schema names to safe ones)."""
    return '"' + name.replace('"', '""') + '"'


async def connect(
    settings: Settings, *, timeout: float = CONNECT_TIMEOUT
) -> asyncpg.Connection[Any]:
    """Opens one connection with conveyor's schema first on the search path.

    Raises:
        DatabaseUnavailableError: The server did not answer or refused the connection.
    """
    try:
        return await asyncpg.connect(
            settings.database_url,
            timeout=timeout,
            server_settings={"search_path": f"{quote_ident(settings.database_schema)}, public"},
        )
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise _unavailable(settings, exc) from exc


async def _keep_session(_conn: asyncpg.Connection[Any]) -> None:
    """A pool's reset that sends nothing (asyncpg still rolls back an open transaction)."""


async def create_pool(
    settings: Settings,
    *,
    min_size: int = 1,
    max_size: int = 10,
    custom_plans: bool = False,
    reset_on_release: bool = True,
) -> asyncpg.Pool[Any]:
    """Opens a connection pool with conveyor's schema first on the search path.

    Args:
        settings: The database URL and schema.
        min_size: Connections kept open.
        max_size: Connections opened at most.
        custom_plans: Plan every statement for its parameters. The worker's batched
            statements join arrays of job ids to ``jobs``; a generic plan made while the
            table was small keeps seq-scanning it as it grows, until an ANALYZE.
        reset_on_release: Reset each connection's session state when it returns to the
            pool (a round trip). Only a pool whose connections run conveyor's own
            statements, never a user's, can do without: an open transaction is still
            rolled back.

    Raises:
        DatabaseUnavailableError: The server did not answer or refused the connection.
    """
    try:
        pool: asyncpg.Pool[Any] = await asyncpg.create_pool(
            settings.database_url,
            min_size=min_size,
            max_size=max_size,
            timeout=CONNECT_TIMEOUT,
            server_settings={
                "search_path": f"{quote_ident(settings.database_schema)}, public",
                **({"plan_cache_mode": "force_custom_plan"} if custom_plans else {}),
            },
            reset=None if reset_on_release else _keep_session,
        )
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise _unavailable(settings, exc) from exc
    return pool
