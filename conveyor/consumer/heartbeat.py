"""The worker's heartbeat: one ``workers`` row per process, for the UI's Workers page.

While a worker runs, :class:`Heartbeat` upserts its row (host, pid, version, priorities,
concurrency, in-flight jobs, owned partitions) every ``interval`` seconds, and stamps
``stopped_at`` when the worker leaves. A worker killed without leaving keeps its last
heartbeat, which the UI flags as stale once it is a few intervals old. Failures to write
are logged and retried next beat: the heartbeat never stops a worker.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import socket
from typing import Any, Protocol

import asyncpg

log = logging.getLogger("conveyor.worker")

DEFAULT_INTERVAL = 5.0
"""Seconds between heartbeats."""

ASSIGNMENT_CHECK = 1.0
"""Seconds between looks at the worker's partitions, to beat soon after they change."""

FORGET_AFTER = "1 day"
"""Rows of workers whose last heartbeat is older than this are deleted."""

_BEAT = """
INSERT INTO workers (worker_id, host, pid, version, priorities, concurrency, in_flight,
                     partitions, interval_s, started_at, heartbeat_at, stopped_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now(), now(), NULL)
ON CONFLICT (worker_id) DO UPDATE SET
    in_flight = EXCLUDED.in_flight,
    partitions = EXCLUDED.partitions,
    priorities = EXCLUDED.priorities,
    concurrency = EXCLUDED.concurrency,
    heartbeat_at = now(),
    stopped_at = NULL
"""

_LEAVE = (
    "UPDATE workers SET in_flight = 0, partitions = '{}', stopped_at = now() WHERE worker_id = $1"
)

_FORGET = f"DELETE FROM workers WHERE heartbeat_at < now() - interval '{FORGET_AFTER}'"


class BeatingWorker(Protocol):
    """What the heartbeat reads from a worker."""

    worker_id: str
    priorities: list[str]
    concurrency: int

    @property
    def in_flight(self) -> int: ...

    @property
    def assignment(self) -> frozenset[tuple[str, int]]: ...


def conveyor_version() -> str:
    """The installed conveyor version, or ``unknown`` when run from a bare checkout."""
    try:
        return importlib.metadata.version("conveyor")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Heartbeat:
    """Keeps a worker's ``workers`` row fresh while it runs.

    Args:
        pool: The worker's Postgres pool.
        worker: The running worker.
        interval: Seconds between heartbeats.
    """

    def __init__(
        self, pool: asyncpg.Pool[Any], worker: BeatingWorker, *, interval: float = DEFAULT_INTERVAL
    ) -> None:
        self._pool = pool
        self._worker = worker
        self._interval = interval
        self._host = socket.gethostname()
        self._version = conveyor_version()

    async def beat(self) -> None:
        """Writes the worker's row once.

        Raises:
            asyncpg.PostgresError: The write failed.
            OSError: The connection failed.
        """
        w = self._worker
        partitions = sorted(f"{topic}:{partition}" for topic, partition in w.assignment)
        await self._pool.execute(
            _BEAT,
            w.worker_id,
            self._host,
            os.getpid(),
            self._version,
            list(w.priorities),
            w.concurrency,
            w.in_flight,
            partitions,
            self._interval,
        )

    async def run(self) -> None:
        """Beats every ``interval`` seconds until cancelled, and at once when the worker's
        partitions change (joins and rebalances show within a second); forgets long-gone
        workers."""
        beats = 0
        while True:
            shown = self._worker.assignment
            try:
                await self.beat()
                if beats % 100 == 0:
                    await self._pool.execute(_FORGET)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                log.warning("worker heartbeat not written: %s", exc)
            beats += 1
            waited = 0.0
            while waited < self._interval and self._worker.assignment == shown:
                step = min(ASSIGNMENT_CHECK, self._interval - waited)
                await asyncio.sleep(step)
                waited += step

    async def leave(self) -> None:
        """Marks the worker stopped; logs instead of raising, since the worker is leaving."""
        try:
            await self._pool.execute(_LEAVE, self._worker.worker_id)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("worker stop not recorded: %s", exc)
