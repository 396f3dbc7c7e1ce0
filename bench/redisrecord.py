"""The durable completion record of the Redis baselines (Celery and Dramatiq).

Each baseline's no-op task ends with one write, the counterpart of conveyor's status
row: an ``RPUSH`` of ``submitted,started,finished`` (Unix times) to ``<namespace>done``.
Counting that list is how a run knows it is done, and its times give the latency
percentiles. ``BENCH_REDIS_URL`` names the Redis server.
"""

from __future__ import annotations

import os
import time

import redis

DONE_KEY = "done"


class Recorder:
    """Appends completion records to one namespace's list; connects on first use.

    The connection is made lazily, so a prefork worker makes its own after the fork.

    Args:
        namespace: The key prefix of the run.
    """

    def __init__(self, namespace: str) -> None:
        self._key = namespace + DONE_KEY
        self._client: redis.Redis | None = None

    def record(self, submitted: float, started: float) -> None:
        """Appends ``submitted,started,now``."""
        if self._client is None:
            url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
            self._client = redis.Redis.from_url(url)
        self._client.rpush(self._key, f"{submitted},{started},{time.time()}")
