"""``conveyor worker module:attr``: run a Worker defined in your code."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from conveyor import supervisor
from conveyor.cli import common
from conveyor.consumer import preflight
from conveyor.consumer.worker import Worker
from conveyor.errors import ConfigurationError
from conveyor.settings import Settings


def register(subparsers: common.SubParsers) -> None:
    """Adds the ``worker`` subcommand."""
    parser = subparsers.add_parser(
        "worker",
        help="run the handlers of a Worker on its job topics",
        description=(
            "Import APP (module:attribute, a conveyor.Worker; the current directory is on the "
            "import path) and run it until SIGTERM or SIGINT. On a signal it stops fetching, "
            "gives in-flight jobs the grace period, commits and leaves the consumer groups."
        ),
    )
    parser.add_argument("app", metavar="APP", help="module:attribute of a conveyor.Worker")
    parser.add_argument(
        "--priorities",
        help="comma-separated priorities to serve (default: the worker's own), e.g. critical,high",
    )
    parser.add_argument(
        "--concurrency", type=int, help="jobs running at once (default: the worker's)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="port of /metrics, /healthz and /readyz; 0 turns the endpoint off "
        "(default: CONVEYOR_METRICS_PORT, else 9464)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="worker processes to run on this host, each joining the same consumer groups "
        "(default: 1); process i serves its probes on the metrics port + i; one that dies "
        "is started again, and repeated start failures end the run with exit 1",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    common.set_handler(parser, _worker)


def load_worker(app: str) -> Worker:
    """Imports ``module:attribute`` and returns the Worker it names.

    Raises:
        ConfigurationError: APP is malformed, cannot be imported, or is not a Worker.
    """
    module_name, _, attribute = app.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError("APP", f"expected module:attribute, got {app!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError("APP", f"cannot import {module_name!r}: {exc}") from exc
    if not hasattr(module, attribute):
        raise ConfigurationError(
            "APP", f"module {module_name!r} has no attribute {attribute!r} (from {app})"
        )
    worker = getattr(module, attribute)
    if not isinstance(worker, Worker):
        raise ConfigurationError(
            "APP", f"{app} is not a conveyor.Worker (got {type(worker).__name__})"
        )
    return worker


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    common.observe("conveyor-worker", settings, args.log_level)
    worker = load_worker(args.app)
    priorities = args.priorities.split(",") if args.priorities else None
    worker.configure(
        priorities=priorities, concurrency=args.concurrency, metrics_port=args.metrics_port
    )
    if args.processes < 1:
        raise ConfigurationError("--processes", f"must be >= 1, got {args.processes}")
    if args.processes > 1:
        return _supervise(args, worker)
    print(
        f"worker {worker.worker_id}: priorities {','.join(worker.priorities)}, "
        f"concurrency {worker.concurrency}",
        flush=True,
    )
    worker.run_sync()
    return common.EXIT_OK


def _supervise(args: argparse.Namespace, worker: Worker) -> int:
    """Runs ``args.processes`` children of this command, each a one-process worker.

    The start-up checks run here first, so a deployment error is one line and no child
    is started.
    """
    if worker.options.check_at_start:
        common.run(_checked(worker.settings))
    base = worker.settings.metrics_port
    if base and base + args.processes - 1 > 65535:
        raise ConfigurationError(
            "--metrics-port", f"{base} + {args.processes} processes passes port 65535"
        )

    def command(index: int) -> list[str]:
        flags = ["--processes", "1", "--metrics-port", str(base + index if base else 0)]
        flags += ["--priorities", ",".join(worker.priorities)]
        flags += ["--concurrency", str(worker.concurrency), "--log-level", args.log_level]
        return [sys.executable, "-m", "conveyor", "worker", args.app, *flags]

    def environment(index: int) -> dict[str, str]:
        instance = worker.settings.worker_instance_id
        # Two members of one group may not share an instance id.
        return {"CONVEYOR_WORKER_INSTANCE_ID": f"{instance}-{index}"} if instance else {}

    print(
        f"supervising {args.processes} worker processes: priorities "
        f"{','.join(worker.priorities)}, concurrency {worker.concurrency} each",
        flush=True,
    )
    return supervisor.Supervisor(
        command, environment=environment, processes=args.processes
    ).run_with_signals()


async def _checked(settings: Settings) -> int:
    await preflight.check(settings)
    return common.EXIT_OK
