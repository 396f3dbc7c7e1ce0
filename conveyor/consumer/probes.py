"""What a running worker reports about itself: liveness, readiness and the DLQ size.

The probes are called from the HTTP thread; they reach the worker's event loop with
``run_coroutine_threadsafe`` and a deadline, so a stuck loop fails ``/healthz``
instead of hanging it.

- liveness (``/healthz``): the event loop runs a no-op within ``LOOP_TIMEOUT``, no
  fetch, dispatch or commit loop has died, and the retry/DLQ publisher has not hit a
  fatal producer error;
- readiness (``/readyz``): live, not stopping, every priority's consumer has joined its
  group (an empty assignment counts: a group can have more members than partitions),
  the broker answers a request within ``BROKER_TIMEOUT`` (a joined group does not notice
  a broker gone until its session ends), and Postgres answers ``SELECT 1`` within
  ``DATABASE_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg

from conveyor.consumer.runtime import ConsumerLoop
from conveyor.observability.metrics import WorkerMetrics

log = logging.getLogger("conveyor.worker")

LOOP_TIMEOUT = 5.0
DATABASE_TIMEOUT = 2.0
BROKER_TIMEOUT = 3.0

_DLQ_PENDING = "SELECT count(*) FROM job_dlq WHERE replayed_at IS NULL"


class WorkerProbes:
    """Liveness and readiness checks, and the DLQ-size gauge.

    Args:
        loop: The worker's event loop.
        consumer: The worker's consumer loop.
        pool: The worker's Postgres pool.
        metrics: Where the gauges go.
        stopping: Whether the worker was asked to stop.
        helpers: Why a helper task has ended, or None while all run.
        publisher: Why the retry/DLQ publisher can send no more, or None while it can.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        consumer: ConsumerLoop,
        pool: asyncpg.Pool[Any],
        metrics: WorkerMetrics,
        stopping: Callable[[], bool],
        *,
        helpers: Callable[[], str | None] = lambda: None,
        publisher: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._loop = loop
        self._consumer = consumer
        self._pool = pool
        self._metrics = metrics
        self._stopping = stopping
        self._helpers = helpers
        self._publisher = publisher

    def health(self) -> dict[str, str | None]:
        """The liveness checks: ``event_loop``, ``consumers``, ``helpers`` (the control
        listener, retry relay and DLQ sink beside the jobs) and ``publisher``."""
        return {
            "event_loop": self._on_loop(asyncio.sleep(0), LOOP_TIMEOUT),
            "consumers": None if self._consumer.alive else "a consumer loop has stopped",
            "helpers": self._helpers(),
            "publisher": self._publisher(),
        }

    def ready(self) -> dict[str, str | None]:
        """The readiness checks: liveness, ``stopping``, ``consumer_groups``, ``broker``,
        ``database``, ``job_store`` (outcomes are being recorded) and ``schema_registry``
        (no partition waits for the registry to decode a message)."""
        checks = self.health()
        checks["stopping"] = "the worker is shutting down" if self._stopping() else None
        checks["consumer_groups"] = (
            None if self._consumer.joined else "not every consumer has joined its group yet"
        )
        checks["broker"] = self._on_loop(self._consumer.reach_broker(), BROKER_TIMEOUT)
        checks["database"] = self._on_loop(
            self._pool.fetchval("SELECT 1", timeout=DATABASE_TIMEOUT), DATABASE_TIMEOUT + 1
        )
        checks["job_store"] = self._consumer.record_problem
        checks["schema_registry"] = self._consumer.registry_problem
        return checks

    def _on_loop(self, coro: Coroutine[Any, Any, Any], timeout: float) -> str | None:
        """Runs ``coro`` on the worker's loop; None if it finished in time, else why not."""
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError as exc:  # the loop is closed
            coro.close()
            return str(exc)
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return f"no answer within {timeout:.0f}s"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    async def refresh_dlq_size(self, interval: float) -> None:
        """Sets the DLQ-size gauge every ``interval`` seconds, until cancelled.

        (The consumer loop measures its own lag: it must stop before its consumers do.)
        """
        while True:
            try:
                pending = await self._pool.fetchval(_DLQ_PENDING, timeout=DATABASE_TIMEOUT)
            except Exception as exc:  # an outage keeps the last value until the next round
                log.warning("could not count the pending DLQ rows: %s", exc)
            else:
                self._metrics.dlq_pending.set(pending)
            await asyncio.sleep(interval)
