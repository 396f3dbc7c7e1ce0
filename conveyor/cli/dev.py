"""``conveyor dev``: the whole system on one machine, in one command."""

from __future__ import annotations

import argparse
import asyncio
import io
import signal
import sys
from collections import Counter

from conveyor import db, devstack, examples, migrations
from conveyor.cli import common
from conveyor.consumer.worker import Worker
from conveyor.producer import Producer
from conveyor.schemas import contracts
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings, explicitly_set
from conveyor.topology import admin
from conveyor.topology.model import PRIORITIES, Topology

DEFAULT_JOBS = 200
STATUS_EVERY = 2.0


def register(subparsers: common.SubParsers) -> None:
    """Adds the ``dev`` subcommand."""
    parser = subparsers.add_parser(
        "dev",
        help="run a local broker, Postgres, registry and worker, with sample jobs",
        description=(
            "Start what the environment does not name: a Tansu broker (unless "
            "CONVEYOR_KAFKA_BOOTSTRAP), an embedded Postgres (unless CONVEYOR_DATABASE_URL) and "
            "`conveyor registry serve` (unless CONVEYOR_SCHEMA_REGISTRY_URL); apply migrations "
            "and the topology; submit a mixed set of sample jobs of every priority; run a worker "
            "with example handlers (one succeeds, one reports progress, one fails, one is long) "
            "and show what happens. Stops on Ctrl-C, or after --duration seconds, with a summary; "
            "every child process stops with it."
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
        asyncio.run(migrations.migrate(live))
        print(f"   schema: {live.database_schema} (migrations up to date)")
        result = admin.apply(live)
        print(f"   topics: {len(result.created)} created, prefix {live.topic_prefix!r}")
        _register_contracts(live)
        counts = _submit_samples(live, args.jobs)
        shown = ", ".join(f"{p} {counts[p]}" for p in PRIORITIES)
        print(f"submitted: {sum(counts.values())} jobs ({shown})")
        worker = examples.build_worker(live)
        print(f"   worker: {worker.worker_id}, priorities {','.join(worker.priorities)}")
        asyncio.run(_run(worker, live, args.duration))
    print("stopped: every service of the stack has exited")
    return common.EXIT_OK


async def _run(worker: Worker, settings: Settings, duration: float | None) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, worker.stop)
    if duration is not None:
        loop.call_later(duration, worker.stop)
    else:
        # Only now is Ctrl-C handled as "stop", so only now say so.
        print("running; press Ctrl-C to stop")
    reporter = asyncio.create_task(_report(worker))
    try:
        await worker.run()
    finally:
        reporter.cancel()
        loop.remove_signal_handler(signal.SIGINT)
    await _summary(settings)


async def _report(worker: Worker) -> None:
    while True:
        await asyncio.sleep(STATUS_EVERY)
        s = worker.stats
        print(
            f"   status: started {s.started}, completed {s.completed}, failed {s.failed}, "
            f"cancelled {s.cancelled}, duplicates skipped {s.duplicates_skipped}"
        )


async def _summary(settings: Settings) -> None:
    conn = await db.connect(settings)
    try:
        rows = await conn.fetch("SELECT priority, state, count(*) AS n FROM jobs GROUP BY 1, 2")
    finally:
        await conn.close()
    table: dict[str, Counter[str]] = {p: Counter() for p in PRIORITIES}
    for row in rows:
        table.setdefault(row["priority"], Counter())[row["state"]] = row["n"]
    print("  summary: priority  complete  failed  processing")
    for priority in PRIORITIES:
        c = table[priority]
        print(
            f"           {priority:<8}  {c['complete']:>8}  {c['failed']:>6}  {c['processing']:>10}"
        )


def _register_contracts(settings: Settings) -> None:
    topology = Topology.from_settings(settings)
    pairs = [(contracts.JOB_ENVELOPE, topology.job_topic(p)) for p in PRIORITIES]
    pairs += [(contracts.JOB_ENVELOPE, t.name) for t in topology.retry_topics]
    pairs += [
        (contracts.DLQ_RECORD, topology.dlq_topic),
        (contracts.JOB_EVENT, topology.events_topic),
        (contracts.CONTROL_COMMAND, topology.control_topic),
    ]
    with Serde(settings) as serde:
        serde.register_all(pairs)


def _submit_samples(settings: Settings, jobs: int) -> Counter[str]:
    """Submits equal shares of every priority, so weighted scheduling shows in the results."""
    counts: Counter[str] = Counter()
    with Producer(settings) as producer:
        for i in range(jobs):
            priority = PRIORITIES[i % len(PRIORITIES)]
            # Types rotate per round of priorities, so every priority gets every type.
            job_type = examples.EXAMPLE_TYPES[(i // len(PRIORITIES)) % len(examples.EXAMPLE_TYPES)]
            producer.submit(job_type, {"n": i}, priority=priority, key=f"entity-{i % 50}")
            counts[priority] += 1
    return counts
