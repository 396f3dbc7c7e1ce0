"""A Redis server from Debian's ``redis-server`` on a free loopback port, for the benchmarks.

Celery and Dramatiq, the contenders the benchmarks compare conveyor with, run on Redis.
No Redis is assumed at 127.0.0.1:6379: the benchmark starts this one when the environment
names none, with an append-only file synced every second.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

from conveyor.embedded.process import ChildService, die_with_parent, free_port, halt
from conveyor.errors import ConfigurationError, ServiceUnavailableError

REDIS_START_TIMEOUT = 20.0


def unavailable() -> str | None:
    """Why a Redis server cannot be started here, or None."""
    if shutil.which("redis-server") is None:
        return "redis-server is not on the PATH (Debian: apt-get install redis-server)"
    return None


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(ChildService):
    """One ``redis-server`` child on a free port; a context manager."""

    def __init__(self) -> None:
        self.port = free_port()
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _options(self) -> list[str]:
        assert self._dir is not None
        # An append-only file synced every second, as a production Redis behind Celery or
        # Dramatiq commonly runs: their completion records are then about as durable as a
        # queue on Redis gets, and the comparison with conveyor's durable status is fair.
        return [
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--dir",
            self._dir.name,
        ]

    def start(self, timeout: float = REDIS_START_TIMEOUT) -> None:
        """Starts the server and returns once it answers PING.

        Raises:
            ConfigurationError: ``redis-server`` is missing.
            ServiceUnavailableError: It did not answer within ``timeout``.
        """
        reason = unavailable()
        if reason is not None:
            raise ConfigurationError("redis", reason)
        self._dir = tempfile.TemporaryDirectory(prefix="conveyor-redis-")
        self._process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", *self._options()],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - no threads are started before exec
            process_group=0,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._process.poll() is None:
            if _answers(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise ServiceUnavailableError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        """Stops the server and removes its directory."""
        process, self._process = self._process, None
        halt(process)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
