"""``conveyor status JOB_ID [--json]``: a job's state, progress, result and history."""

from __future__ import annotations

import argparse
import json
from typing import Any

from conveyor.cli import common
from conveyor.jobstore import UNKNOWN, JobStatus, JobStore, parse_job_id
from conveyor.settings import Settings


def job_id_argument(text: str) -> str:
    """Parses a JOB_ID argument, so a malformed id is a usage error naming the argument."""
    try:
        return parse_job_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def register(subparsers: common.SubParsers) -> None:
    """Adds the ``status`` subcommand."""
    parser = subparsers.add_parser(
        "status",
        help="show a job's state, progress, result and history",
        description="Show a job's state, attempts, progress, result, last error and full "
        "history. A submitted job is 'queued' once the ledger has read it, with its position "
        "(jobs ahead of it in its partition that no worker has finished); a job id nothing "
        "has recorded yet is reported as 'unknown'.",
    )
    parser.add_argument("job_id", metavar="JOB_ID", type=job_id_argument, help="the job's id")
    parser.add_argument(
        "--json", action="store_true", help="print the status as one JSON object instead"
    )
    common.set_handler(parser, _status)


def _status(args: argparse.Namespace, settings: Settings) -> int:
    return common.run(_show(settings, args.job_id, as_json=args.json))


async def _show(settings: Settings, job_id: str, *, as_json: bool) -> int:
    async with JobStore(settings, pool_size=1) as store:
        status = await store.status(job_id)
    if as_json:
        print(json.dumps(status.to_json(), indent=2, ensure_ascii=False))
    else:
        print(render(status))
    return common.EXIT_OK


def render(status: JobStatus) -> str:
    """The status as the readable text ``conveyor status`` prints."""
    if status.state == UNKNOWN:
        return (
            f"job {status.job_id}: {UNKNOWN} (neither the ledger nor a worker has recorded "
            "it yet, or its history was purged)"
        )
    fields: list[tuple[str, Any]] = [
        ("type", status.type),
        ("key", status.key),
        ("priority", status.priority),
        ("tenant", status.tenant_id),
        ("batch", status.batch_id),
        ("attempts", status.attempts),
        ("submitted", _time(status.submitted_at)),
        *([("due", _time(status.scheduled_for))] if status.scheduled_for is not None else []),
        ("started", _time(status.started_at)),
        ("finished", _time(status.finished_at)),
    ]
    if status.position is not None:
        fields.append(("position", f"{status.position} job(s) ahead in its partition"))
    if status.progress is not None:
        message = f" {status.progress.message}" if status.progress.message else ""
        fields.append(("progress", f"{status.progress.pct:g}%{message}"))
    if status.state == "complete":
        fields.append(("result", json.dumps(status.result, ensure_ascii=False)))
    if status.last_error is not None:
        fields.append(("last error", describe_error(status.last_error)))
    lines = [f"job {status.job_id}: {status.state}"]
    lines += [f"  {name:<10}  {'-' if value is None else value}" for name, value in fields]
    lines.append("history:")
    for t in status.history:
        error = f"  {describe_error(t.error)}" if t.error else ""
        lines.append(f"  {_time(t.at)}  {t.state:<10}  {t.attempt}{error}")
    return "\n".join(lines)


def describe_error(error: dict[str, Any]) -> str:
    """One line for a recorded error: ``Type: message``."""
    kind, message = error.get("type"), error.get("message")
    if kind is None and message is None:
        return json.dumps(error, ensure_ascii=False, default=str)
    first_line = str(message or "").splitlines()[0] if message else ""
    return f"{kind}: {first_line}" if kind and first_line else str(kind or first_line)


def _time(value: Any) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds")
