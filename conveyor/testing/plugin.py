"""conveyor's pytest plugin: fixtures for the real-stack test mode and ``ctx.db``.

Registered through the ``pytest11`` entry point, so installing conveyor makes these
fixtures available; nothing starts, and nothing changes in a test run, unless a test
asks for one of them:

- ``conveyor_settings``: ``Settings`` of this test on real services (see
  ``conveyor.testing.services``), with a random topic prefix and Postgres schema, the
  migrations and the topology applied, and both dropped afterwards;
- ``conveyor_worker``: ``await conveyor_worker(worker)`` runs a ``Worker`` in the
  background of the test's event loop once it has joined its groups, and stops it
  cleanly when the test ends;
- ``conveyor_db``: an asyncpg connection inside a transaction that is rolled back when the
  test ends, for ``TestWorker(worker, db=conveyor_db)``;
- ``conveyor_kafka_bootstrap``, ``conveyor_database_url``, ``conveyor_schema_registry_url``:
  the session's services; override them in a ``conftest.py`` to bring your own.

The async fixtures need pytest-asyncio (``pip install 'conveyor[testing]'``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conveyor.consumer.worker import Worker
    from conveyor.settings import Settings

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the async fixtures then explain what is missing
    pytest_asyncio = None  # type: ignore[assignment]

_NEEDS_ASYNCIO = (
    "the {name} fixture needs pytest-asyncio: pip install 'conveyor[testing]' "
    "(and set asyncio_mode = auto, or mark the test with @pytest.mark.asyncio)"
)


def _configured() -> frozenset[str]:
    from conveyor.settings import explicitly_set  # noqa: PLC0415 - inert until used
    from conveyor.testing.services import BROKER_VARIABLE  # noqa: PLC0415

    return explicitly_set() - {BROKER_VARIABLE.removeprefix("CONVEYOR_").lower()}


@pytest.fixture(scope="session")
def conveyor_base_settings() -> Settings:
    """The ``CONVEYOR_*`` settings of the environment (metrics endpoint off)."""
    from conveyor.testing.services import base_settings  # noqa: PLC0415 - inert until used

    return base_settings()


@pytest.fixture(scope="session")
def conveyor_kafka_bootstrap(conveyor_base_settings: Settings) -> Iterator[str]:
    """A ready broker for the session: ``CONVEYOR_KAFKA_BOOTSTRAP``, else an embedded one."""
    from conveyor.testing import services  # noqa: PLC0415 - inert until used

    with services.broker(conveyor_base_settings, _configured()) as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def conveyor_database_url(conveyor_base_settings: Settings) -> Iterator[str]:
    """A Postgres for the session: ``CONVEYOR_DATABASE_URL``, else an embedded server."""
    from conveyor.testing import services  # noqa: PLC0415 - inert until used

    with services.database(conveyor_base_settings, _configured()) as url:
        yield url


@pytest.fixture(scope="session")
def conveyor_schema_registry_url(
    conveyor_base_settings: Settings, conveyor_database_url: str
) -> Iterator[str]:
    """A schema registry for the session: ``CONVEYOR_SCHEMA_REGISTRY_URL``, else
    ``conveyor registry serve`` on the session's Postgres."""
    from conveyor.testing import services  # noqa: PLC0415 - inert until used

    on_db = conveyor_base_settings.replace(database_url=conveyor_database_url)
    with services.registry(on_db, _configured()) as url:
        yield url


@pytest.fixture
def conveyor_settings(
    conveyor_base_settings: Settings,
    conveyor_kafka_bootstrap: str,
    conveyor_database_url: str,
    conveyor_schema_registry_url: str,
) -> Iterator[Settings]:
    """Settings of this test: its own topic prefix and schema, migrated and applied."""
    from conveyor.testing.stack import isolated  # noqa: PLC0415 - inert until used

    base = conveyor_base_settings.replace(
        kafka_bootstrap=conveyor_kafka_bootstrap,
        database_url=conveyor_database_url,
        schema_registry_url=conveyor_schema_registry_url,
    )
    with isolated(base) as settings:
        yield settings


StartWorker = Callable[["Worker"], Awaitable["Worker"]]


async def _worker_fixture() -> AsyncIterator[StartWorker]:
    """``await conveyor_worker(worker)`` runs a Worker in the background until the test
    ends; it returns once the worker joined its groups."""
    from conveyor.testing.stack import running  # noqa: PLC0415 - inert until used

    async with contextlib.AsyncExitStack() as stack:

        async def start(worker: Worker) -> Worker:
            return await stack.enter_async_context(running(worker))

        yield start


async def _db_fixture(conveyor_database_url: str) -> AsyncIterator[Any]:
    """An asyncpg connection inside a transaction rolled back when the test ends."""
    import asyncpg  # noqa: PLC0415 - inert until used

    conn = await asyncpg.connect(conveyor_database_url)
    try:
        tx = conn.transaction()
        await tx.start()
        try:
            yield conn
        finally:
            await tx.rollback()
    finally:
        await conn.close()


if pytest_asyncio is not None:
    conveyor_worker = pytest_asyncio.fixture(_worker_fixture, name="conveyor_worker")
    conveyor_db = pytest_asyncio.fixture(_db_fixture, name="conveyor_db")
else:  # pragma: no cover - exercised only without pytest-asyncio

    @pytest.fixture(name="conveyor_worker")
    def _conveyor_worker_missing() -> None:
        pytest.fail(_NEEDS_ASYNCIO.format(name="conveyor_worker"), pytrace=False)

    @pytest.fixture(name="conveyor_db")
    def _conveyor_db_missing() -> None:
        pytest.fail(_NEEDS_ASYNCIO.format(name="conveyor_db"), pytrace=False)
