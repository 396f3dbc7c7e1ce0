"""Driving the Dramatiq baseline: enqueue through a Redis broker, run ``dramatiq``."""

from __future__ import annotations

import time
from collections.abc import Sequence

import dramatiq

from bench import dramatiq_app
from bench.procs import python
from bench.redisrun import RedisRun

THREADS = 8
"""Worker threads per process: Dramatiq's default."""


class DramatiqRun(RedisRun):
    """Dramatiq on one Redis namespace: ``concurrency`` processes of ``THREADS`` threads.

    Args:
        concurrency: The worker's processes (default: the CPU count).
    """

    def __init__(self, *, concurrency: int | None = None) -> None:
        super().__init__("dramatiq", concurrency=concurrency)
        self.pool = f"{self.concurrency} processes x {THREADS} threads"
        self._broker = dramatiq_app.make_broker(self.namespace, self.url)

    def send(self, sleep_ms: float = 0.0) -> None:
        """Enqueues one ``bench_noop`` message stamped with the time now."""
        message: dramatiq.Message[None] = dramatiq.Message(
            queue_name=dramatiq_app.QUEUE,
            actor_name=dramatiq_app.ACTOR,
            args=(time.time(), sleep_ms),
            kwargs={},
            options={},
        )
        self._broker.enqueue(message)

    def worker_argv(self) -> Sequence[str]:
        """``dramatiq bench.dramatiq_app`` with ``concurrency`` processes."""
        return python(
            "-m",
            "dramatiq",
            "bench.dramatiq_app",
            "--processes",
            str(self.concurrency),
            "--threads",
            str(THREADS),
            "--skip-logging",
        )

    def worker_env(self) -> dict[str, str]:
        """Redis and the namespace."""
        return {**super().worker_env(), "BENCH_DRAMATIQ_NAMESPACE": self.namespace}

    def close(self) -> None:
        """Deletes the namespace's keys and closes the broker."""
        super().close()
        self._broker.close()
