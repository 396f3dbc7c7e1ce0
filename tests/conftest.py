"""Session-wide real services and cheap per-test isolation.

The broker and Postgres start once per session (see ``tests/services.py``). Each test
that asks for ``settings`` gets its own topic prefix and its own Postgres schema, so
tests never see each other's topics or rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO

import asyncpg
import httpx
import pytest

from conveyor.db import quote_ident
from conveyor.settings import Settings
from tests import services

_FOLDER_MARKERS = {"unit": "unit", "integration": "integration", "e2e": "e2e"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks every test by its folder, so ``-m unit`` selects the tests needing no services."""
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        marker = _FOLDER_MARKERS.get(folder)
        if marker is not None:
            item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real, ready broker for the whole session."""
    with services.kafka_bootstrap() as (bootstrap, _where):
        yield bootstrap


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
    }


#: The registry's Postgres schema: unique per session, so concurrent sessions never collide.
REGISTRY_SCHEMA = unique_name("registry_")


@pytest.fixture(scope="session")
def schema_registry_url(database_url: str) -> Iterator[str]:
    """A real ``conveyor registry serve`` subprocess on a free port, for the whole session.

    Its tables live in their own Postgres schema, created by ``conveyor migrate``.
    Tests stay isolated because subjects are named after their random topic prefixes.
    """
    from conveyor.embedded import free_port

    schema = REGISTRY_SCHEMA
    env = {"CONVEYOR_DATABASE_URL": database_url, "CONVEYOR_DATABASE_SCHEMA": schema}
    migrated_run = run_cli("migrate", env=env)
    assert migrated_run.code == 0, migrated_run.stderr
    port = free_port()
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conveyor",
                "registry",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env={**base, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_for_http(f"{url}/subjects", proc, log)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            asyncio.run(_drop_schema(database_url, schema))


def _wait_for_http(
    url: str, proc: subprocess.Popen[bytes], log: IO[bytes], timeout: float = 30.0
) -> None:
    """Polls ``url`` until it answers 200; fails early, with its output, if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        try:
            proc.wait(timeout=0.05)  # waits on the process, so an early exit is seen at once
        except subprocess.TimeoutExpired:
            continue
        log.seek(0)
        raise RuntimeError(f"registry exited with {proc.returncode}: {log.read().decode()}")
    raise RuntimeError(f"registry did not answer at {url} within {timeout}s")
