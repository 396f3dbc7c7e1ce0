"""``conveyor schedule add|list|pause|resume|remove``: recurring (cron) schedules."""

from __future__ import annotations

import argparse
import json
from typing import Any

from conveyor import db
from conveyor.cli import common
from conveyor.cli.submit import read_json
from conveyor.scheduling import cron, recurring
from conveyor.settings import Settings
from conveyor.topology.model import PRIORITIES


def register(subparsers: common.SubParsers) -> None:
    """Adds the ``schedule`` subcommand and its actions."""
    parser = subparsers.add_parser(
        "schedule",
        help="add, list, pause, resume or remove recurring (cron) schedules",
        description="Recurring schedules stored in Postgres. Every scheduler (each worker "
        "runs one) submits each tick once; the tick's job id derives from the schedule "
        "name and the tick time.",
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    add = actions.add_parser(
        "add",
        help="add a schedule, or replace the one of that name",
        description="Add a schedule. One of the same name is replaced; it keeps its next "
        "fire time unless the cron expression or time zone changed.",
    )
    add.add_argument("name", help="unique name of the schedule")
    add.add_argument("--cron", required=True, help="five-field cron expression: '0 8 * * *'")
    add.add_argument("--type", required=True, help="the job type submitted at each tick")
    add.add_argument("--payload", default="null", help="the job payload: JSON, @FILE or -")
    add.add_argument("--timezone", default="UTC", help="IANA zone, like Europe/Paris (UTC)")
    add.add_argument("--priority", default="normal", choices=PRIORITIES)
    add.add_argument("--key", help="the jobs' entity key")
    add.add_argument("--tenant", help="the jobs' tenant")
    add.add_argument(
        "--catch-up",
        default=cron.DEFAULT_CATCH_UP,
        choices=cron.CATCH_UP,
        help="ticks missed while no scheduler ran: none, last (default) or all",
    )
    common.set_handler(add, _add)

    listing = actions.add_parser("list", help="list schedules with their next fire time")
    listing.add_argument("--json", action="store_true", help="print JSON instead")
    common.set_handler(listing, _list)

    for name, handler, text in (
        ("pause", _pause, "stop submitting a schedule's ticks"),
        ("resume", _resume, "submit a paused schedule's ticks again, from its next tick"),
        ("remove", _remove, "delete a schedule"),
    ):
        action = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        action.add_argument("name", help="the schedule's name")
        common.set_handler(action, handler)


def _add(args: argparse.Namespace, settings: Settings) -> int:
    spec = recurring.ScheduleSpec(
        name=args.name,
        cron=args.cron,
        type=args.type,
        payload=read_json("--payload", args.payload),
        timezone=args.timezone,
        priority=args.priority,
        key=args.key,
        tenant_id=args.tenant,
        catch_up=args.catch_up,
    )
    spec.check()  # one clear error before connecting

    async def run() -> int:
        conn = await db.connect(settings)
        try:
            new = await recurring.upsert(conn, spec, source="cli")
            [row] = [r for r in await recurring.list_schedules(conn) if r.name == spec.name]
        finally:
            await conn.close()
        verb = "added" if new else "replaced"
        print(f"schedule {spec.name} {verb}; next fire at {row.next_fire_at.isoformat()}")
        return common.EXIT_OK

    return common.run(run())


def _list(args: argparse.Namespace, settings: Settings) -> int:
    async def run() -> int:
        conn = await db.connect(settings)
        try:
            rows = await recurring.list_schedules(conn)
        finally:
            await conn.close()
        if args.json:
            print(json.dumps([r.to_json() for r in rows], indent=2, ensure_ascii=False))
        else:
            print(render(rows))
        return common.EXIT_OK

    return common.run(run())


def render(rows: list[recurring.ScheduleRow]) -> str:
    """The schedules as the table ``conveyor schedule list`` prints."""
    if not rows:
        return "no schedules"
    header = ("NAME", "CRON", "TIMEZONE", "TYPE", "CATCH-UP", "STATE", "NEXT FIRE (UTC)")
    table: list[tuple[Any, ...]] = [header]
    for r in rows:
        table.append(
            (
                r.name,
                r.cron,
                r.timezone,
                r.type,
                r.catch_up,
                "paused" if r.paused else "active",
                r.next_fire_at.isoformat(timespec="seconds"),
            )
        )
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    )


def _change(settings: Settings, name: str, action: str) -> int:
    async def run() -> int:
        conn = await db.connect(settings)
        try:
            if action == "remove":
                await recurring.remove(conn, name)
            else:
                await recurring.set_paused(conn, name, action == "pause")
        finally:
            await conn.close()
        print(f"schedule {name} {action}d")
        return common.EXIT_OK

    return common.run(run())


def _pause(args: argparse.Namespace, settings: Settings) -> int:
    return _change(settings, args.name, "pause")


def _resume(args: argparse.Namespace, settings: Settings) -> int:
    return _change(settings, args.name, "resume")


def _remove(args: argparse.Namespace, settings: Settings) -> int:
    return _change(settings, args.name, "remove")
