"""The Dramatiq baseline: the same no-op task on Redis.

Run as ``dramatiq bench.dramatiq_app``. ``BENCH_REDIS_URL`` names the Redis server and
``BENCH_DRAMATIQ_NAMESPACE`` a key prefix (``bench-…:``) that keeps one run's queues and
records apart. Dramatiq acknowledges a message after its actor returns (at least once,
like Celery's ``acks_late``). The actor's one durable write is the completion record of
``bench.redisrecord``, as for Celery; no result backend is configured.
"""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.redisrecord import Recorder

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
NAMESPACE = os.environ.get("BENCH_DRAMATIQ_NAMESPACE", "bench:")
QUEUE = "bench"
ACTOR = "bench_noop"


def make_broker(namespace: str, redis_url: str = REDIS_URL) -> RedisBroker:
    """A Redis broker whose keys all start with ``namespace``, with the queue declared."""
    broker = RedisBroker(url=redis_url, namespace=namespace.rstrip(":"))  # type: ignore[no-untyped-call]
    broker.declare_queue(QUEUE)
    return broker


broker = make_broker(NAMESPACE)
dramatiq.set_broker(broker)
_recorder = Recorder(NAMESPACE)


@dramatiq.actor(actor_name=ACTOR, queue_name=QUEUE, max_retries=0)
def noop(submitted: float, sleep_ms: float = 0.0) -> None:
    """Records when it was submitted, started and finished; sleeps ``sleep_ms`` if asked."""
    started = time.time()
    if sleep_ms:
        time.sleep(sleep_ms / 1000)
    _recorder.record(submitted, started)
