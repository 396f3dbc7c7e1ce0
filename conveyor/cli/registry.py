"""``conveyor registry serve``: runs the Confluent-compatible schema registry on uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
from collections.abc import Iterator

import uvicorn

from conveyor import db
from conveyor.cli import common
from conveyor.errors import ConfigurationError, MigrationError
from conveyor.schemas import registry
from conveyor.settings import Settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8081
DEFAULT_LOG_LEVEL = "warning"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
GRACEFUL_SHUTDOWN_SECONDS = 10

DESCRIPTION = """\
Serves a Confluent Schema Registry compatible REST API whose schemas, versions and
compatibility levels live in Postgres (CONVEYOR_DATABASE_URL, schema
CONVEYOR_DATABASE_SCHEMA). Run `conveyor migrate` first. SIGTERM or Ctrl-C stops it."""


def register(subparsers: common.SubParsers) -> None:
    """Adds ``conveyor registry serve`` to the CLI."""
    parser = subparsers.add_parser(
        "registry",
        help="run conveyor's schema registry",
        description="Conveyor's Confluent-compatible schema registry.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve the schema registry REST API",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind ({DEFAULT_HOST})")
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to listen on ({DEFAULT_PORT})"
    )
    serve.add_argument(
        "--log-level",
        default=DEFAULT_LOG_LEVEL,
        choices=LOG_LEVELS,
        help=f"uvicorn log level ({DEFAULT_LOG_LEVEL}; info logs every request)",
    )
    common.set_handler(serve, handle)


def handle(args: argparse.Namespace, settings: Settings) -> int:
    """Runs ``conveyor registry serve`` until SIGTERM or SIGINT; returns the exit code."""
    common.run(_check_tables(settings))
    sock = _bind(args.host, args.port)
    config = uvicorn.Config(
        registry.create_app(settings),
        log_level=args.log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    server = _Server(config)
    print(
        f"conveyor registry serving http://{_url_host(args.host)}:{args.port} "
        f"(Postgres schema {settings.database_schema})",
        flush=True,
    )
    with sock:
        server.run(sockets=[sock])
    # uvicorn has logged why it could not start (the lifespan could not open the pool).
    return common.EXIT_OK if server.started else common.EXIT_ERROR


async def _check_tables(settings: Settings) -> int:
    conn = await db.connect(settings)
    try:
        missing = await registry.missing_tables(conn, settings.database_schema)
    finally:
        await conn.close()
    if missing:
        raise MigrationError(
            f"the schema registry tables ({', '.join(missing)}) are missing from Postgres "
            f"schema {settings.database_schema}: run `conveyor migrate` first"
        )
    return common.EXIT_OK


def _bind(host: str, port: int) -> socket.socket:
    # Binding here, not in uvicorn, turns "address in use" into conveyor's one-line error.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        raise ConfigurationError("--host/--port", f"cannot listen on {host}:{port}: {exc}") from exc
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _Server(uvicorn.Server):
    """A uvicorn server that exits quietly after SIGTERM or SIGINT.

    uvicorn re-raises the signal it caught once it has shut down, so the process would
    die by SIGTERM or raise KeyboardInterrupt after a clean stop; a stop that was asked
    for is a success here.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
