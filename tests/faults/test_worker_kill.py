"""Scenario 1: SIGKILL the only worker three times during 2,000 jobs.

Nothing lost, no ``ctx.db`` effect twice; the effect outside ``ctx.db`` may repeat for
the jobs that were running at a kill (counted, not forbidden).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from conveyor import Producer, Settings
from tests.faults.harness import (
    Effects,
    Figures,
    WorkerProcess,
    progress_after,
    wait_for,
    worker_env,
)
from tests.worker_helpers import prepare

JOBS = 2000
KILLS = 3


@pytest.mark.timeout(300)
async def test_sigkill_at_random_moments_loses_nothing_and_duplicates_nothing(
    settings: Settings, schema_registry_url: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    effects = Effects(db, live.database_schema, tmp_path / "effects.log")
    await effects.create()
    with Producer(live) as producer:
        ids = producer.submit("fault.effect", [{"n": i} for i in range(JOBS)])

    figures = Figures("worker kill -9", jobs=JOBS)
    rng = random.Random(2026)
    env = worker_env(live, effects.effects_file)
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        while figures.faults < KILLS:
            target = min(JOBS - 1, await effects.completed() + rng.randint(50, 400))
            await wait_for(
                effects.reached(target),
                timeout=120,
                what=f"{target} completions before kill {figures.faults + 1}",
                diagnose=worker.output,
            )
            worker.kill()
            figures.faults += 1
            worker = WorkerProcess(env, tmp_path / "worker.log")
            figures.recovered(
                await progress_after(
                    effects, timeout=120, what="progress after a kill", diagnose=worker.output
                )
            )

        await wait_for(
            effects.reached(JOBS), timeout=180, what="every job complete", diagnose=worker.output
        )
    finally:
        worker.stop()

    await effects.tally(ids, figures)
    figures.emit()
    assert figures.faults == KILLS
    assert await effects.states() == {"complete": JOBS}
    assert (figures.lost, figures.duplicated) == (0, 0)
    assert figures.extra["external_missing"] == 0
