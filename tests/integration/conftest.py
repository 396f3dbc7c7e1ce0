"""The integration tests' shared fixtures.

The plugin's real-stack fixtures run on the session's services, not services of their
own: ``conveyor.testing.plugin`` would start an embedded broker, Postgres and registry
when the environment names none; the suite already runs one of each, so these overrides
(the way a user brings their own services) hand those to ``conveyor_settings``.

``pool`` and the two status stores are the worker's view of a migrated schema, for the
tests that claim and complete jobs by hand.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from conveyor import db
from conveyor.consumer.status import StatusStore
from conveyor.settings import Settings
from tests.tcp_proxy import TcpProxy
from tests.worker_helpers import prepare


@pytest.fixture
async def pool(migrated: Settings) -> AsyncIterator[asyncpg.Pool[Any]]:
    """A pool on the migrated test schema, as the worker opens one."""
    opened = await db.create_pool(migrated, max_size=4)
    yield opened
    await opened.close()


@pytest.fixture
def worker_a(pool: asyncpg.Pool[Any]) -> StatusStore:
    return StatusStore(pool, worker_id="worker-a")


@pytest.fixture
def worker_b(pool: asyncpg.Pool[Any]) -> StatusStore:
    return StatusStore(pool, worker_id="worker-b")


@pytest.fixture(scope="session")
def conveyor_kafka_bootstrap(kafka_bootstrap: str) -> str:
    """The session's broker."""
    return kafka_bootstrap


@pytest.fixture(scope="session")
def conveyor_database_url(database_url: str) -> str:
    """The session's Postgres."""
    return database_url


@pytest.fixture(scope="session")
def conveyor_schema_registry_url(schema_registry_url: str) -> str:
    """The session's schema registry."""
    return schema_registry_url


@pytest.fixture
async def through_proxy(settings: Settings, schema_registry_url: str) -> AsyncIterator[Any]:
    """Prepared settings whose Postgres is reached through a proxy the test can cut."""
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    url = urllib.parse.urlsplit(live.database_url)
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    user, _, _ = url.netloc.rpartition("@")
    netloc = f"{user}@127.0.0.1:{proxy.port}" if user else f"127.0.0.1:{proxy.port}"
    try:
        yield live, live.replace(database_url=url._replace(netloc=netloc).geturl()), proxy
    finally:
        await proxy.stop()
