"""A wrong setup fails in one line: an unreachable broker, and the worker's start-up checks.

Each command here runs against the real registry and Postgres of the session, with one
thing missing, and must print one line on stderr that says what to fix, exit 1, and
leave no librdkafka or aiokafka noise behind.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid

from conveyor import Settings, db, embedded
from conveyor.consumer.claims import Lease
from conveyor.consumer.job import JobMessage
from conveyor.consumer.status import StatusStore
from tests.conftest import CliResult, run_cli, settings_env
from tests.e2e.test_dlq_cli import insert_entry

APP = "tests.e2e.apps.echo_app:worker"
#: The producer's delivery timeout is 30 s; failing well inside it proves it did not wait.
FAST = 20.0


def one_error_line(result: CliResult) -> str:
    """The single stderr line of a failed run, after checking that it is the only one."""
    assert result.code == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("conveyor: error: "), result.stderr
    return lines[0]


def unreachable_env(settings: Settings, registry_url: str) -> tuple[dict[str, str], str]:
    address = f"127.0.0.1:{embedded.free_port()}"
    env = settings_env(settings.replace(schema_registry_url=registry_url))
    return {**env, "CONVEYOR_KAFKA_BOOTSTRAP": address}, address


def test_submit_to_an_unreachable_broker_is_one_line_naming_the_setting_and_address(
    migrated: Settings, schema_registry_url: str
) -> None:
    env, address = unreachable_env(migrated, schema_registry_url)
    for wait in ([], ["--wait"]):
        started = time.monotonic()
        result = run_cli("submit", "echo.back", "--payload", "{}", *wait, env=env)
        elapsed = time.monotonic() - started
        line = one_error_line(result)
        assert f"cannot reach Kafka at {address}" in line
        assert "CONVEYOR_KAFKA_BOOTSTRAP" in line
        assert "Connection refused" in line
        assert result.stdout == ""  # no job id: nothing was sent
        assert elapsed < FAST, f"took {elapsed:.1f}s"


def test_worker_against_an_unreachable_broker_is_one_line(
    migrated: Settings, schema_registry_url: str
) -> None:
    env, address = unreachable_env(migrated, schema_registry_url)
    result = run_cli("worker", APP, env=env)
    line = one_error_line(result)
    assert f"cannot reach Kafka at {address}" in line
    assert "CONVEYOR_KAFKA_BOOTSTRAP" in line


def test_worker_refuses_to_start_when_the_registry_does_not_answer(migrated: Settings) -> None:
    url = f"http://127.0.0.1:{embedded.free_port()}"
    env = settings_env(migrated.replace(schema_registry_url=url))
    line = one_error_line(run_cli("worker", APP, env=env))
    assert f"schema registry at {url} did not answer" in line
    assert "CONVEYOR_SCHEMA_REGISTRY_URL" in line


def test_worker_refuses_to_start_before_migrations_and_says_run_migrate(
    settings: Settings, schema_registry_url: str
) -> None:
    env = settings_env(settings.replace(schema_registry_url=schema_registry_url))
    line = one_error_line(run_cli("worker", APP, env=env))
    assert f"schema {settings.database_schema} lacks" in line
    assert "run `conveyor migrate`" in line


def test_worker_refuses_to_start_without_its_topics_and_says_run_topology_apply(
    migrated: Settings, schema_registry_url: str
) -> None:
    env = settings_env(migrated.replace(schema_registry_url=schema_registry_url))
    line = one_error_line(run_cli("worker", APP, env=env))
    assert "topics are missing on" in line
    assert "run `conveyor topology apply`" in line


def test_relay_and_dlq_sink_against_an_unreachable_broker_are_one_line(
    migrated: Settings, schema_registry_url: str
) -> None:
    env, address = unreachable_env(migrated, schema_registry_url)
    for command in ("relay", "dlq-sink"):
        line = one_error_line(run_cli(command, env=env))
        assert address in line, line
        assert "CONVEYOR_KAFKA_BOOTSTRAP" in line, line


def test_dev_pointed_at_an_unreachable_broker_is_one_line(migrated: Settings) -> None:
    address = f"127.0.0.1:{embedded.free_port()}"
    env = {"CONVEYOR_KAFKA_BOOTSTRAP": address, "CONVEYOR_DATABASE_URL": migrated.database_url}
    line = one_error_line(run_cli("dev", "--duration", "1", env=env))
    assert address in line, line
    assert "CONVEYOR_KAFKA_BOOTSTRAP" in line, line


async def test_cancel_of_a_running_job_and_dlq_replay_fail_fast_without_a_broker(
    migrated: Settings, schema_registry_url: str
) -> None:
    """Both publish to Kafka: the cancel command of a running job, and the replayed job."""
    pool = await db.create_pool(migrated, max_size=2)
    try:
        running = await StatusStore(pool, worker_id="w").claim(a_job())
        assert isinstance(running, Lease)
        entry = await insert_entry(pool)
    finally:
        await pool.close()
    env, address = unreachable_env(migrated, schema_registry_url)
    for args in (("cancel", running.job_id, "--reason", "r"), ("dlq", "replay", str(entry))):
        started = time.monotonic()
        result = await asyncio.to_thread(run_cli, *args, env=env)
        elapsed = time.monotonic() - started
        line = one_error_line(result)
        assert f"cannot reach Kafka at {address}" in line, line
        assert "CONVEYOR_KAFKA_BOOTSTRAP" in line, line
        assert elapsed < FAST, f"{args[0]} took {elapsed:.1f}s"


def a_job() -> JobMessage:
    return JobMessage(
        job_id=str(uuid.uuid4()),
        type="echo.back",
        key="k",
        priority="normal",
        payload=b"{}",
        content_type="application/json",
        tenant_id=None,
        batch_id=None,
        dedupe_key=None,
        attempt=1,
        max_attempts=None,
        submitted_at=dt.datetime.now(dt.UTC),
        not_before=None,
        duration="short",
        errors=[],
        topic="t.jobs.normal",
        partition=0,
        offset=0,
        headers={},
    )
