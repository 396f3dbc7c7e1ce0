"""The ``conveyor`` command line: one program, one module per subcommand.

Every subcommand module exposes ``register(subparsers)``. Errors that conveyor raises
on purpose print as one line on stderr with a non-zero exit code; only bugs show a
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from conveyor.cli import (
    cancel,
    common,
    dev,
    dlq,
    dlq_sink,
    ledger,
    migrate,
    purge,
    registry,
    relay,
    schedule,
    scheduler,
    status,
    submit,
    topology,
    ui,
    worker,
)
from conveyor.errors import ConveyorError
from conveyor.settings import Settings

_SUBCOMMANDS: tuple[Any, ...] = (
    topology,
    migrate,
    registry,
    submit,
    worker,
    relay,
    scheduler,
    schedule,
    status,
    cancel,
    dlq,
    dlq_sink,
    ledger,
    purge,
    ui,
    dev,
)

EPILOG = """\
Configuration comes from CONVEYOR_* environment variables (see README, Configuration).
Exit codes: 0 ok, 1 error, 2 usage, 3 topology drift."""


def build_parser() -> argparse.ArgumentParser:
    """Builds the parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="conveyor",
        description="A Python job processor on Apache Kafka.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for module in _SUBCOMMANDS:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI and returns its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        code: int = args.handler(args, settings)
    except ConveyorError as exc:
        print(f"conveyor: error: {exc}", file=sys.stderr)
        return common.EXIT_ERROR
    except KeyboardInterrupt:
        print("conveyor: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
