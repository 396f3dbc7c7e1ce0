"""``conveyor migrate``: brings the Postgres schema up to date, or shows what is pending."""

from __future__ import annotations

import argparse

from conveyor import migrations
from conveyor.cli import common
from conveyor.settings import Settings

DESCRIPTION = """\
Applies the pending database migrations to the schema CONVEYOR_DATABASE_SCHEMA (created
if missing) in CONVEYOR_DATABASE_URL. Safe to run from several places at once: runs
queue on an advisory lock and each migration is applied exactly once."""


def register(subparsers: common.SubParsers) -> None:
    """Adds ``conveyor migrate`` to the CLI."""
    parser = subparsers.add_parser(
        "migrate",
        help="apply pending database migrations",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dry-run",
        "--status",
        dest="dry_run",
        action="store_true",
        help="list the pending migrations without applying them",
    )
    common.set_handler(parser, handle)


def handle(args: argparse.Namespace, settings: Settings) -> int:
    """Runs ``conveyor migrate [--dry-run]``; returns the exit code."""
    if args.dry_run:
        return common.run(_status(settings))
    return common.run(_migrate(settings))


async def _migrate(settings: Settings) -> int:
    schema = settings.database_schema
    total = len(migrations.load_migrations())
    applied = await migrations.migrate(
        settings, on_applied=lambda name: print(f"applied {name}", flush=True)
    )
    if applied:
        print(f"database schema {schema}: applied {len(applied)} of {_count(total)}")
    else:
        print(f"database schema {schema} is up to date ({_count(total)})")
    return common.EXIT_OK


async def _status(settings: Settings) -> int:
    schema = settings.database_schema
    total = len(migrations.load_migrations())
    names = await migrations.pending(settings)
    if not names:
        print(f"database schema {schema} is up to date ({_count(total)})")
        return common.EXIT_OK
    for name in names:
        print(f"pending {name}")
    print(
        f"database schema {schema}: {len(names)} of {_count(total)} pending; "
        "run `conveyor migrate` to apply them"
    )
    return common.EXIT_OK


def _count(total: int) -> str:
    return f"{total} migration" if total == 1 else f"{total} migrations"
