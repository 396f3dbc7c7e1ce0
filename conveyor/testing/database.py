"""``ctx.db`` in the in-process test mode: the test's own connection, or a clear refusal.

The worker opens a handler's transaction on first use of ``ctx.db`` by acquiring a
connection from its pool and starting a transaction on it. :class:`TestPool` is that
pool here. Given a connection that is already inside a transaction (the
``conveyor_db`` fixture's, rolled back when the test ends), each job's transaction
becomes a savepoint on it: a failed job rolls back its own writes, a completed one
keeps them for the test to read, and nothing outlives the test. Jobs that use
``ctx.db`` take turns on the connection. Without a connection, the first use of
``ctx.db`` raises :class:`NoTestDatabaseError`, which names the fixture to use.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from conveyor.errors import ConveyorError


class NoTestDatabaseError(ConveyorError):
    """A handler used ``ctx.db`` in a ``TestWorker`` that was given no database."""

    def __init__(self) -> None:
        super().__init__(
            "this handler uses ctx.db, but the TestWorker has no database: ask for the "
            "`conveyor_db` fixture and pass it, TestWorker(worker, db=conveyor_db), or pass "
            "any asyncpg connection inside a transaction you roll back"
        )


class TestPool:
    """The pool the in-process runner's ``ctx.db`` transactions come from.

    Args:
        conn: The test's connection, or None when the test gave no database.
    """

    __test__ = False  # not a test class, whatever pytest's name pattern says

    def __init__(self, conn: asyncpg.Connection[Any] | None) -> None:
        self._conn = conn
        self._turn = asyncio.Lock()
        self.refused: NoTestDatabaseError | None = None

    async def acquire(self) -> asyncpg.Connection[Any]:
        """Waits for the connection's turn and hands it over.

        Raises:
            NoTestDatabaseError: No connection was given (also kept in ``refused``).
        """
        if self._conn is None:
            self.refused = NoTestDatabaseError()
            raise self.refused
        await self._turn.acquire()
        return self._conn

    async def release(self, conn: asyncpg.Connection[Any]) -> None:
        """Gives the connection's turn to the next job."""
        self._turn.release()
