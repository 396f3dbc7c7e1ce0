"""Driving the Celery baseline: enqueue, run its worker, read its records, clean up.

Every run gets a random key namespace in Redis, so runs never see each other's tasks,
and every key of the namespace is deleted afterwards.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import redis

from bench import celery_app, jobs
from bench.procs import Child, python


def redis_url() -> str:
    """The Redis of this run: ``BENCH_REDIS_URL``, which ``bench.stack`` sets to the server it
    started when the environment named none."""
    return os.environ.get("BENCH_REDIS_URL", "")


def unavailable(url: str | None = None) -> str | None:
    """Why Redis cannot be used, or None when it answers a PING."""
    url = url or redis_url()
    if not url:
        return "no Redis: set BENCH_REDIS_URL or install redis-server"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        return f"Redis at {url} is unreachable ({exc})"
    return None


class CeleryRun:
    """One namespace in Redis: tasks sent there, a worker serving it, its records.

    Args:
        concurrency: The worker's prefork processes (Celery's default is the CPU count).
    """

    def __init__(self, *, concurrency: int | None = None) -> None:
        self.namespace = f"bench-{uuid.uuid4().hex[:10]}:"
        self.concurrency = concurrency or os.cpu_count() or 1
        self._url = redis_url()
        self._redis = redis.Redis.from_url(self._url)
        self._app: Any = celery_app.make_app(self.namespace, self._url)
        self._producer: Any = None

    def send(self, sleep_ms: float = 0.0) -> None:
        """Enqueues one ``bench.noop`` task stamped with the time now."""
        if self._producer is None:
            self._producer = self._app.producer_pool.acquire(block=True)
        self._app.send_task("bench.noop", args=(time.time(), sleep_ms), producer=self._producer)

    def preload(self, count: int) -> float:
        """Enqueues ``count`` tasks; returns tasks per second."""
        started = time.monotonic()
        for _ in range(count):
            self.send()
        return count / (time.monotonic() - started)

    @contextlib.contextmanager
    def worker(self) -> Iterator[Child]:
        """Runs ``celery -A bench.celery_app worker`` (prefork, acks_late) for the block."""
        argv = python(
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
        env = {"BENCH_REDIS_URL": self._url, "BENCH_CELERY_NAMESPACE": self.namespace}
        child = Child(argv, env=env, name="celery worker")
        try:
            yield child
        finally:
            child.stop()

    async def done(self) -> int:
        """Tasks that have finished."""
        return int(self._redis.llen(self.namespace + celery_app.DONE_KEY))

    async def wait_done(self, count: int, *, alive: Callable[[], None], timeout: float) -> None:
        """Waits until ``count`` tasks have finished; ``alive`` raises if the worker died."""

        async def check() -> bool:
            alive()
            return await self.done() >= count

        await jobs.wait_for(check, timeout=timeout, what=f"{count} finished Celery tasks")

    def records(self) -> list[tuple[float, float, float]]:
        """``(submitted, started, finished)`` Unix times of every finished task."""
        raw = self._redis.lrange(self.namespace + celery_app.DONE_KEY, 0, -1)
        rows = []
        for item in raw:
            text = item.decode() if isinstance(item, bytes) else str(item)
            submitted, started, finished = (float(x) for x in text.split(","))
            rows.append((submitted, started, finished))
        return rows

    def span_rate(self) -> float:
        """Tasks per second from the first start to the last finish."""
        rows = self.records()
        seconds = max(r[2] for r in rows) - min(r[1] for r in rows)
        return len(rows) / seconds if seconds > 0 else 0.0

    def reset(self) -> None:
        """Forgets the finished tasks' records (between two measurements)."""
        self._redis.delete(self.namespace + celery_app.DONE_KEY)

    def close(self) -> None:
        """Deletes every key of the namespace and closes the clients."""
        if self._producer is not None:
            self._producer.release()
        for key in self._redis.scan_iter(match=self.namespace + "*", count=1000):
            self._redis.delete(key)
        self._redis.close()
        self._app.close()
