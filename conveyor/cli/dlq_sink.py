"""``conveyor dlq-sink``: run the DLQ sink on its own, until SIGTERM or SIGINT.

The worker runs a sink too; a separate one suits deployments that scale the sink apart
from the workers. Several sinks share the DLQ topic's partitions through one consumer
group, and each dead job still gets one row and one JobFailed event.
"""

from __future__ import annotations

import argparse

from conveyor import db
from conveyor.cli import common
from conveyor.consumer import preflight
from conveyor.consumer.dlq_sink import DlqSink
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings
from conveyor.topology.model import Topology


def register(subparsers: common.SubParsers) -> None:
    """Adds the ``dlq-sink`` subcommand."""
    parser = subparsers.add_parser(
        "dlq-sink",
        help="store dead jobs from the DLQ topic in job_dlq and emit their JobFailed events",
        description="Consume <prefix>.jobs.dlq in the group <prefix>.dlq-sink: insert one "
        "job_dlq row per dead job, mark the job failed, and publish one JobFailed event to "
        "<prefix>.jobs.events. Runs until SIGTERM or SIGINT, then commits and leaves.",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    common.set_handler(parser, _dlq_sink)


def _dlq_sink(args: argparse.Namespace, settings: Settings) -> int:
    common.observe("conveyor-dlq-sink", settings, args.log_level)
    return common.run(_run(settings))


async def _run(settings: Settings) -> int:
    stop = common.stop_on_signals()
    await preflight.check(settings)
    pool = await db.create_pool(settings, min_size=1, max_size=2)
    try:
        with Serde(settings) as serde:
            sink = DlqSink(settings, pool=pool, serde=serde)
            await sink.start()
            topic = Topology.from_settings(settings).dlq_topic
            print(f"dlq-sink: consuming {topic} in group {sink.group_id}", flush=True)
            await sink.run(stop)
    finally:
        await pool.close()
    stats = sink.stats
    print(
        f"dlq-sink: stopped; {stats.inserted} row(s) stored, {stats.duplicates} duplicate(s), "
        f"{stats.events_published} JobFailed event(s), {stats.undecodable} undecodable",
        flush=True,
    )
    return common.EXIT_OK
