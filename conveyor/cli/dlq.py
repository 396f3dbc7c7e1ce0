"""``conveyor dlq list|show|replay``: inspect dead jobs and resubmit them.

``list`` and ``show`` need only Postgres; ``replay`` also publishes to Kafka through the
schema registry.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any, TextIO

from conveyor.cli import common
from conveyor.cli.status import describe_error
from conveyor.dlq import DEFAULT_LIST_LIMIT, DlqEntry
from conveyor.jobstore import JobStore, parse_job_id
from conveyor.settings import Settings

BAR_WIDTH = 20
"""Characters of the progress bar ``dlq replay --all`` draws on stderr."""


def register(subparsers: common.SubParsers) -> None:
    """Adds the ``dlq`` subcommand and its ``list``, ``show`` and ``replay`` actions."""
    parser = subparsers.add_parser(
        "dlq",
        help="list, show and replay dead jobs",
        description="Inspect the jobs in the job_dlq table and replay them. A replay "
        "resubmits the job under its own id as attempt 1, keeps its history and marks the "
        "entry replayed; an entry is replayed at most once.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    listing = actions.add_parser(
        "list", help="list DLQ entries, oldest first", description="List DLQ entries."
    )
    listing.add_argument("--type", help="only entries of this job type")
    listing.add_argument("--tenant", help="only entries of this tenant")
    listing.add_argument(
        "--all", action="store_true", help="include entries already replayed (default: pending)"
    )
    listing.add_argument(
        "--limit",
        type=_positive,
        default=DEFAULT_LIST_LIMIT,
        help=f"at most this many entries (default: {DEFAULT_LIST_LIMIT})",
    )
    listing.add_argument("--json", action="store_true", help="print a JSON array instead")
    common.set_handler(listing, _list)

    show = actions.add_parser(
        "show",
        help="show every field of a DLQ entry and its error history",
        description="Show every field of a DLQ entry, with the error of every attempt.",
    )
    show.add_argument(
        "entry_id", metavar="ID", type=entry_ref, help="the entry's number, or the job's id"
    )
    show.add_argument("--json", action="store_true", help="print one JSON object instead")
    common.set_handler(show, _show)

    replay = actions.add_parser(
        "replay",
        help="resubmit a dead job (ID), or every pending one of a type (--type T --all)",
        description="Resubmit the job of DLQ entry ID, or with --type T --all every pending "
        "entry of job type T (optionally of one --tenant), oldest first. Prints the id of "
        "each job replayed. An entry already replayed is refused.",
    )
    replay.add_argument(
        "entry_id",
        metavar="ID",
        nargs="?",
        type=entry_ref,
        help="the entry to replay: its number, or the job's id",
    )
    replay.add_argument("--type", help="with --all: the job type whose entries are replayed")
    replay.add_argument("--tenant", help="with --all: only entries of this tenant")
    replay.add_argument("--all", action="store_true", help="replay every pending entry of --type")
    common.set_handler(replay, lambda args, settings: _replay(replay, args, settings))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def entry_ref(text: str) -> int | str:
    """Parses ID: an entry number (``dlq list``'s first column) or a job id (a UUID)."""
    if text.strip().isdigit():
        return _positive(text)
    try:
        return parse_job_id(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an entry number or a job id, got {text!r}"
        ) from None


async def _entry_id(store: JobStore, ref: int | str) -> int:
    return ref if isinstance(ref, int) else await store.dlq_entry_of(ref)


def _list(args: argparse.Namespace, settings: Settings) -> int:
    return common.run(_run_list(settings, args))


async def _run_list(settings: Settings, args: argparse.Namespace) -> int:
    async with JobStore(settings, pool_size=1) as store:
        entries = await store.dlq_list(
            type=args.type, tenant=args.tenant, pending_only=not args.all, limit=args.limit
        )
    if args.json:
        print(json.dumps([e.to_json() for e in entries], indent=2, ensure_ascii=False))
    else:
        print(render_table(entries))
    return common.EXIT_OK


def render_table(entries: list[DlqEntry]) -> str:
    """The entries as the table ``conveyor dlq list`` prints."""
    if not entries:
        return "no DLQ entries"
    header = ("ID", "DLQ AT", "TYPE", "REASON", "ATTEMPTS", "JOB ID", "REPLAYED")
    rows = [
        (
            str(e.id),
            _time(e.dlq_at),
            e.type or "-",
            e.error_reason,
            str(e.attempts),
            e.original_job_id or "-",
            _time(e.replayed_at) if e.replayed_at else "-",
        )
        for e in entries
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    )


def _show(args: argparse.Namespace, settings: Settings) -> int:
    return common.run(_run_show(settings, args.entry_id, as_json=args.json))


async def _run_show(settings: Settings, ref: int | str, *, as_json: bool) -> int:
    async with JobStore(settings, pool_size=1) as store:
        entry = await store.dlq_show(await _entry_id(store, ref))
    if as_json:
        print(json.dumps(entry.to_json(), indent=2, ensure_ascii=False))
    else:
        print(render_entry(entry))
    return common.EXIT_OK


def render_entry(entry: DlqEntry) -> str:
    """Every field of the entry and its error history, as ``conveyor dlq show`` prints."""
    data = entry.to_json()
    payload = data.pop("payload_base64", None)
    if payload is None:
        payload = json.dumps(data.pop("payload"), ensure_ascii=False)
    else:
        payload = f"(base64) {payload}"
    history = data.pop("error_history")
    state = "replayed at " + data["replayed_at"] if entry.replayed_at else "pending"
    lines = [f"DLQ entry {entry.id}: {entry.error_reason}, {state}"]
    for name, value in data.items():
        lines.append(f"  {name:<18}  {'-' if value is None else value}")
    lines.append(f"  {'payload':<18}  {payload}")
    lines.append(f"error history ({len(history)}):")
    for error in history:
        described = describe_error({"type": error.get("error_type"), **error})
        lines.append(f"  attempt {error.get('attempt', '?')}  {error.get('at', '')}  {described}")
        lines += [f"      {line}" for line in str(error.get("traceback") or "").splitlines()]
    return "\n".join(lines)


def _replay(parser: argparse.ArgumentParser, args: argparse.Namespace, settings: Settings) -> int:
    if args.all == (args.entry_id is not None):
        parser.error("give either an entry ID or --type T --all")
    if args.all and not args.type:
        parser.error("--all needs --type: replaying every job type at once is not supported")
    if not args.all and (args.type or args.tenant):
        parser.error("--type and --tenant go with --all")
    return common.run(_run_replay(settings, args))


async def _run_replay(settings: Settings, args: argparse.Namespace) -> int:
    async with JobStore(settings, pool_size=1) as store:
        if not args.all:
            print(await store.replay(await _entry_id(store, args.entry_id)), flush=True)
            return common.EXIT_OK
        bar = ProgressBar(sys.stderr)
        replayed = await store.replay_all(type=args.type, tenant=args.tenant, on_progress=bar)
    for job_id in replayed:
        print(job_id)
    print(f"replayed {len(replayed)} job(s) of type {args.type}", file=sys.stderr)
    return common.EXIT_OK


class ProgressBar:
    """Draws ``[#####-----] 12/25`` on a stream; in place on a terminal.

    Off a terminal it writes a line only every tenth of the way, so logs stay short.

    Args:
        stream: Where to draw (stderr, so stdout keeps only the results).
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last_step = -1

    def __call__(self, done: int, total: int) -> None:
        """Shows ``done`` of ``total``."""
        filled = BAR_WIDTH * done // total if total else BAR_WIDTH
        text = f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done}/{total}"
        if self._tty:
            end = "\n" if done >= total else ""
            self._stream.write(f"\r{text}{end}")
        else:
            step = 10 * done // total if total else 10
            if step == self._last_step and done < total:
                return
            self._last_step = step
            self._stream.write(f"{text}\n")
        self._stream.flush()


def _time(value: Any) -> str:
    return value.isoformat(timespec="seconds") if isinstance(value, dt.datetime) else "-"
