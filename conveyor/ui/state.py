"""What every handler of ``conveyor ui`` shares: its options and its open connections."""

from __future__ import annotations

import dataclasses
from typing import Any

import asyncpg

from conveyor import db
from conveyor.jobstore import JobStore
from conveyor.settings import Settings
from conveyor.ui.cluster import Cluster
from conveyor.ui.deadletters import BulkReplays
from conveyor.ui.security import Credentials

DEFAULT_POOL_SIZE = 5
STREAM_INTERVAL = 1.0
"""Seconds between re-reads of a live (Server-Sent Events) stream."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class UiOptions:
    """How the UI behaves.

    Args:
        credentials: Who may use it (nobody needs to authenticate when empty).
        read_only: Hide and refuse every action (cancel, replay).
        tenant: The tenant the UI is limited to, through row-level security; ``settings``
            must then connect as a non-owner role (``conveyor.ui.tenancy``).
        secure_cookies: Mark cookies ``Secure`` (the UI is served over HTTPS).
        stream_interval: Seconds between re-reads of a live stream.
    """

    credentials: Credentials = dataclasses.field(default_factory=Credentials)
    read_only: bool = False
    tenant: str | None = None
    secure_cookies: bool = False
    stream_interval: float = STREAM_INTERVAL


class UiState:
    """The UI's pool, job store, cluster reader and bulk replays, open while it serves.

    Args:
        settings: Where Postgres and Kafka are (tenant-scoped when ``options.tenant``).
        options: How the UI behaves.
    """

    def __init__(self, settings: Settings, options: UiOptions) -> None:
        self.settings = settings
        self.options = options
        self.cluster = Cluster(settings)
        self.replays = BulkReplays()
        self.store = JobStore(settings, pool_size=2)
        self._pool: asyncpg.Pool[Any] | None = None

    @property
    def pool(self) -> asyncpg.Pool[Any]:
        """The open pool every query uses."""
        if self._pool is None:
            raise RuntimeError("the UI is not started")
        return self._pool

    async def open(self) -> None:
        """Opens the pool and the job store.

        Raises:
            DatabaseUnavailableError: Postgres cannot be reached.
        """
        self._pool = await db.create_pool(self.settings, min_size=1, max_size=DEFAULT_POOL_SIZE)
        await self.store.open()

    async def close(self) -> None:
        """Stops bulk replays, closes the job store and the pool."""
        await self.replays.close()
        await self.cluster.close()
        await self.store.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
