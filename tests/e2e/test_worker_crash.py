"""SIGKILL the worker process again and again: no job lost, no side effect twice."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from typing import Any

import asyncpg
import pytest

from conveyor import Producer, Settings
from tests.conftest import settings_env
from tests.worker_helpers import eventually, prepare

JOBS = 2000
KILLS = 3


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conveyor",
            "worker",
            "tests.e2e.apps.crash_app:worker",
            "--log-level",
            "WARNING",
        ],
        env={**base, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.timeout(300)
async def test_sigkill_at_random_moments_loses_nothing_and_duplicates_nothing(
    settings: Settings, schema_registry_url: str, db: asyncpg.Connection[Any]
) -> None:
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    schema = f'"{live.database_schema}"'
    await db.execute(f"CREATE TABLE {schema}.side_effects (job_id text NOT NULL)")
    with Producer(live) as producer:
        ids = producer.submit("crash.effect", [{"n": i} for i in range(JOBS)])

    async def completed() -> int:
        return int(
            await db.fetchval(f"SELECT count(*) FROM {schema}.jobs WHERE state = 'complete'")
        )

    rng = random.Random(2026)
    env = settings_env(live)
    kills = 0
    proc = start_worker(env)
    try:
        while kills < KILLS:
            target = min(JOBS - 1, await completed() + rng.randint(50, 400))
            await eventually(
                lambda t=target: _at_least(completed, t),
                timeout=90,
                what=f"{target} completions before kill {kills + 1}",
            )
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            kills += 1
            proc = start_worker(env)
        await eventually(lambda: _at_least(completed, JOBS), timeout=120, what="every job complete")
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    assert kills == KILLS
    states = dict(await db.fetch(f"SELECT state, count(*) FROM {schema}.jobs GROUP BY state"))
    assert states == {"complete": JOBS}
    per_job = await db.fetch(
        f"SELECT job_id, count(*) AS n FROM {schema}.side_effects GROUP BY job_id"
    )
    assert len(per_job) == JOBS
    assert {r["n"] for r in per_job} == {1}
    assert {r["job_id"] for r in per_job} == set(ids)


async def _at_least(count: Any, target: int) -> bool:
    return bool(await count() >= target)
