"""Starting conveyor's worker and the two raw-loop ceilings as child processes."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench import stack
from bench.procs import Child, python
from conveyor import embedded
from conveyor.settings import Settings


@contextlib.contextmanager
def conveyor_worker(
    settings: Settings, *, priorities: Sequence[str], concurrency: int, processes: int = 1
) -> Iterator[Child]:
    """Runs ``conveyor worker bench.apps:worker`` on a scenario's workspace for the block.

    ``processes`` above 1 runs ``--processes N``: a supervisor and N worker processes
    (each with its own ledger child), all in the returned child's process tree.
    """
    argv = python(
        "-m",
        "conveyor",
        "worker",
        "bench.apps:worker",
        "--priorities",
        ",".join(priorities),
        "--concurrency",
        str(concurrency),
        "--log-level",
        "WARNING",
    )
    if processes > 1:
        argv += ["--processes", str(processes)]
    env = {
        **stack.worker_env(settings),
        # The worker serves /metrics and probes; a free port keeps it off other workers'.
        "CONVEYOR_METRICS_PORT": str(embedded.free_port()),
        "BENCH_SESSION_TIMEOUT_MS": str(stack.SESSION_TIMEOUT_MS),
        "BENCH_HEARTBEAT_MS": str(stack.HEARTBEAT_INTERVAL_MS),
    }
    child = Child(argv, env=env, name="conveyor worker")
    try:
        yield child
    finally:
        child.stop()


@contextlib.contextmanager
def conveyor_ledger(settings: Settings) -> Iterator[Child]:
    """Runs ``conveyor ledger`` (the ledger alone, no worker) on a workspace for the block."""
    argv = python("-m", "conveyor", "ledger", "--log-level", "WARNING")
    child = Child(argv, env=stack.worker_env(settings), name="conveyor ledger")
    try:
        yield child
    finally:
        child.stop()


class RawLoop:
    """The bare consume-and-commit loop (``bench.rawloop``) over one topic, in a child."""

    def __init__(self, settings: Settings, *, topic: str, count: int) -> None:
        self._settings = settings
        self._topic = topic
        self._count = count
        self._dir = tempfile.TemporaryDirectory(prefix="bench-raw-")
        self._status = Path(self._dir.name) / "status.json"

    @contextlib.contextmanager
    def running(self) -> Iterator[Child]:
        """Runs the loop for the block (it exits by itself after ``count`` records)."""
        argv = python(
            "-m",
            "bench.rawloop",
            "--topic",
            self._topic,
            "--group",
            f"{self._settings.topic_prefix}.bench-raw",
            "--count",
            str(self._count),
            "--status",
            str(self._status),
        )
        child = Child(argv, env=stack.worker_env(self._settings), name="raw loop")
        try:
            yield child
        finally:
            child.stop()
            self._dir.cleanup()

    def _read(self) -> dict[str, float]:
        try:
            status: dict[str, float] = json.loads(self._status.read_text())
        except FileNotFoundError:
            return {"count": 0, "first": 0.0, "last": 0.0, "first_batch": 0}
        return status

    async def done(self) -> int:
        """Records consumed and committed so far."""
        return int(self._read()["count"])

    def span_rate(self) -> float:
        """Records per second from the first batch's commit to the last commit.

        The records of the first batch were read before that first commit, so they are
        left out. A run that fit in one batch has no rate (0.0).
        """
        status = self._read()
        seconds = status["last"] - status["first"]
        jobs = status["count"] - status["first_batch"]
        return jobs / seconds if seconds > 0 else 0.0


@contextlib.contextmanager
def raw_durable(settings: Settings, *, topic: str, count: int) -> Iterator[Child]:
    """Runs ``bench.rawdurable`` over ``topic`` for the block, writing to ``settings``' schema.

    It exits its loop by itself after ``count`` records; its progress is the count of
    complete jobs in that schema (``bench.jobs.count_complete``), as for conveyor.
    """
    argv = python(
        "-m",
        "bench.rawdurable",
        "--topic",
        topic,
        "--group",
        f"{settings.topic_prefix}.bench-raw-durable",
        "--count",
        str(count),
    )
    child = Child(argv, env=stack.worker_env(settings), name="raw durable loop")
    try:
        yield child
    finally:
        child.stop()
