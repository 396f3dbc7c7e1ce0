"""What a handler sees of its job: ``JobContext``, with ``ctx.db`` inside the job's transaction."""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from conveyor.consumer.job import JobMessage

ProgressReporter = Callable[[float, "str | None"], Awaitable[None]]


class JobTransaction:
    """A connection and transaction opened on first use, finished with the job.

    The worker commits it together with the job's completion, or rolls it back when
    the handler fails, times out or is cancelled.
    """

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        tenant_id: str | None,
        *,
        before_open: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._pool = pool
        self._tenant_id = tenant_id
        # Run before the first use opens the transaction: a job that started unclaimed is
        # claimed here, so its ctx.db writes commit only under a lease.
        self._before_open = before_open
        self._conn: Any = None
        self._tx: Any = None

    @property
    def opened(self) -> bool:
        """True once a handler used ``ctx.db``."""
        return self._conn is not None

    async def connection(self) -> asyncpg.Connection[Any]:
        """The job's connection, acquired and inside its transaction."""
        if self._conn is None:
            if self._before_open is not None:
                await self._before_open()
            conn = await self._pool.acquire()
            tx = conn.transaction()
            await tx.start()
            self._conn, self._tx = conn, tx
            if self._tenant_id is not None:
                # Row-level security policies keyed by tenant apply to the handler's tables too.
                await conn.execute(
                    "SELECT set_config('conveyor.tenant_id', $1, true)", self._tenant_id
                )
        conn_: asyncpg.Connection[Any] = self._conn
        return conn_

    async def finish(self, *, commit: bool) -> None:
        """Commits or rolls back, then returns the connection to the pool."""
        if self._conn is None:
            return
        conn, tx, self._conn, self._tx = self._conn, self._tx, None, None
        try:
            if commit:
                await tx.commit()
            else:
                await tx.rollback()
        finally:
            await self._pool.release(conn)


class Database:
    """``ctx.db``: asyncpg's query methods, run inside the job's transaction.

    The connection is opened only when a handler first uses it, so jobs that do not
    touch the database cost nothing here.
    """

    def __init__(self, transaction: JobTransaction) -> None:
        self._tx = transaction

    async def connection(self) -> asyncpg.Connection[Any]:
        """The underlying connection, for anything the shortcuts below don't cover."""
        return await self._tx.connection()

    async def execute(self, query: str, *args: Any) -> str:
        """Runs a statement; returns its status string."""
        return await (await self._tx.connection()).execute(query, *args)

    async def executemany(self, query: str, args: Any) -> None:
        """Runs a statement once per argument tuple."""
        await (await self._tx.connection()).executemany(query, args)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """Runs a query; returns every row."""
        return await (await self._tx.connection()).fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        """Runs a query; returns the first row or None."""
        return await (await self._tx.connection()).fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        """Runs a query; returns the first column of the first row."""
        return await (await self._tx.connection()).fetchval(query, *args)


class JobContext:
    """The job a handler runs, and what it may do besides returning a result.

    Attributes:
        job_id: The job's id.
        type: The job type.
        key: The entity key.
        tenant_id: The owning tenant, if any.
        priority: The job's priority.
        attempt: This attempt's number, from 1.
        batch_id: The batch the job came in, if any.
        submitted_at: When it was submitted.
        db: Database access inside the job's transaction (async handlers only).
        log: A logger whose records carry the job's fields.
    """

    def __init__(
        self,
        job: JobMessage,
        *,
        transaction: JobTransaction,
        report: ProgressReporter,
        logger: logging.Logger,
    ) -> None:
        self.job_id: str = job.job_id
        self.type: str = job.type
        self.key: str = job.key
        self.tenant_id: str | None = job.tenant_id
        self.priority: str = job.priority
        self.attempt: int = job.attempt
        self.batch_id: str | None = job.batch_id
        self.submitted_at: dt.datetime = job.submitted_at
        self.db = Database(transaction)
        self._job = job
        self._logger = logger
        self._report = report

    @functools.cached_property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records carry the job's fields (made when first used: most
        handlers never log, and the worker makes a context per job)."""
        job = self._job
        return logging.LoggerAdapter(
            self._logger,
            {
                "job_id": job.job_id,
                "job_type": job.type,
                "attempt": job.attempt,
                "priority": job.priority,
                "tenant_id": job.tenant_id,
            },
        )

    async def report_progress(self, pct: float, message: str | None = None) -> None:
        """Records progress (0-100) on the job; followers of the job see it at once.

        Raises:
            ValueError: ``pct`` is outside 0-100.
        """
        if not 0 <= pct <= 100:
            raise ValueError(f"progress must be between 0 and 100, got {pct}")
        await self._report(pct, message)

    def __repr__(self) -> str:
        return f"JobContext(job_id={self.job_id!r}, type={self.type!r}, attempt={self.attempt})"
