"""Small truths of the CLI: a cancel reason reaches a running job's history, and
configuration mistakes name what is wrong and what was meant."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from typing import Any

import asyncpg

from conveyor import Producer, Settings
from tests.conftest import run_cli, settings_env
from tests.worker_helpers import eventually, prepare

APP = "tests.e2e.apps.echo_app:worker"


def start_worker(env: dict[str, str]) -> subprocess.Popen[str]:
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", APP],
        env={**base, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_cancel_reason_is_kept_in_the_history_of_a_running_job(
    settings: Settings, schema_registry_url: str, db: asyncpg.Connection[Any]
) -> None:
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    env = settings_env(live)
    proc = start_worker(env)
    schema = f'"{live.database_schema}"'

    async def state(job_id: str) -> str | None:
        found: str | None = await db.fetchval(
            f"SELECT state FROM {schema}.jobs WHERE job_id = $1", uuid.UUID(job_id)
        )
        return found

    try:
        with Producer(live) as producer:
            job_id = producer.submit("echo.hang", {}, wait=True)
        await eventually(lambda: _is(state(job_id), "processing"), what="the job running")
        cancel = await asyncio.to_thread(
            run_cli, "cancel", job_id, "--reason", "operator said so", env=env
        )
        assert cancel.code == 0, cancel.stderr
        await eventually(lambda: _is(state(job_id), "cancelled"), what="the job cancelled")
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err
    status = await asyncio.to_thread(run_cli, "status", job_id, env=env)
    assert status.stdout.splitlines()[-1].endswith("cancelled   1  Cancelled: operator said so")


async def _is(state: Any, expected: str) -> bool:
    return bool(await state == expected)


def test_a_non_integer_number_setting_says_expected_an_integer() -> None:
    result = run_cli("status", str(uuid.uuid4()), env={"CONVEYOR_PARTITION_UNIT": "abc"})
    assert result.code == 1
    assert result.stderr == (
        "conveyor: error: invalid setting CONVEYOR_PARTITION_UNIT: expected an integer, got 'abc'\n"
    )


def test_every_unknown_variable_is_reported_at_once_with_the_closest_known_name() -> None:
    env = {"CONVEYOR_PARTITON_UNIT": "2", "CONVEYOR_TOPIC_PREFX": "x"}
    result = run_cli("status", str(uuid.uuid4()), env=env)
    assert result.code == 1
    assert result.stderr.splitlines() == [
        "conveyor: error: invalid setting CONVEYOR_PARTITON_UNIT, CONVEYOR_TOPIC_PREFX: "
        "2 unknown variables (CONVEYOR_PARTITON_UNIT: did you mean CONVEYOR_PARTITION_UNIT?; "
        "CONVEYOR_TOPIC_PREFX: did you mean CONVEYOR_TOPIC_PREFIX?)"
    ]
