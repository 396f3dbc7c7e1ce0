"""The Celery baseline: the same no-op task on Redis, with ``acks_late``.

Run as ``celery -A bench.celery_app worker``. ``BENCH_REDIS_URL`` names the Redis server and
``BENCH_CELERY_NAMESPACE`` a key prefix that keeps one run's queue, unacked set and
records apart from anything else in that Redis. The task's one durable write is the
completion record of ``bench.redisrecord``. Results are not stored (``task_ignore_result``).
"""

from __future__ import annotations

import os
import time

from celery import Celery  # type: ignore[import-untyped]

from bench.redisrecord import Recorder

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
NAMESPACE = os.environ.get("BENCH_CELERY_NAMESPACE", "bench:")
QUEUE = "bench"


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
_recorder = Recorder(NAMESPACE)


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop(submitted: float, sleep_ms: float = 0.0) -> None:
    """Records when it was submitted, started and finished; sleeps ``sleep_ms`` if asked."""
    started = time.time()
    if sleep_ms:
        time.sleep(sleep_ms / 1000)
    _recorder.record(submitted, started)
