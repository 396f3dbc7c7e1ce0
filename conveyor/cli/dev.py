"""``conveyor dev``: the whole system on one machine, in one command."""

from __future__ import annotations

import argparse
import io
import sys
import threading
from collections import Counter

from conveyor import devstack, migrations
from conveyor.cli import common
from conveyor.producer import Producer
from conveyor.schemas import contracts
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings, explicitly_set
from conveyor.topology import admin
from conveyor.topology.model import PRIORITIES, Topology

DEFAULT_JOBS = 200
EXAMPLE_TYPES = ("example.succeed", "example.progress", "example.fail", "example.long")


def register(subparsers: common.SubParsers) -> None:
    """Adds the ``dev`` subcommand."""
    parser = subparsers.add_parser(
        "dev",
        help="run a local broker, Postgres and registry, and submit sample jobs",
        description=(
            "Start what the environment does not name: a Tansu broker (unless "
            "CONVEYOR_KAFKA_BOOTSTRAP), an embedded Postgres (unless CONVEYOR_DATABASE_URL) and "
            "`conveyor registry serve` (unless CONVEYOR_SCHEMA_REGISTRY_URL); apply migrations "
            "and the topology; submit a mixed set of sample jobs of every priority. "
            "Stops on Ctrl-C, or after --duration seconds, stopping every child process."
        ),
    )
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help="sample jobs to submit")
    parser.add_argument(
        "--duration", type=float, help="exit after this many seconds (default: run until Ctrl-C)"
    )
    common.set_handler(parser, _dev)


def _dev(args: argparse.Namespace, settings: Settings) -> int:
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # live lines even through a pipe or tee
    with devstack.dev_stack(settings, explicitly_set()) as (live, services):
        for service in services:
            print(f"{service.name:>9}: {service.address}  ({service.origin})")
        common.run(_migrate(live))
        print(f"   schema: {live.database_schema} (migrations up to date)")
        result = admin.apply(live)
        print(f"   topics: {len(result.created)} created, prefix {live.topic_prefix!r}")
        _register_contracts(live)
        counts = _submit_samples(live, args.jobs)
        shown = ", ".join(f"{p} {counts[p]}" for p in PRIORITIES)
        print(f"submitted: {sum(counts.values())} jobs ({shown})")
        print(
            "   worker: not part of this build yet; the jobs wait on their topics "
            f"(consume them with any Kafka client at {live.kafka_bootstrap})"
        )
        _wait(args.duration)
    print("stopped: every service of the stack has exited")
    return common.EXIT_OK


async def _migrate(settings: Settings) -> int:
    return len(await migrations.migrate(settings))


def _register_contracts(settings: Settings) -> None:
    topology = Topology.from_settings(settings)
    pairs = [(contracts.JOB_ENVELOPE, topology.job_topic(p)) for p in PRIORITIES]
    pairs += [(contracts.JOB_ENVELOPE, t.name) for t in topology.retry_topics]
    pairs += [
        (contracts.DLQ_RECORD, topology.dlq_topic),
        (contracts.JOB_EVENT, topology.events_topic),
        (contracts.CONTROL_COMMAND, topology.control_topic),
    ]
    Serde(settings).register_all(pairs)


def _submit_samples(settings: Settings, jobs: int) -> Counter[str]:
    """Submits equal shares of every priority, so weighted scheduling shows in the results."""
    counts: Counter[str] = Counter()
    with Producer(settings) as producer:
        for i in range(jobs):
            priority = PRIORITIES[i % len(PRIORITIES)]
            job_type = EXAMPLE_TYPES[i % len(EXAMPLE_TYPES)]
            producer.submit(job_type, {"n": i}, priority=priority, key=f"entity-{i % 50}")
            counts[priority] += 1
    return counts


def _wait(duration: float | None) -> None:
    """Waits ``duration`` seconds, or until Ctrl-C; Ctrl-C here is the normal way to stop."""
    stop = threading.Event()
    try:
        # The prompt is printed inside the try, so a Ctrl-C right after it is still caught.
        if duration is None:
            print("running; press Ctrl-C to stop")
        stop.wait(duration)
    except KeyboardInterrupt:
        print()
