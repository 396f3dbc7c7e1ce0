"""``conveyor ui``: the operator web UI (overview, jobs, DLQ, workers, topology)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from conveyor.cli import common
from conveyor.settings import Settings
from conveyor.ui import server, tenancy
from conveyor.ui.security import Credentials
from conveyor.ui.state import UiOptions


def register(subparsers: common.SubParsers) -> None:
    """Adds the ``ui`` subcommand."""
    parser = subparsers.add_parser(
        "ui",
        help="serve the operator web UI",
        description=(
            "Serve the web UI: per-priority overview with live charts, job search and "
            "timelines, batches, the DLQ with replay, workers and topology, and the same "
            "data as JSON under /api/. Bound to 127.0.0.1 unless --host says otherwise; a "
            "non-loopback host needs --auth or CONVEYOR_UI_TOKEN (or --no-auth). Every "
            "action needs the page's CSRF token; --read-only hides and refuses actions."
        ),
    )
    parser.add_argument("--host", default=server.DEFAULT_HOST, help="address to bind")
    parser.add_argument("--port", type=int, default=server.DEFAULT_PORT, help="port to bind")
    parser.add_argument(
        "--auth",
        metavar="USER:PASSWORD",
        help="require HTTP basic credentials (CONVEYOR_UI_TOKEN adds a bearer token)",
    )
    parser.add_argument(
        "--read-only", action="store_true", help="hide and refuse cancel and replay"
    )
    parser.add_argument(
        "--tenant",
        help="show only this tenant's rows, through row-level security "
        "(connects with CONVEYOR_UI_DATABASE_URL, a non-owner role)",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="allow a non-loopback --host without credentials (behind your own proxy)",
    )
    common.set_handler(parser, _ui)


def options_from(args: argparse.Namespace, settings: Settings) -> UiOptions:
    """The UI options the flags and settings ask for.

    Raises:
        ConfigurationError: ``--auth`` is malformed.
    """
    return UiOptions(
        credentials=Credentials.parse(args.auth, settings.ui_token),
        read_only=args.read_only,
        tenant=args.tenant,
    )


def _ui(args: argparse.Namespace, settings: Settings) -> int:
    common.observe("conveyor-ui", settings, "WARNING")
    options = options_from(args, settings)
    server.check_exposure(args.host, options, allow_anonymous=args.no_auth)
    if args.tenant is not None:
        settings = tenancy.scoped(settings, args.tenant)
        asyncio.run(tenancy.check_role(settings))
    scope = f", tenant {args.tenant}" if args.tenant else ""
    mode = ", read-only" if args.read_only else ""
    print(f"conveyor ui: http://{args.host}:{args.port}/{scope}{mode}", flush=True)
    # On Ctrl-C uvicorn shuts down cleanly, then re-raises the signal it caught.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve(settings, options, args.host, args.port))
    print("conveyor ui: stopped", flush=True)
    return common.EXIT_OK
