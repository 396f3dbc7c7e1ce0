"""The conveyor worker the benchmarks run: ``conveyor worker bench.apps:worker``.

Settings come from ``CONVEYOR_*`` variables as for any worker; the benchmark's own knobs
from ``BENCH_*`` variables:

- ``BENCH_SESSION_TIMEOUT_MS`` / ``BENCH_HEARTBEAT_MS``: Kafka group timeouts (Tansu makes
  a first join wait half the session timeout, so the benchmarks keep it short).
- ``BENCH_FETCH_MAX_WAIT_MS``: how long the broker may hold an empty fetch (default 20).
  Kafka answers a held fetch as soon as a record arrives; Tansu holds it for the whole
  wait, which would add up to that wait to every job's latency. 20 ms stands in for
  Kafka's behaviour; on a real Kafka, leave the worker's default (500).
- ``BENCH_COMPANIONS``: ``1`` to also run the retry relay, the DLQ sink and the purge
  schedule beside the jobs; ``0`` (default) runs the jobs alone, as the throughput
  figures are about the job path.

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
    return WorkerOptions(
        session_timeout_ms=int(os.environ.get("BENCH_SESSION_TIMEOUT_MS", "6000")),
        heartbeat_interval_ms=int(os.environ.get("BENCH_HEARTBEAT_MS", "1000")),
        shutdown_grace=5.0,
        fetch_max_wait_ms=int(os.environ.get("BENCH_FETCH_MAX_WAIT_MS", "20")),
        run_relay=companions,
        run_dlq_sink=companions,
        purge_interval=3600.0 if companions else None,
    )


worker = Worker(Settings.from_env(), options=_options())


@worker.handler("bench.noop")
async def noop(ctx: JobContext, payload: Any) -> None:
    """Does nothing: the cost measured is the worker's own."""


@worker.handler("bench.sleep")
async def sleep(ctx: JobContext, payload: Any) -> None:
    """Awaits ``payload["ms"]`` milliseconds, like a handler waiting on I/O."""
    await asyncio.sleep(float(payload["ms"]) / 1000)
