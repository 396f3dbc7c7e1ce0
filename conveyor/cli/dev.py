"""``conveyor dev``: the whole system on one machine, in one command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shlex
import signal
import socket
import sys
from collections import Counter
from typing import Any

import asyncpg

from conveyor import db, devstack, devsummary, embedded, examples, migrations
from conveyor.cli import common
from conveyor.cli import worker as worker_cli
from conveyor.consumer.options import WorkerOptions
from conveyor.consumer.worker import Worker
from conveyor.producer import Producer
from conveyor.schemas import contracts
from conveyor.schemas.serde import Serde
from conveyor.settings import DEFAULT_METRICS_PORT, Settings, explicitly_set
from conveyor.topology import admin
from conveyor.topology.model import PRIORITIES, Topology
from conveyor.ui import server as ui_server
from conveyor.ui.state import UiOptions

DEFAULT_JOBS = 200
STATUS_EVERY = 2.0
METRICS_HOST = "127.0.0.1"
#: Tansu holds an empty fetch for its whole max wait even when a record arrives meanwhile
#: (Kafka answers at once), so a short wait keeps the dev waits honest.
DEV_OPTIONS = WorkerOptions(metrics_host=METRICS_HOST, fetch_max_wait_ms=50)


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
            "and show what happens: per-priority counts, in-flight jobs, retries, the DLQ and "
            "p50/p99 wait, refreshed every 2s, and where /metrics is served (port 9464, or a "
            "free one if taken; CONVEYOR_METRICS_PORT sets it) and the web UI (`conveyor ui`, port "
            "8000 or a free one). Stops on Ctrl-C, or after "
            "--duration seconds, with a summary; every child process stops with it. "
            "--app module:attribute runs your own Worker instead of the examples (no samples "
            "are submitted); --no-worker runs the stack alone. Both print the CONVEYOR_* "
            "exports that point another shell's `conveyor worker` or `conveyor submit` at it."
        ),
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--app",
        metavar="APP",
        help="run this Worker (module:attribute, as `conveyor worker` takes) instead of the "
        "examples; its module sees the stack's CONVEYOR_* variables",
    )
    mode.add_argument(
        "--no-worker",
        action="store_true",
        help="run only the broker, Postgres and registry, and print their CONVEYOR_* exports",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        help=f"sample jobs to submit to the example worker (default {DEFAULT_JOBS})",
    )
    parser.add_argument(
        "--duration", type=float, help="exit after this many seconds (default: run until Ctrl-C)"
    )
    common.set_handler(parser, _dev)


def _dev(args: argparse.Namespace, settings: Settings) -> int:
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # live lines even through a pipe or tee
    explicit = explicitly_set()
    # The example failures are expected; the summary counts them instead of a log line each.
    common.observe("conveyor-dev", settings, "ERROR")
    with devstack.dev_stack(settings, explicit) as (live, services):
        for service in services:
            print(f"{service.name:>9}: {service.address}  ({service.origin})")
        asyncio.run(migrations.migrate(live))
        print(f"   schema: {live.database_schema} (migrations up to date)")
        result = admin.apply(live)
        print(f"   topics: {len(result.created)} created, prefix {live.topic_prefix!r}")
        _register_contracts(live)
        if args.app or args.no_worker:
            print("  exports: for `conveyor worker`, `conveyor submit` and the rest, elsewhere:")
            for name, value in exports(live).items():
                print(f"export {name}={shlex.quote(value)}")
        if args.no_worker:
            asyncio.run(_idle(args.duration))
            print("stopped: every service of the stack has exited")
            return common.EXIT_OK
        served = live.replace(metrics_port=_metrics_port(settings, explicit))
        if args.app:
            worker = _load_app(args.app, served)
            jobs = 0
        else:
            worker = examples.build_worker(served, options=DEV_OPTIONS)
            jobs = args.jobs
        print(f"   worker: {worker.worker_id}, priorities {','.join(worker.priorities)}")
        if served.metrics_port:
            print(
                f"  metrics: http://{METRICS_HOST}:{served.metrics_port}/metrics "
                "(and /healthz, /readyz)"
            )
        ui_port = ui_server.free_port(METRICS_HOST)
        with ui_server.serving(served, UiOptions(), METRICS_HOST, ui_port) as ui_url:
            print(f"       ui: {ui_url}  (conveyor ui)")
            asyncio.run(_run(worker, served, jobs, args.duration))
    print("stopped: every service of the stack has exited")
    return common.EXIT_OK


def exports(settings: Settings) -> dict[str, str]:
    """The ``CONVEYOR_*`` variables that point another process at the running stack."""
    return {
        "CONVEYOR_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CONVEYOR_DATABASE_URL": settings.database_url,
        "CONVEYOR_DATABASE_SCHEMA": settings.database_schema,
        "CONVEYOR_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "CONVEYOR_TOPIC_PREFIX": settings.topic_prefix,
        "CONVEYOR_PARTITION_UNIT": str(settings.partition_unit),
    }


def _load_app(app: str, served: Settings) -> Worker:
    """Imports the user's worker with the stack's variables in the environment.

    An app module builds its Worker from ``Settings.from_env()`` when it is imported, so
    the variables are set first; that is what points it at this stack.
    """
    os.environ.update(exports(served))
    os.environ["CONVEYOR_METRICS_PORT"] = str(served.metrics_port)
    return worker_cli.load_worker(app)


async def _idle(duration: float | None) -> None:
    """Waits for Ctrl-C, or ``duration`` seconds, while the stack serves other shells."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    else:
        print("running; press Ctrl-C to stop")
    try:
        await stop.wait()
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _metrics_port(settings: Settings, explicit: frozenset[str]) -> int:
    """CONVEYOR_METRICS_PORT when set; else the default port, or a free one if it is taken."""
    if "metrics_port" in explicit:
        return settings.metrics_port
    with socket.socket() as sock:
        try:
            sock.bind((METRICS_HOST, DEFAULT_METRICS_PORT))
        except OSError:
            return embedded.free_port(METRICS_HOST)
    return DEFAULT_METRICS_PORT


async def _run(worker: Worker, settings: Settings, jobs: int, duration: float | None) -> None:
    """Runs the worker, submits the samples once it has joined, reports, then summarises."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, worker.stop)
    if duration is not None:
        loop.call_later(duration, worker.stop)
    else:
        # Only now is Ctrl-C handled as "stop", so only now say so.
        print("running; press Ctrl-C to stop")
    conn = await db.connect(settings)
    try:
        run = asyncio.create_task(worker.run())
        reporter: asyncio.Task[None] | None = None
        try:
            # Submitting once the worker is in its groups makes the waits shown the real
            # submit-to-start latency, not the worker's start-up.
            while not worker.joined and not run.done():  # noqa: ASYNC110 - two conditions
                await asyncio.sleep(0.05)
            if not run.done():
                if jobs:
                    counts = await asyncio.to_thread(_submit_samples, settings, jobs)
                    shown = ", ".join(f"{p} {counts[p]}" for p in PRIORITIES)
                    print(f"submitted: {sum(counts.values())} jobs ({shown})")
                else:
                    print(f"   joined: worker {worker.worker_id} is waiting for jobs")
                reporter = asyncio.create_task(_report(worker, conn))
            await run
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            if reporter is not None:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
            if not run.done():
                worker.stop()
                await run
        print("  summary:")
        for line in devsummary.table(await devsummary.take(conn, worker)):
            print(f"           {line}")
    finally:
        await conn.close()


async def _report(worker: Worker, conn: asyncpg.Connection[Any]) -> None:
    """Redraws the table in a terminal; to a pipe, prints a status line when it changed."""
    drawn = 0
    last = ""
    while True:
        await asyncio.sleep(STATUS_EVERY)
        try:
            snapshot = await devsummary.take(conn, worker)
        except (asyncpg.PostgresError, OSError) as exc:
            print(f"   status: unavailable ({exc})")
            continue
        if sys.stdout.isatty():
            lines = devsummary.table(snapshot)
            sys.stdout.write(devsummary.redraw(drawn, lines))
            sys.stdout.flush()
            drawn = len(lines)
        else:
            line = devsummary.status_line(snapshot)
            if line != last:  # an idle stack does not repeat itself every 2 s
                print(f"   status: {line}")
                last = line


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
