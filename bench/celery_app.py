"""The Celery baseline: the same no-op task on Redis, with ``acks_late``.

Run as ``celery -A bench.celery_app worker``. ``BENCH_REDIS_URL`` names the Redis server and
``BENCH_CELERY_NAMESPACE`` a key prefix that keeps one run's queue, unacked set and
records apart from anything else in that Redis. The task's one durable write, the
counterpart of conveyor's status row, is an ``RPUSH`` of ``submitted,started,finished``
(Unix times) to ``<namespace>done``; counting that list is how a run knows it is done, and
the times give the latency percentiles. Results are not stored (``task_ignore_result``).
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery  # type: ignore[import-untyped]

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
NAMESPACE = os.environ.get("BENCH_CELERY_NAMESPACE", "bench:")
QUEUE = "bench"
DONE_KEY = "done"


def make_app(namespace: str, redis_url: str = REDIS_URL) -> Celery:
    """A Celery app on Redis whose keys all start with ``namespace``.

    The benchmark makes one per run to send tasks (by name, with ``send_task``); the worker
    uses the module's ``app``.
    """
    celery = Celery("bench", broker=redis_url)
    celery.conf.update(
        task_acks_late=True,
        task_ignore_result=True,
        task_default_queue=QUEUE,
        broker_transport_options={"global_keyprefix": namespace},
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    return celery


app = make_app(NAMESPACE)
_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    # One client per worker process, made after the fork.
    global _client  # noqa: PLW0603 - a per-process connection, created lazily
    if _client is None:
        _client = redis.Redis.from_url(REDIS_URL)
    return _client


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop(submitted: float, sleep_ms: float = 0.0) -> None:
    """Records when it was submitted, started and finished; sleeps ``sleep_ms`` if asked."""
    started = time.time()
    if sleep_ms:
        time.sleep(sleep_ms / 1000)
    _redis().rpush(NAMESPACE + DONE_KEY, f"{submitted},{started},{time.time()}")
