"""Driving the Celery baseline: enqueue by name, run ``celery worker`` (prefork)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from bench import celery_app
from bench.procs import python
from bench.redisrun import RedisRun


class CeleryRun(RedisRun):
    """Celery on one Redis namespace, with ``acks_late`` and a prefork pool.

    Args:
        concurrency: The worker's prefork processes (Celery's default is the CPU count).
    """

    def __init__(self, *, concurrency: int | None = None) -> None:
        super().__init__("celery", concurrency=concurrency)
        self.pool = f"prefork x{self.concurrency}"
        self._app: Any = celery_app.make_app(self.namespace, self.url)
        self._producer: Any = None

    def send(self, sleep_ms: float = 0.0) -> None:
        """Enqueues one ``bench.noop`` task stamped with the time now."""
        if self._producer is None:
            self._producer = self._app.producer_pool.acquire(block=True)
        self._app.send_task("bench.noop", args=(time.time(), sleep_ms), producer=self._producer)

    def worker_argv(self) -> Sequence[str]:
        """``celery -A bench.celery_app worker``, prefork, without gossip or mingle."""
        return python(
            "-m",
            "celery",
            "-A",
            "bench.celery_app",
            "worker",
            "--loglevel=WARNING",
            f"--concurrency={self.concurrency}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        )

    def worker_env(self) -> dict[str, str]:
        """Redis and the namespace."""
        return {**super().worker_env(), "BENCH_CELERY_NAMESPACE": self.namespace}

    def close(self) -> None:
        """Releases the producer, deletes the namespace's keys, closes the clients."""
        if self._producer is not None:
            self._producer.release()
        super().close()
        self._app.close()
