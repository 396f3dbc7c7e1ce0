"""Serving the UI with uvicorn: in the foreground (``conveyor ui``) or beside ``conveyor dev``."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

from conveyor.errors import ConfigurationError, ConveyorError
from conveyor.settings import Settings
from conveyor.ui.app import create_app
from conveyor.ui.state import UiOptions

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
STARTUP_TIMEOUT = 30.0


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, options: UiOptions, *, allow_anonymous: bool) -> None:
    """Refuses to serve a non-loopback address without credentials, unless told to.

    Raises:
        ConfigurationError: ``host`` is reachable from other machines and nobody has to
            authenticate.
    """
    if not is_loopback(host) and not options.credentials.required and not allow_anonymous:
        raise ConfigurationError(
            "--host",
            f"{host} is reachable from other machines and the UI would show job payloads to "
            "anyone; pass --auth user:password or set CONVEYOR_UI_TOKEN (or --no-auth)",
        )


def _server(settings: Settings, options: UiOptions, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(settings, options),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
    return uvicorn.Server(config)


async def serve(settings: Settings, options: UiOptions, host: str, port: int) -> None:
    """Serves the UI until the process is interrupted."""
    await _server(settings, options, host, port).serve()


def free_port(host: str = DEFAULT_HOST, preferred: int = DEFAULT_PORT) -> int:
    """``preferred`` when it is free on ``host``, else a port the system picks."""
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            chosen: int = sock.getsockname()[1]
            return chosen
    raise OSError(f"no free port on {host}")


@contextlib.contextmanager
def serving(settings: Settings, options: UiOptions, host: str, port: int) -> Iterator[str]:
    """Serves the UI from a thread for the block; yields its URL once it answers.

    A thread of its own keeps the UI off the caller's event loop and out of its signal
    handling (uvicorn installs signal handlers only in the main thread).

    Raises:
        ConveyorError: The UI did not start (the port is taken, Postgres is down).
    """
    server = _server(settings, options, host, port)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve())
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name="conveyor-ui", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(STARTUP_TIMEOUT)
            reason = failure[0] if failure else "it did not answer in time"
            raise ConveyorError(f"the UI did not start on {host}:{port}: {reason}")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}/"
    finally:
        server.should_exit = True
        thread.join(STARTUP_TIMEOUT)
