"""``conveyor submit`` from a shell with only CONVEYOR_* variables set."""

from __future__ import annotations

import uuid

import pytest

from conveyor import Settings
from conveyor.producer.jobs import dedupe_job_id
from conveyor.topology import admin
from conveyor.topology.model import Topology
from tests.conftest import run_cli, settings_env
from tests.kafka_helpers import read_topic


@pytest.fixture
def env(settings: Settings, schema_registry_url: str) -> dict[str, str]:
    live = settings.replace(schema_registry_url=schema_registry_url)
    admin.apply(live)
    return settings_env(live)


def test_submit_prints_the_job_id_and_the_job_lands_on_its_topic(
    settings: Settings, env: dict[str, str]
) -> None:
    result = run_cli(
        "submit",
        "email.send",
        "--payload",
        '{"to": "ada"}',
        "--priority",
        "high",
        "--wait",
        env=env,
    )
    assert result.code == 0, result.stderr
    job_id = result.stdout.strip()
    assert str(uuid.UUID(job_id)) == job_id
    [record] = read_topic(
        settings.kafka_bootstrap, Topology.from_settings(settings).job_topic("high"), 1
    )
    assert record.headers["conveyor-job-id"] == job_id.encode()


def test_a_dedupe_key_prints_the_deterministic_id(env: dict[str, str]) -> None:
    args = ("submit", "email.send", "--payload", "{}", "--dedupe-key", "d1", "--tenant", "t1")
    first, second = run_cli(*args, env=env), run_cli(*args, env=env)
    expected = dedupe_job_id("email.send", "d1", "t1")
    assert (first.stdout.strip(), second.stdout.strip()) == (expected, expected)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("bad type!", "--payload", "{}"), "is not a job type"),
        (("a.b", "--payload", "{not json"), "--payload is not valid JSON"),
        (("a.b", "--payload", "{}", "--delay", "-5"), "delay: must be >= 0"),
    ],
)
def test_invalid_input_is_one_line_and_exit_1(
    env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    result = run_cli("submit", *args, env=env)
    assert result.code == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("conveyor: error:")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
