"""``conveyor submit`` from a shell with only CONVEYOR_* variables set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from conveyor import Settings
from conveyor.producer.jobs import dedupe_job_id
from conveyor.schemas.contracts import JOB_ENVELOPE
from conveyor.schemas.serde import Serde
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


def envelopes(settings: Settings, env: dict[str, str], count: int) -> list[dict[str, Any]]:
    """The decoded envelopes of the first ``count`` jobs on the ``normal`` topic."""
    topic = Topology.from_settings(settings).job_topic("normal")
    records = read_topic(settings.kafka_bootstrap, topic, count)
    live = settings.replace(schema_registry_url=env["CONVEYOR_SCHEMA_REGISTRY_URL"])
    with Serde(live) as serde:
        return [serde.decode(JOB_ENVELOPE, topic, r.value) for r in records]


def test_a_json_array_payload_is_one_job_whose_payload_is_the_list(
    settings: Settings, env: dict[str, str]
) -> None:
    result = run_cli("submit", "a.b", "--payload", "[1, 2]", "--wait", env=env)
    assert result.code == 0, result.stderr
    [job_id] = result.stdout.split()
    [envelope] = envelopes(settings, env, 1)
    assert str(envelope["job_id"]) == job_id
    assert json.loads(envelope["payload"]) == [1, 2]
    assert envelope["batch_id"] is None


def test_batch_submits_one_job_per_array_element_sharing_a_batch_id(
    settings: Settings, env: dict[str, str]
) -> None:
    result = run_cli("submit", "a.b", "--batch", '[{"n": 1}, {"n": 2}]', "--wait", env=env)
    assert result.code == 0, result.stderr
    ids = result.stdout.split()
    assert len(ids) == 2
    found = envelopes(settings, env, 2)
    assert sorted(str(e["job_id"]) for e in found) == sorted(ids)
    assert sorted(json.loads(e["payload"])["n"] for e in found) == [1, 2]
    assert len({e["batch_id"] for e in found}) == 1
    assert found[0]["batch_id"] is not None


def test_payload_from_a_file_and_from_stdin(
    settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    """A payload too large for a command line comes from @FILE or from stdin (-)."""
    big = {"text": "x" * 300_000}
    path = tmp_path / "payload.json"
    path.write_text(json.dumps(big))
    from_file = run_cli("submit", "a.b", "--payload", f"@{path}", "--wait", env=env)
    assert from_file.code == 0, from_file.stderr
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    from_stdin = subprocess.run(
        [sys.executable, "-m", "conveyor", "submit", "a.b", "--payload", "-", "--wait"],
        env={**base, **env},
        input=json.dumps({"from": "stdin"}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert from_stdin.returncode == 0, from_stdin.stderr
    by_id = {str(e["job_id"]): json.loads(e["payload"]) for e in envelopes(settings, env, 2)}
    assert by_id == {from_file.stdout.strip(): big, from_stdin.stdout.strip(): {"from": "stdin"}}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--payload", "{}", "--delay", "-5"), "conveyor: error: invalid job: delay: must be >= 0"),
        (("--payload", "@/nonexistent/p.json"), "--payload cannot read /nonexistent/p.json"),
        (("--batch", '{"n": 1}'), "--batch expects a non-empty JSON array"),
    ],
)
def test_errors_about_one_job_read_as_one_job(
    env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    result = run_cli("submit", "a.b", *args, env=env)
    assert result.code == 1
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert message in result.stderr
    assert "item" not in result.stderr
