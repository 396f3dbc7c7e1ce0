"""``conveyor ledger``: run the ledger on its own, until SIGTERM or SIGINT.

The worker runs a ledger too (``WorkerOptions.run_ledger``); a separate one suits
deployments that keep workers small or scale them to zero while jobs still arrive.
Several ledgers share the job topics' partitions through one consumer group.
"""

from __future__ import annotations

import argparse

from conveyor import gctuning
from conveyor.cli import common
from conveyor.consumer import preflight
from conveyor.ledger import Ledger
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings


def register(subparsers: common.SubParsers) -> None:
    """Adds the ``ledger`` subcommand."""
    parser = subparsers.add_parser(
        "ledger",
        help="record every submitted job as queued in Postgres, however far behind workers are",
        description="Consume the four job topics (<prefix>.jobs.critical|high|normal|low) in "
        "the group <prefix>.ledger and insert a 'queued' row and transition for every job "
        "that has no row yet, one statement per fetch; rows a worker wrote are left as they "
        "are, and messages that are not jobs are skipped (workers dead-letter them). "
        "`conveyor worker` runs the same ledger unless its app sets WorkerOptions(run_ledger="
        "False); run this to scale it "
        "separately. Runs until SIGTERM or SIGINT, then commits and leaves.",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    common.set_handler(parser, _ledger)


def _ledger(args: argparse.Namespace, settings: Settings) -> int:
    common.observe("conveyor-ledger", settings, args.log_level)
    return common.run(_run(settings))


async def _run(settings: Settings) -> int:
    stop = common.stop_on_signals()
    await preflight.check(settings)
    with Serde(settings) as serde:
        ledger = Ledger(settings, serde=serde)
        await ledger.start()
        print(
            f"ledger: consuming {', '.join(ledger.topics)} in group {ledger.group_id}",
            flush=True,
        )
        with gctuning.tuned(settings.gc_threshold):
            await ledger.run(stop)
    stats = ledger.stats
    print(
        f"ledger: stopped; {stats.read} message(s) read, {stats.inserted} queued row(s) "
        f"inserted, {stats.existing} already recorded, {stats.undecodable} not jobs (skipped)",
        flush=True,
    )
    return common.EXIT_OK
