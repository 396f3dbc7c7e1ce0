"""The conveyor worker the benchmarks run: ``conveyor worker bench.apps:worker``.

Settings come from ``CONVEYOR_*`` variables as for any worker; the benchmark's own knobs
from ``BENCH_*`` variables:

- ``BENCH_SESSION_TIMEOUT_MS`` / ``BENCH_HEARTBEAT_MS``: Kafka group timeouts (kept short
  so a scenario's group settles quickly).
- ``BENCH_FETCH_MAX_WAIT_MS``: how long the broker may hold an empty fetch; unset, the
  worker's default. Apache Kafka answers a held fetch as soon as a record arrives; Tansu
  holds it for the whole wait, which would add up to that wait to every job's latency, so
  ``python -m bench`` sets 20 ms when it runs on Tansu and nothing on Apache Kafka.
- ``BENCH_COMPANIONS``: ``1`` to also run the retry relay, the DLQ sink and the purge
  schedule beside the jobs; ``0`` (default) leaves them out, as the throughput figures
  are about the job path.
- ``BENCH_LEDGER``: ``1`` (default) runs the ledger (in its child process), as a worker does by
  default, so every figure includes its cost (its queued rows, and claims that update
  them); ``0`` turns it off, to measure that cost.

Handlers: ``bench.noop`` does nothing; ``bench.sleep`` awaits ``payload["ms"]``
milliseconds, a stand-in for I/O-bound work.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from conveyor import JobContext, Settings, Worker, WorkerOptions


def _options() -> WorkerOptions:
    companions = os.environ.get("BENCH_COMPANIONS", "0") == "1"
    fetch_wait = os.environ.get("BENCH_FETCH_MAX_WAIT_MS")
    return WorkerOptions(
        session_timeout_ms=int(os.environ.get("BENCH_SESSION_TIMEOUT_MS", "6000")),
        heartbeat_interval_ms=int(os.environ.get("BENCH_HEARTBEAT_MS", "1000")),
        shutdown_grace=5.0,
        fetch_max_wait_ms=int(fetch_wait) if fetch_wait else DEFAULTS.fetch_max_wait_ms,
        run_relay=companions,
        run_dlq_sink=companions,
        purge_interval=3600.0 if companions else None,
        run_ledger=os.environ.get("BENCH_LEDGER", "1") == "1",
    )


DEFAULTS = WorkerOptions()
worker = Worker(Settings.from_env(), options=_options())


@worker.handler("bench.noop")
async def noop(ctx: JobContext, payload: Any) -> None:
    """Does nothing: the cost measured is the worker's own."""


@worker.handler("bench.sleep")
async def sleep(ctx: JobContext, payload: Any) -> None:
    """Awaits ``payload["ms"]`` milliseconds, like a handler waiting on I/O."""
    await asyncio.sleep(float(payload["ms"]) / 1000)
