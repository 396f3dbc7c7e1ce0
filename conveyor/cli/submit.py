"""``conveyor submit TYPE --payload JSON``: submit one job (or ``--batch``) from a shell."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from conveyor.cli import common
from conveyor.errors import ValidationError
from conveyor.producer import Job, Producer
from conveyor.settings import Settings
from conveyor.topology.model import PRIORITIES

SOURCES = "JSON text, @FILE to read a file, or - to read stdin"


def register(subparsers: common.SubParsers) -> None:
    """Adds the ``submit`` subcommand."""
    parser = subparsers.add_parser(
        "submit",
        help="submit one job (or a batch) and print its id",
        description="Submit one job and print its id. --payload is that job's payload, "
        "whatever JSON it is ('[1, 2]' is one job whose payload is a list); --batch takes "
        "a JSON array of payloads, submits them as one batch and prints one id per line. "
        "Either reads a file with @FILE or stdin with -. Invalid input prints one line "
        "and exits 1; nothing is sent.",
    )
    parser.add_argument("type", metavar="TYPE", help="job type, like email.send")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--payload", metavar="JSON", help=f"the job's payload: {SOURCES}")
    source.add_argument(
        "--batch", metavar="JSON", help=f"a JSON array of payloads, one job each: {SOURCES}"
    )
    parser.add_argument(
        "--key", help="entity key (jobs of one key run in order); default: the job id"
    )
    parser.add_argument("--priority", default="normal", choices=PRIORITIES, help="default: normal")
    parser.add_argument("--dedupe-key", help="makes the id deterministic; a repeat is the same job")
    parser.add_argument("--tenant", help="tenant that owns the job")
    parser.add_argument("--max-attempts", type=int, help="override the handler's attempt limit")
    parser.add_argument(
        "--delay", type=float, help="seconds before the job may start (it is 'scheduled' until)"
    )
    parser.add_argument(
        "--run-at",
        type=run_at_argument,
        metavar="ISO8601",
        help="when the job may start, with its time zone (2031-01-01T08:00:00+01:00)",
    )
    parser.add_argument(
        "--wait", action="store_true", help="return only after the broker acknowledged the job"
    )
    common.set_handler(parser, _submit)


def run_at_argument(text: str) -> dt.datetime:
    """Parses ``--run-at``; a missing time zone is left for the producer to refuse."""
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time like 2031-01-01T08:00:00+01:00"
        ) from exc


def read_json(option: str, value: str) -> Any:
    """Parses an option's JSON, read from the text itself, ``@FILE`` or ``-`` (stdin).

    Raises:
        ValidationError: The file cannot be read, or the text is not JSON.
    """
    if value == "-":
        text, origin = sys.stdin.read(), "stdin"
    elif value.startswith("@"):
        path = Path(value[1:])
        try:
            text, origin = path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ValidationError.single("payload", f"{option} cannot read {path}: {exc}") from exc
    else:
        text, origin = value, ""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f" ({origin})" if origin else ""
        raise ValidationError.single(
            "payload", f"{option} is not valid JSON{where}: {exc}"
        ) from exc


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    if args.batch is not None:
        payloads = read_json("--batch", args.batch)
        if not isinstance(payloads, list) or not payloads:
            raise ValidationError.single(
                "payload", "--batch expects a non-empty JSON array of payloads, one per job"
            )
        submission: Any = payloads
    else:
        # Job(...) keeps a list payload one job; a bare list would be a batch.
        submission = Job(read_json("--payload", args.payload))
    with Producer(settings) as producer:
        ids = producer.submit(
            args.type,
            submission,
            key=args.key,
            priority=args.priority,
            dedupe_key=args.dedupe_key,
            tenant_id=args.tenant,
            max_attempts=args.max_attempts,
            delay=args.delay,
            run_at=args.run_at,
            wait=args.wait,
        )
    print("\n".join(ids) if isinstance(ids, list) else ids)
    return common.EXIT_OK
