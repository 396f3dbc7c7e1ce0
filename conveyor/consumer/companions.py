"""What runs beside a worker's jobs: the retry relay, the DLQ sink, the scheduler and
the ledger (each can also run on its own: ``conveyor relay``, ``dlq-sink``,
``scheduler``, ``ledger``), how they start together with the job consumers, and the
freeze of start-up's objects once all of it runs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from conveyor.consumer.dlq_sink import DlqSink
from conveyor.consumer.options import WorkerOptions
from conveyor.consumer.relay import RelayOptions, RetryRelay
from conveyor.consumer.runtime import ConsumerLoop
from conveyor.ledger import Ledger, LedgerProcess
from conveyor.ledger.service import DEFAULT_FETCH_MAX_WAIT_MS as LEDGER_FETCH_MAX_WAIT_MS
from conveyor.observability.metrics import WorkerMetrics
from conveyor.scheduling.service import Scheduler
from conveyor.schemas.serde import Serde
from conveyor.settings import Settings

#: A helper that runs beside the jobs: started with the consumers, run until the stop.
Companion = RetryRelay | DlqSink | Scheduler | Ledger | LedgerProcess

#: How liveness names each companion.
_NAMES = {
    "RetryRelay": "retry relay",
    "DlqSink": "DLQ sink",
    "Scheduler": "scheduler",
    "Ledger": "ledger",
    "LedgerProcess": "ledger",
}


def helper_name(companion: Companion) -> str:
    """The companion's name in liveness reports ("the ledger stopped: ...")."""
    name = type(companion).__name__
    return _NAMES.get(name, name)


def build_companions(
    settings: Settings,
    options: WorkerOptions,
    pool: Any,
    serde: Serde,
    metrics: WorkerMetrics,
) -> list[Companion]:
    """The companions ``options`` asks for, not started.

    Args:
        settings: The worker's settings.
        options: Which companions run (``run_relay``, ``run_dlq_sink``, ``run_scheduler``,
            ``run_ledger``, ``ledger_process``) and their Kafka timings.
        pool: The worker's pool (the DLQ sink's and the scheduler's transactions).
        serde: The worker's registry client and codecs.
        metrics: Where the scheduler's metrics go.
    """
    companions: list[Companion] = []
    if options.run_relay:
        relay_options = RelayOptions(
            session_timeout_ms=options.session_timeout_ms,
            heartbeat_interval_ms=options.heartbeat_interval_ms,
        )
        companions.append(RetryRelay(settings, serde=serde, options=relay_options))
    if options.run_dlq_sink:
        companions.append(
            DlqSink(
                settings,
                pool=pool,
                serde=serde,
                session_timeout_ms=options.session_timeout_ms,
                heartbeat_interval_ms=options.heartbeat_interval_ms,
            )
        )
    if options.run_scheduler:
        companions.append(
            Scheduler(
                settings,
                pool=pool,
                serde=serde,
                metrics=metrics,
                session_timeout_ms=options.session_timeout_ms,
                heartbeat_interval_ms=options.heartbeat_interval_ms,
            )
        )
    if options.run_ledger:
        companions.append(_ledger(settings, options, serde))
    return companions


def _ledger(settings: Settings, options: WorkerOptions, serde: Serde) -> Ledger | LedgerProcess:
    # It waits for a batch (ledger.service.DEFAULT_FETCH_MIN_BYTES), so at most its own
    # wait: a worker's longer one would delay visibility.
    fetch_max_wait_ms = min(options.fetch_max_wait_ms, LEDGER_FETCH_MAX_WAIT_MS)
    if options.ledger_process:  # off the worker's event loop and core
        return LedgerProcess(
            settings,
            session_timeout_ms=options.session_timeout_ms,
            heartbeat_interval_ms=options.heartbeat_interval_ms,
            fetch_max_wait_ms=fetch_max_wait_ms,
        )
    # Its own connection: jobs hold the pool's in their transactions.
    return Ledger(
        settings,
        serde=serde,
        session_timeout_ms=options.session_timeout_ms,
        heartbeat_interval_ms=options.heartbeat_interval_ms,
        fetch_max_wait_ms=fetch_max_wait_ms,
    )


async def start_all(loop: ConsumerLoop, companions: Sequence[Companion]) -> None:
    """Starts the consumers and the companions together; a failure stops them all.

    Each start waits for a group join, so they start at once rather than one after
    another. If one fails, those that started are stopped before the error is raised,
    so no consumer is left open (and no "Unclosed AIOKafkaConsumer" is logged).
    """
    results = await asyncio.gather(
        loop.start(), *(c.start() for c in companions), return_exceptions=True
    )
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    if failure is None:
        return
    await loop.close()
    stopped = asyncio.Event()
    stopped.set()
    for companion, result in zip(companions, results[1:], strict=True):
        if result is None:  # started: running it with the stop already set closes it
            with contextlib.suppress(Exception):
                await companion.run(stopped)
    raise failure


__all__ = ["Companion", "build_companions", "helper_name", "start_all"]
