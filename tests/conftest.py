"""Session-wide real services and cheap per-test isolation.

The broker and Postgres start once per session (see ``tests/services.py``). Each test
that asks for ``settings`` gets its own topic prefix and its own Postgres schema, so
tests never see each other's topics or rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from conveyor.db import quote_ident
from conveyor.settings import Settings
from tests import services

_FOLDER_MARKERS = {
    "unit": "unit",
    "integration": "integration",
    "e2e": "e2e",
    "browser": "browser",
    "faults": "faults",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks every test by its folder, so ``-m unit`` selects the tests needing no services."""
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        marker = _FOLDER_MARKERS.get(folder)
        if marker is not None:
            item.add_marker(getattr(pytest.mark, marker))


_SESSION_BROKER: list[services.Broker] = []


def pytest_report_header() -> str:
    """Says which broker the session will run on, before any test starts."""
    return f"conveyor broker: {services.broker_kind()} (CONVEYOR_TEST_BROKER forces one)"


@pytest.fixture(scope="session")
def broker() -> Iterator[services.Broker]:
    """The session's real, ready broker (Apache Kafka or Tansu, see ``tests/services.py``)."""
    with services.kafka_bootstrap() as chosen:
        _SESSION_BROKER.append(chosen)
        try:
            yield chosen
        finally:
            _SESSION_BROKER.clear()


@pytest.fixture(scope="session")
def kafka_bootstrap(broker: services.Broker) -> str:
    """Bootstrap servers of the session's broker."""
    return broker.bootstrap


@pytest.fixture(scope="session")
def on_kafka(broker: services.Broker) -> bool:
    """True when the session runs on Apache Kafka, so a test may pin its exact behaviour."""
    return broker.kind == "kafka"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Adds the tail of the launched broker's log to a failing test's report."""
    report = yield
    if report.failed and _SESSION_BROKER and _SESSION_BROKER[0].launched is not None:
        report.sections.append(("kafka.log (tail)", _SESSION_BROKER[0].launched.log_tail(30)))
    return report


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """DSN of a real Postgres for the whole session."""
    with services.database_url() as (url, _where):
        yield url


def unique_name(prefix: str) -> str:
    """A short random name usable as a topic prefix or a Postgres identifier."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def _drop_schema(url: str, schema: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    finally:
        await conn.close()


@pytest.fixture
def settings(kafka_bootstrap: str, database_url: str) -> Iterator[Settings]:
    """Settings isolated to this test: a random topic prefix and Postgres schema."""
    isolated = Settings(
        kafka_bootstrap=kafka_bootstrap,
        database_url=database_url,
        topic_prefix=unique_name("t"),
        database_schema=unique_name("cv_"),
        metrics_port=0,  # workers serve no HTTP unless a test gives them a free port
    )
    yield isolated
    asyncio.run(_drop_schema(database_url, isolated.database_schema))


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection to the test database, for arranging and inspecting rows."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def migrated(settings: Settings) -> Settings:
    """The isolated settings, with every migration applied to the test's schema."""
    from conveyor import migrations

    await migrations.migrate(settings)
    return settings


@dataclasses.dataclass(frozen=True)
class CliResult:
    """What one run of the ``conveyor`` command printed and returned."""

    code: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict[str, str], timeout: float = 60.0) -> CliResult:
    """Runs ``python -m conveyor ARGS`` with only ``env`` (plus PATH/HOME) in its environment."""
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def settings_env(s: Settings) -> dict[str, str]:
    """The ``CONVEYOR_*`` variables that reproduce the service and isolation settings."""
    return {
        "CONVEYOR_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "CONVEYOR_DATABASE_URL": s.database_url,
        "CONVEYOR_DATABASE_SCHEMA": s.database_schema,
        "CONVEYOR_TOPIC_PREFIX": s.topic_prefix,
        "CONVEYOR_PARTITION_UNIT": str(s.partition_unit),
        "CONVEYOR_SCHEMA_REGISTRY_URL": s.schema_registry_url,
        "CONVEYOR_METRICS_PORT": str(s.metrics_port),
    }


#: The registry's Postgres schema: unique per session, so concurrent sessions never collide.
REGISTRY_SCHEMA = unique_name("registry_")


@pytest.fixture(scope="session")
def schema_registry_url(database_url: str) -> Iterator[str]:
    """A real ``conveyor registry serve`` subprocess on a free port, for the whole session.

    Its tables live in their own Postgres schema, created by the migrations.
    Tests stay isolated because subjects are named after their random topic prefixes.
    """
    from conveyor import migrations
    from conveyor.devstack import registry_process

    registry_settings = Settings(database_url=database_url, database_schema=REGISTRY_SCHEMA)
    asyncio.run(migrations.migrate(registry_settings))
    try:
        with registry_process(registry_settings) as url:
            yield url
    finally:
        asyncio.run(_drop_schema(database_url, REGISTRY_SCHEMA))
