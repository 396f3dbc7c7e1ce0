"""The worker's ledger in a child process of its own (``WorkerOptions.ledger_process``).

Inside the worker's event loop the ledger decoded and inserted every fetch between two
jobs' steps: up to 2,000 envelopes at a time, a pause for every job waiting to start,
and its CPU came out of the worker's one core. In a child it runs beside the worker on
another core, and the worker's loop only runs jobs.

:class:`LedgerProcess` is the worker's companion: ``start`` launches ``python -m
conveyor.ledger`` (this module's :func:`main`) with this interpreter, hands it the
settings and the ledger's options (pickled, on its stdin) and returns once the child
has joined its consumer group, or raises what stopped it; ``run`` waits for the worker's
stop, then sends SIGTERM, so the ledger commits and leaves, and kills a child still
there after ``stop_timeout``. A child that exits on its own ends ``run`` with
:class:`LedgerExitedError`: the worker's liveness then fails, as for any helper that
stopped. The child stops by itself when its stdin closes, so a worker killed with
``kill -9`` leaves no ledger behind.
SIGINT is the worker's to handle. The child runs in a process group of its own, so a
Ctrl-C in a terminal (which goes to the foreground group) reaches only the worker, even
while the child is still importing, and the child waits for the worker's SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import sys
from typing import Any

from conveyor import gctuning
from conveyor.errors import ConveyorError
from conveyor.ledger.service import Ledger
from conveyor.observability import logs
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings

log = logging.getLogger("conveyor.ledger")

#: The line the child prints once it joined its group.
STARTED = b"conveyor-ledger-started\n"
#: How long a stopped child may take to commit and leave before it is killed.
STOP_TIMEOUT = 30.0


class LedgerExitedError(ConveyorError):
    """The ledger's child process ended without being asked to (its log says why)."""

    def __init__(self, returncode: int | None) -> None:
        super().__init__(f"the ledger process exited with code {returncode}")
        self.returncode = returncode


class LedgerProcess:
    """Runs the ledger in a child process for as long as the worker runs.

    Args:
        settings: The worker's settings (the child uses the same).
        log_level: The child's logging level (the worker's root logger's, by default).
        stop_timeout: Seconds a stopped child gets before it is killed.
        **ledger_options: Passed to :class:`conveyor.ledger.Ledger` in the child
            (``session_timeout_ms``, ``heartbeat_interval_ms``, ``fetch_max_wait_ms``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        log_level: int | None = None,
        stop_timeout: float = STOP_TIMEOUT,
        **ledger_options: Any,
    ) -> None:
        self._settings = settings
        level = log_level if log_level is not None else logging.getLogger().getEffectiveLevel()
        self._log_level = logging.getLevelName(level)
        self._stop_timeout = stop_timeout
        self._options = ledger_options
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Starts the child and waits until its ledger joined the group.

        Raises:
            LedgerExitedError: The child could not start its ledger (its log says why:
                Postgres or the broker cannot be reached, for instance).
        """
        # A Ctrl-C in the instant between the fork and the child's move to a group of
        # its own would still kill it: SIGINT stays blocked across the spawn, and so
        # blocked in the child for good (the worker's own is delivered after it).
        unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "conveyor.ledger",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                process_group=0,  # out of the terminal's group: Ctrl-C is the worker's
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
        self._process = process
        assert process.stdin is not None
        assert process.stdout is not None
        config = {"settings": self._settings, "level": self._log_level, **self._options}
        process.stdin.write(pickle.dumps(config))
        await process.stdin.drain()  # stdin stays open: its end tells the child to stop
        while (line := await process.stdout.readline()) != STARTED:
            if not line:  # the end of its output: the child ended
                await process.wait()
                raise LedgerExitedError(process.returncode)
        log.info("ledger running in process %d", process.pid)

    async def run(self, stop: asyncio.Event) -> None:
        """Waits for ``stop``, then stops the child.

        Raises:
            LedgerExitedError: The child ended while the worker runs.
        """
        process = self._process
        if process is None:
            raise RuntimeError("call LedgerProcess.start() before run()")
        stopping = asyncio.ensure_future(stop.wait())
        exited = asyncio.ensure_future(process.wait())
        try:
            await asyncio.wait({stopping, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not exited.done():
                await self._stop(process)
            exited.cancel()
        if not stop.is_set():
            raise LedgerExitedError(process.returncode)

    async def _stop(self, process: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), self._stop_timeout)
        except TimeoutError:
            log.warning("the ledger process %d did not stop in time; killed", process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def main() -> int:
    """The child: reads its configuration from stdin, runs a ledger until told to stop."""
    config = pickle.load(sys.stdin.buffer)  # written by our own parent
    settings: Settings = config.pop("settings")
    level = config.pop("level")
    logs.configure_logging(level, json_lines=settings.log_json)
    return asyncio.run(_serve(settings, config))


async def _serve(settings: Settings, options: dict[str, Any]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    parent = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(parent), sys.stdin)

    async def watch_parent() -> None:
        await parent.read()  # returns at EOF: the worker closed it, or died
        stop.set()

    watch = asyncio.create_task(watch_parent())
    with Serde(settings) as serde:
        ledger = Ledger(settings, serde=serde, **options)
        try:
            await ledger.start()
        except Exception:
            log.exception("the ledger could not start")
            return 1
        os.write(sys.stdout.fileno(), STARTED)
        # Nobody reads this pipe from now on: anything printed goes to the log instead
        # of filling it and blocking the child.
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        with gctuning.tuned(settings.gc_threshold):
            await ledger.run(stop)
    watch.cancel()
    return 0
