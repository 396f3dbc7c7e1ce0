"""``conveyor submit TYPE --payload JSON``: submit one job from a shell."""

from __future__ import annotations

import argparse
import json

from conveyor.cli import common
from conveyor.errors import ValidationError
from conveyor.producer import Producer
from conveyor.settings import Settings
from conveyor.topology.model import PRIORITIES


def register(subparsers: common.SubParsers) -> None:
    """Adds the ``submit`` subcommand."""
    parser = subparsers.add_parser(
        "submit",
        help="submit one job and print its id",
        description="Submit one job and print its id. Invalid input prints one line and "
        "exits 1; nothing is sent.",
    )
    parser.add_argument("type", metavar="TYPE", help="job type, like email.send")
    parser.add_argument("--payload", required=True, metavar="JSON", help="the payload as JSON")
    parser.add_argument(
        "--key", help="entity key (jobs of one key run in order); default: the job id"
    )
    parser.add_argument("--priority", default="normal", choices=PRIORITIES, help="default: normal")
    parser.add_argument("--dedupe-key", help="makes the id deterministic; a repeat is the same job")
    parser.add_argument("--tenant", help="tenant that owns the job")
    parser.add_argument("--max-attempts", type=int, help="override the handler's attempt limit")
    parser.add_argument("--delay", type=float, help="seconds before the job may start")
    parser.add_argument(
        "--wait", action="store_true", help="return only after the broker acknowledged the job"
    )
    common.set_handler(parser, _submit)


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        raise ValidationError.single("payload", f"--payload is not valid JSON: {exc}") from exc
    with Producer(settings) as producer:
        job_id = producer.submit(
            args.type,
            payload,
            key=args.key,
            priority=args.priority,
            dedupe_key=args.dedupe_key,
            tenant_id=args.tenant,
            max_attempts=args.max_attempts,
            delay=args.delay,
            wait=args.wait,
        )
    print(job_id)
    return common.EXIT_OK
