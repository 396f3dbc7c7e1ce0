"""What every CLI subcommand shares: exit codes, settings, and running coroutines."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from conveyor.observability import exporters, logs
from conveyor.settings import Settings

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DRIFT = 3


class SubParsers(Protocol):
    """The object ``argparse`` returns from ``add_subparsers``."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


Handler = Callable[[argparse.Namespace, Settings], int]


def set_handler(parser: argparse.ArgumentParser, handler: Handler) -> None:
    """Marks ``handler`` as what runs when this (sub)command is chosen."""
    parser.set_defaults(handler=handler)


def run(coro: Coroutine[Any, Any, int]) -> int:
    """Runs a coroutine to completion and returns its exit code."""
    return asyncio.run(coro)


def stop_on_signals() -> asyncio.Event:
    """An event that SIGTERM or SIGINT sets: how a service command learns to stop.

    Call it inside the running event loop.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def observe(service: str, settings: Settings, log_level: str = "INFO") -> None:
    """Sets up logging (text or JSON lines) and, as ``OTEL_*`` asks, a trace exporter.

    Raises:
        ConfigurationError: An ``OTEL_*`` variable names an unknown or missing exporter.
    """
    logs.configure_logging(log_level, json_lines=settings.log_json)
    exporters.configure_tracing(service)
