"""``conveyor worker module:attr``: run a Worker defined in your code."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from conveyor.cli import common
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
    print(
        f"worker {worker.worker_id}: priorities {','.join(worker.priorities)}, "
        f"concurrency {worker.concurrency}",
        flush=True,
    )
    worker.run_sync()
    return common.EXIT_OK
