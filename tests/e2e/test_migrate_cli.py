"""``conveyor migrate`` run as a subprocess, as an operator or a deploy job runs it."""

from __future__ import annotations

from typing import Any

import asyncpg

from conveyor import migrations
from conveyor.settings import Settings
from tests.conftest import run_cli, settings_env

UNREACHABLE_URL = "postgresql://postgres@127.0.0.1:1/x"


def _all_names() -> list[str]:
    return [m.name for m in migrations.load_migrations()]


def test_migrate_applies_everything_then_reports_up_to_date(settings: Settings) -> None:
    env = settings_env(settings)
    schema = settings.database_schema

    first = run_cli("migrate", env=env)
    second = run_cli("migrate", env=env)

    assert (first.code, first.stderr) == (0, "")
    applied = [line.removeprefix("applied ") for line in first.stdout.splitlines()[:-1]]
    assert applied == _all_names()
    assert first.stdout.splitlines()[-1].startswith(f"database schema {schema}: applied")
    assert (second.code, second.stderr) == (0, "")
    assert second.stdout.startswith(f"database schema {schema} is up to date (")


async def test_dry_run_lists_pending_migrations_and_applies_none(
    settings: Settings, db: asyncpg.Connection[Any]
) -> None:
    result = run_cli("migrate", "--dry-run", env=settings_env(settings))

    assert (result.code, result.stderr) == (0, "")
    pending = [line.removeprefix("pending ") for line in result.stdout.splitlines()[:-1]]
    assert pending == _all_names()
    exists = await db.fetchval(
        "SELECT count(*) FROM pg_namespace WHERE nspname = $1", settings.database_schema
    )
    assert exists == 0


async def test_status_after_migrate_reports_up_to_date(settings: Settings) -> None:
    await migrations.migrate(settings)

    result = run_cli("migrate", "--status", env=settings_env(settings))

    assert (result.code, result.stderr) == (0, "")
    assert result.stdout.startswith(f"database schema {settings.database_schema} is up to date")


def test_unreachable_database_prints_one_error_line_and_exits_1() -> None:
    result = run_cli("migrate", env={"CONVEYOR_DATABASE_URL": UNREACHABLE_URL})

    assert result.code == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("conveyor: error: cannot connect to Postgres")
