"""``conveyor worker --processes N``: N worker processes on one host, supervised.

One Python process runs one event loop on one core, so a host with spare cores runs
several. Each child is a plain ``conveyor worker APP`` joining the same consumer groups,
so Kafka spreads the partitions over them exactly as over pods; nothing is shared
between them but the broker and Postgres.

The parent only supervises:

- it starts the children, child ``i`` serving its probes on ``metrics_port + i`` (0 keeps
  every endpoint off), so each can be scraped, and, under static membership, as instance
  ``<CONVEYOR_WORKER_INSTANCE_ID>-i``, since two members of a group may not share one;
- SIGTERM or SIGINT is passed on as SIGTERM, so every child stops fetching, finishes or
  cuts off its jobs within its grace period, commits and leaves; a child still alive
  ``stop_timeout`` seconds later is killed; the exit code is 0 when every child exited 0;
- a child that dies after it ran for ``start_seconds`` (an OOM kill, a ``kill -9``) is
  started again after a second; one that dies sooner failed to start, and is started
  again with backoff (1, 2, 4 ... 30 s); after ``max_start_failures`` such failures in a
  row the supervisor stops the rest and exits 1, so a broken deployment never crash-loops.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType

log = logging.getLogger("conveyor.supervisor")

#: A child that lived less than this failed to start.
START_SECONDS = 10.0
#: Start failures in a row after which the supervisor gives up.
MAX_START_FAILURES = 3
#: The longest wait before a failed child is started again.
MAX_BACKOFF = 30.0
#: How long stopped children get to leave their groups before they are killed.
STOP_TIMEOUT = 90.0
#: How often the supervisor looks at its children.
POLL_INTERVAL = 0.2


@dataclasses.dataclass
class _Child:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # start failures in a row
    restart_at: float | None = None
    restarts: int = 0


class Supervisor:
    """Runs ``processes`` children and keeps them running until told to stop.

    Args:
        command: The command line of child ``i`` (0-based).
        environment: Variables child ``i`` gets on top of this process's environment.
        processes: How many children run at once.
        start_seconds: A child that exits sooner failed to start.
        max_start_failures: Start failures in a row (of any child) that end the run.
        stop_timeout: Seconds stopped children get before they are killed.
    """

    def __init__(
        self,
        command: Callable[[int], Sequence[str]],
        *,
        environment: Callable[[int], Mapping[str, str]] | None = None,
        processes: int,
        start_seconds: float = START_SECONDS,
        max_start_failures: int = MAX_START_FAILURES,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self._command = command
        self._environment = environment
        self._children = [_Child(i) for i in range(processes)]
        self._start_seconds = start_seconds
        self._max_start_failures = max_start_failures
        self._stop_timeout = stop_timeout
        self._stop = threading.Event()
        self._failures_in_a_row = 0

    def stop(self) -> None:
        """Asks every child to stop (what SIGTERM and SIGINT do)."""
        self._stop.set()

    @property
    def pids(self) -> list[int]:
        """The process ids of the children running now."""
        return [c.process.pid for c in self._children if c.process and c.process.poll() is None]

    def run(self) -> int:
        """Supervises until stopped or a child keeps failing to start; the exit code."""
        for child in self._children:
            self._start(child)
        while not self._stop.wait(POLL_INTERVAL):
            if not self._look_after_children():
                self._stop_children()
                return 1
        return self._stop_children()

    def run_with_signals(self) -> int:
        """``run()`` with SIGTERM and SIGINT turned into ``stop()``."""

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("supervisor: %s, stopping the worker processes", signal.strsignal(signum))
            self.stop()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start(self, child: _Child) -> None:
        extra = self._environment(child.index) if self._environment else {}
        env = {**os.environ, **extra} if extra else None
        child.process = subprocess.Popen(list(self._command(child.index)), env=env)
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info(
            "supervisor: worker process %d/%d started (pid %d)",
            child.index + 1,
            len(self._children),
            child.process.pid,
        )

    def _look_after_children(self) -> bool:
        """Starts again what died; False once start failures say to give up."""
        now = time.monotonic()
        for child in self._children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    self._start(child)
                continue
            if child.process is None or (code := child.process.poll()) is None:
                continue
            lived = now - child.started_at
            if lived < self._start_seconds:
                child.failures += 1
                self._failures_in_a_row += 1
                if self._failures_in_a_row >= self._max_start_failures:
                    log.error(
                        "supervisor: worker processes failed to start %d times in a row "
                        "(the last, process %d, exited %d after %.1f s); giving up",
                        self._failures_in_a_row,
                        child.index + 1,
                        code,
                        lived,
                    )
                    return False
                delay = min(MAX_BACKOFF, 2.0 ** (child.failures - 1))
            else:
                child.failures = 0
                self._failures_in_a_row = 0
                delay = 1.0
            log.warning(
                "supervisor: worker process %d (pid %d) exited %d after %.1f s; "
                "starting it again in %.0f s",
                child.index + 1,
                child.process.pid,
                code,
                lived,
                delay,
            )
            child.restart_at = now + delay
        return True

    def _stop_children(self) -> int:
        """SIGTERM to every child, SIGKILL to those left after the timeout; the exit code."""
        running = [c.process for c in self._children if c.process and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._stop_timeout
        codes: list[int] = []
        for process in running:
            try:
                codes.append(process.wait(max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                log.error("supervisor: pid %d did not stop in time; killing it", process.pid)
                process.kill()
                codes.append(process.wait())
        return 0 if all(code == 0 for code in codes) else 1
