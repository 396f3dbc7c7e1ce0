"""``conveyor scheduler``: run the scheduler on its own, until SIGTERM or SIGINT.

Every worker runs a scheduler too (``WorkerOptions.run_scheduler``); a separate one suits
deployments that run workers with it turned off. Any number may run: each delayed job is
released once and each recurring tick submitted once.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from conveyor import db
from conveyor.cli import common
from conveyor.consumer import preflight
from conveyor.scheduling.service import Scheduler
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology.model import Topology


def register(subparsers: common.SubParsers) -> None:
    """Adds the ``scheduler`` subcommand."""
    parser = subparsers.add_parser(
        "scheduler",
        help="hold delayed and run_at jobs until due, and fire recurring schedules",
        description="Consume <prefix>.jobs.scheduled in the group <prefix>.scheduler into "
        "Postgres, release each delayed job to its priority topic when due (once, however "
        "many schedulers run), and submit each tick of the recurring schedules once. Runs "
        "until SIGTERM or SIGINT.",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    common.set_handler(parser, _scheduler)


def _scheduler(args: argparse.Namespace, settings: Settings) -> int:
    common.observe("conveyor-scheduler", settings, args.log_level)
    return common.run(_run(settings))


async def _run(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await preflight.check(settings)
    pool = await db.create_pool(settings, min_size=1, max_size=4)
    try:
        with Serde(settings) as serde:
            service = Scheduler(settings, pool=pool, serde=serde)
            await service.start()
            topology = Topology.from_settings(settings)
            print(
                f"scheduler: consuming {topology.scheduled_topic} in group "
                f"{topology.scheduler_group}",
                flush=True,
            )
            await service.run(stop)
    finally:
        await pool.close()
    print(
        f"scheduler: stopped; {service.dispatcher.stats.released} job(s) released, "
        f"{service.dispatcher.stats.skipped} cancelled job(s) skipped, "
        f"{service.recurring.submitted} recurring tick(s) submitted",
        flush=True,
    )
    return common.EXIT_OK
