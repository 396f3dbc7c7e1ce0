"""``conveyor cancel JOB_ID``: cancel a job that has not ended."""

from __future__ import annotations

import argparse

from conveyor.cli import common
from conveyor.cli.status import job_id_argument
from conveyor.jobstore import JobStore
from conveyor.settings import Settings


def register(subparsers: common.SubParsers) -> None:
    """Adds the ``cancel`` subcommand."""
    parser = subparsers.add_parser(
        "cancel",
        help="cancel a job and print its resulting state",
        description="Cancel a job. A job not yet started is cancelled at once and skipped "
        "when a worker receives it; a running job is interrupted by its worker through "
        "the control topic; a job that already ended is left as it is. Prints the "
        "job's resulting state.",
    )
    parser.add_argument("job_id", metavar="JOB_ID", type=job_id_argument, help="the job's id")
    parser.add_argument("--reason", help="why, kept in the job's history")
    common.set_handler(parser, _cancel)


def _cancel(args: argparse.Namespace, settings: Settings) -> int:
    return common.run(_run(settings, args.job_id, args.reason))


async def _run(settings: Settings, job_id: str, reason: str | None) -> int:
    async with JobStore(settings, pool_size=1) as store:
        state = await store.cancel(job_id, reason=reason)
    print(f"job {job_id}: {state}{_NOTES.get(state, '')}")
    return common.EXIT_OK


# A cancelled job reads the same whether this call or an earlier one cancelled it.
_NOTES = {
    "processing": " (cancel requested; the worker running it will stop it)",
    "complete": " (already ended; nothing to cancel)",
    "failed": " (already ended; nothing to cancel)",
}
