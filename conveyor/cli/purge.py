"""``conveyor purge``: delete finished jobs and replayed DLQ rows past their retention, once.

The worker runs the same purge every hour; this is for cron jobs and operators.
"""

from __future__ import annotations

import argparse
import datetime as dt

from conveyor import db, dlq
from conveyor.cli import common
from conveyor.settings import Settings, parse_duration


def _duration(text: str) -> dt.timedelta:
    try:
        return dt.timedelta(seconds=parse_duration(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def register(subparsers: common.SubParsers) -> None:
    """Adds the ``purge`` subcommand."""
    parser = subparsers.add_parser(
        "purge",
        help="delete finished jobs and replayed DLQ rows past their retention",
        description="Delete jobs that ended (complete, failed, cancelled) longer ago than "
        "the job topics' retention plus 1 day (8 days by default, CONVEYOR_JOB_RETENTION_DAYS "
        "+ 1) with their history, and DLQ entries replayed more than 30 days ago, in batches "
        "of 5000 rows. Pending DLQ entries are never deleted. Only one process purges a "
        "schema at a time; another one skips. Prints how many rows went.",
    )
    parser.add_argument(
        "--jobs-older-than",
        type=_duration,
        metavar="DURATION",
        help="retention of finished jobs, like 8d or 36h (default: the job topics' "
        "retention + 1d; a shorter one lets a re-read job run again)",
    )
    parser.add_argument(
        "--dlq-older-than",
        type=_duration,
        metavar="DURATION",
        help="retention of replayed DLQ entries, like 30d (default: 30d)",
    )
    common.set_handler(parser, _purge)


def _purge(args: argparse.Namespace, settings: Settings) -> int:
    return common.run(_run(settings, args.jobs_older_than, args.dlq_older_than))


async def _run(
    settings: Settings, jobs_older_than: dt.timedelta | None, dlq_older_than: dt.timedelta | None
) -> int:
    pool = await db.create_pool(settings, min_size=1, max_size=1)
    try:
        jobs, rows = await dlq.purge(
            pool,
            jobs_older_than=jobs_older_than,
            dlq_older_than=dlq_older_than,
            job_retention_days=settings.job_retention_days,
        )
    finally:
        await pool.close()
    print(f"purged {jobs} finished job(s) and {rows} replayed DLQ entry(ies)")
    return common.EXIT_OK
