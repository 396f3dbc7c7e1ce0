"""SIGTERM: stop fetching, let in-flight jobs finish, commit, leave; the rest runs later."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from typing import Any

import asyncpg
import httpx
import pytest

from conveyor import Producer, Settings, embedded
from tests.conftest import run_cli, settings_env
from tests.worker_helpers import eventually, prepare

JOBS = 40


def start_worker(env: dict[str, str], *flags: str) -> subprocess.Popen[str]:
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "tests.e2e.apps.slow_app:worker", *flags],
        env={**base, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_sigterm_finishes_in_flight_jobs_and_exits_cleanly(
    settings: Settings, schema_registry_url: str, db: asyncpg.Connection[Any]
) -> None:
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    schema = f'"{live.database_schema}"'
    await db.execute(f"CREATE TABLE {schema}.side_effects (job_id text NOT NULL)")
    with Producer(live) as producer:
        ids = producer.submit("slow.effect", [{"n": i} for i in range(JOBS)])

    async def count(state: str) -> int:
        return int(await db.fetchval(f"SELECT count(*) FROM {schema}.jobs WHERE state = $1", state))

    env = settings_env(live)
    proc = start_worker(env)
    try:
        await eventually(lambda: _positive(count, "processing"), timeout=60, what="jobs running")
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    # Every job it started finished within the grace period; none was left half-done.
    assert await count("processing") == 0
    finished_first = await count("complete")
    assert 0 < finished_first < JOBS

    restarted = start_worker(env)
    try:
        await eventually(lambda: _at_least(count, "complete", JOBS), timeout=90, what="all jobs")
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.communicate(timeout=30)
    per_job = await db.fetch(
        f"SELECT job_id, count(*) AS n FROM {schema}.side_effects GROUP BY job_id"
    )
    assert {r["job_id"] for r in per_job} == set(ids)
    assert {r["n"] for r in per_job} == {1}


async def test_a_cli_worker_serves_probes_and_metrics_and_logs_json(
    settings: Settings, schema_registry_url: str, db: asyncpg.Connection[Any]
) -> None:
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    await db.execute(f'CREATE TABLE "{live.database_schema}".side_effects (job_id text NOT NULL)')
    port = embedded.free_port()
    env = {**settings_env(live), "CONVEYOR_METRICS_PORT": str(port), "CONVEYOR_LOG_JSON": "true"}
    proc = start_worker(env)
    base = f"http://127.0.0.1:{port}"

    async def answers(path: str) -> bool:
        try:
            response = await asyncio.to_thread(httpx.get, base + path, timeout=5)
        except httpx.TransportError:
            return False
        return response.status_code == 200

    try:
        await eventually(lambda: answers("/readyz"), timeout=60, what="/readyz 200")
        assert await answers("/healthz")
        with Producer(live) as producer:
            producer.submit("slow.effect", {"n": 1})

        async def counted() -> bool:
            metrics = await asyncio.to_thread(httpx.get, base + "/metrics", timeout=5)
            return (
                'conveyor_jobs_completed_total{priority="normal",type="slow.effect"} 1.0'
                in metrics.text
            )

        await eventually(counted, timeout=60, what="the job counted on /metrics")
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(r["message"].startswith("serving /metrics") for r in records), err
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


async def test_metrics_port_flag_overrides_the_variable_and_zero_turns_it_off(
    settings: Settings, schema_registry_url: str, db: asyncpg.Connection[Any]
) -> None:
    """``--metrics-port P`` serves on P although CONVEYOR_METRICS_PORT names another port,
    and ``--metrics-port 0`` serves nothing while the worker still runs jobs."""
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    schema = f'"{live.database_schema}"'
    await db.execute(f"CREATE TABLE {schema}.side_effects (job_id text NOT NULL)")
    ignored, flagged = embedded.free_port(), embedded.free_port()
    env = {**settings_env(live), "CONVEYOR_METRICS_PORT": str(ignored), "CONVEYOR_LOG_JSON": "1"}

    async def answers(port: int) -> bool:
        try:
            url = f"http://127.0.0.1:{port}/healthz"
            return (await asyncio.to_thread(httpx.get, url, timeout=2)).status_code == 200
        except httpx.TransportError:
            return False

    proc = start_worker(env, "--metrics-port", str(flagged))
    try:
        await eventually(lambda: answers(flagged), timeout=60, what="/healthz on the flag's port")
        assert not await answers(ignored)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0

    async def done() -> bool:
        return bool(await db.fetchval(f"SELECT count(*) FROM {schema}.side_effects") == 1)

    off = start_worker(env, "--metrics-port", "0")
    try:
        with Producer(live) as producer:
            producer.submit("slow.effect", {"n": 1})
        await eventually(done, timeout=60, what="a job run by the worker without an endpoint")
        assert not await answers(ignored)
    finally:
        off.send_signal(signal.SIGTERM)
        _out, err = off.communicate(timeout=30)
    assert off.returncode == 0, err
    assert "serving /metrics" not in err


async def _positive(count: Any, state: str) -> bool:
    return bool(await count(state) > 0)


async def _at_least(count: Any, state: str, target: int) -> bool:
    return bool(await count(state) >= target)


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("no_such_module:worker", "cannot import 'no_such_module'"),
        ("tests.e2e.apps.slow_app:effect", "is not a conveyor.Worker"),
        (
            "tests.e2e.apps.slow_app:missing",
            "module 'tests.e2e.apps.slow_app' has no attribute 'missing'",
        ),
        ("tests.e2e.apps.slow_app", "expected module:attribute"),
    ],
)
def test_a_bad_app_is_one_error_line(settings: Settings, app: str, message: str) -> None:
    result = run_cli("worker", app, env=settings_env(settings))
    assert result.code == 1
    assert result.stderr.startswith("conveyor: error:")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
