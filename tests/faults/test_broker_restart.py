"""Scenario 3: the broker is SIGKILLed mid-run and restarted on the same data.

A producer submits jobs one at a time with ``wait=True`` throughout: each call returns
an acknowledged id or raises ``DeliveryError`` (counted; such a job may still have been
written, so it may or may not run, but never twice). Every acknowledged id must
complete, exactly once; the worker rides the outage out in the same process.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from conveyor import DeliveryError, Producer, Settings
from conveyor.embedded import kafka
from conveyor.producer.jobs import dedupe_job_id
from tests.faults.harness import (
    Effects,
    Figures,
    WorkerProcess,
    free_port,
    progress_after,
    wait_for,
    worker_env,
)
from tests.worker_helpers import prepare

JOBS = 1500
KILL_AFTER = 500  # acknowledged submissions before the kill
#: Shorter than a restart on a busy machine, so some submissions end in an error: both
#: outcomes of ``wait=True`` are exercised.
DELIVERY_TIMEOUT = 8.0


class Submitter:
    """Submits ``fault.effect`` jobs one by one with ``wait=True`` on a thread."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.acked: list[str] = []
        self.errors: list[str] = []
        self.errored: list[str] = []
        self._settings = settings
        self._count = count
        self.thread = threading.Thread(target=self._run, name="submitter", daemon=True)

    def reached(self, count: int) -> Callable[[], Awaitable[bool]]:
        """A check for ``wait_for``: ``count`` submissions were acknowledged."""

        async def check() -> bool:
            return len(self.acked) >= count

        return check

    def _run(self) -> None:
        with Producer(self._settings, delivery_timeout=DELIVERY_TIMEOUT) as producer:
            for n in range(self._count):
                # A dedupe key makes the id known even when the submit raises.
                dedupe = f"restart-{n}"
                try:
                    self.acked.append(
                        producer.submit("fault.effect", {"n": n}, dedupe_key=dedupe, wait=True)
                    )
                except DeliveryError as exc:
                    self.errors.append(str(exc))
                    self.errored.append(dedupe_job_id("fault.effect", dedupe))


@pytest.mark.timeout(420)
async def test_a_broker_killed_and_restarted_loses_no_acknowledged_job(
    settings: Settings,
    schema_registry_url: str,
    db: asyncpg.Connection[Any],
    tmp_path: Path,
    private_kafka: Callable[..., kafka.ApacheKafka],
) -> None:
    node = private_kafka()
    live = await prepare(
        settings.replace(kafka_bootstrap=node.bootstrap, partition_unit=1), schema_registry_url
    )
    effects = Effects(db, live.database_schema, tmp_path / "effects.log")
    await effects.create()
    worker = WorkerProcess(
        worker_env(live, effects.effects_file), tmp_path / "worker.log", metrics_port=free_port()
    )
    first_pid = worker.pid
    submitter = Submitter(live, JOBS)
    figures = Figures("broker kill -9 + restart", jobs=JOBS)
    try:
        submitter.thread.start()
        await wait_for(
            submitter.reached(KILL_AFTER), timeout=180, what="submissions before the kill"
        )
        await wait_for(
            effects.reached(1), timeout=120, what="the first completion", diagnose=worker.output
        )
        killed = time.monotonic()
        node.kill()
        figures.faults += 1
        await asyncio.to_thread(node.start)
        figures.extra["broker_down_s"] = round(time.monotonic() - killed, 1)
        figures.recovered(
            await progress_after(
                effects, timeout=180, what="progress after the restart", diagnose=worker.output
            )
        )
        await asyncio.to_thread(submitter.thread.join, 300)
        assert not submitter.thread.is_alive(), "the submitter never finished"

        await wait_for(
            effects.all_of(submitter.acked),
            timeout=240,
            what="every acknowledged job",
            diagnose=worker.output,
        )
        assert worker.alive, worker.output()
        assert worker.pid == first_pid
        status, checks = await worker.probe("/healthz")
        assert status == 200, checks
    finally:
        worker.stop()

    figures.jobs = len(submitter.acked)
    figures.extra["submitted"] = JOBS
    figures.extra["delivery_errors"] = len(submitter.errors)
    figures.extra["delivery_error_samples"] = sorted(set(submitter.errors))[:3]
    await effects.tally(submitter.acked, figures)
    unsure = Figures("errored submissions", jobs=len(submitter.errored))
    await effects.tally(submitter.errored, unsure)
    figures.extra["errored_that_ran"] = len(submitter.errored) - unsure.lost
    figures.extra["errored_duplicated"] = unsure.duplicated
    figures.emit()
    assert len(submitter.acked) + len(submitter.errors) == JOBS  # an ack or an error, always
    assert (figures.lost, figures.duplicated) == (0, 0)
    assert unsure.duplicated == 0  # an errored submission may have run, but only once
    assert figures.extra["external_missing"] == 0
