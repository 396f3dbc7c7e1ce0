"""``conveyor worker --processes N``: N processes in one group, supervised, stopped together."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from confluent_kafka.admin import AdminClient

from conveyor import Producer, Settings
from conveyor.topology.model import Topology
from tests.conftest import run_cli, settings_env
from tests.worker_helpers import eventually, prepare

APP = "tests.e2e.apps.echo_app:worker"


def _two_free_ports() -> int:
    """A port p with p and p + 1 free now."""
    while True:
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port


def _children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _members(settings: Settings) -> int:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "log_level": 0})
    group = Topology.from_settings(settings).consumer_group("normal")
    description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    return len(description.members)


def _start(env: dict[str, str], log_file: Any) -> subprocess.Popen[bytes]:
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", APP, "--processes", "2"],
        env={**base, **env},
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )


async def test_processes_share_the_group_restart_a_killed_one_and_stop_together(
    settings: Settings, schema_registry_url: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    live = await prepare(settings.replace(partition_unit=1), schema_registry_url)
    port = _two_free_ports()
    env = {
        **settings_env(live),
        "CONVEYOR_METRICS_PORT": str(port),
        "CONVEYOR_GC_THRESHOLD": "4321,7,8",
    }
    log_file = (tmp_path / "worker.log").open("w")
    proc = _start(env, log_file)
    schema = f'"{live.database_schema}"'

    async def complete() -> int:
        return int(
            await db.fetchval(f"SELECT count(*) FROM {schema}.jobs WHERE state = 'complete'")
        )

    try:
        # Both children serve their own probes (port, port + 1) and are members of one group.
        await eventually(lambda: _healthy(port) and _healthy(port + 1), what="both ready")
        await eventually(lambda: _members(live) == 2, what="two members in the group")
        first = _children(proc.pid)
        assert len(first) == 2
        with Producer(live) as producer:
            producer.submit("echo.back", [{"n": i} for i in range(100)], wait=True)
        await eventually(lambda: _at_least(complete, 100), what="100 jobs complete")
        # Each worker process runs with the collector settings conveyor/gctuning.py sets.
        with Producer(live) as producer:
            producer.submit("echo.gc", {}, wait=True)
        await eventually(lambda: _at_least(complete, 101), what="the gc job complete")
        result = await db.fetchval(f"SELECT result FROM {schema}.jobs WHERE type = 'echo.gc'")
        assert json.loads(result) == {"threshold": [4321, 7, 8], "frozen": True}

        # A child killed with -9 is started again; jobs keep running.
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        await eventually(
            lambda: len(_children(proc.pid)) == 2 and victim not in _children(proc.pid),
            what="the killed process replaced",
        )
        with Producer(live) as producer:
            producer.submit("echo.back", [{"n": i} for i in range(50)], wait=True)
        await eventually(lambda: _at_least(complete, 150), timeout=90, what="150 complete")
        children = _children(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log_file.close()
    output = (tmp_path / "worker.log").read_text()
    assert proc.returncode == 0, output
    assert "supervising 2 worker processes" in output
    assert "Traceback" not in output
    assert not any(_alive(pid) for pid in children)


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count() >= n)


async def test_a_deployment_error_is_one_line_and_starts_no_process(
    settings: Settings, schema_registry_url: str
) -> None:
    from conveyor import migrations

    live = settings.replace(schema_registry_url=schema_registry_url)
    await migrations.migrate(live)  # no topology applied: the topic check fails
    result = run_cli("worker", APP, "--processes", "3", env=settings_env(live), timeout=60)
    assert result.code == 1
    assert result.stderr.startswith("conveyor: error:"), result.stderr
    assert "topology apply" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "supervising" not in result.stdout
