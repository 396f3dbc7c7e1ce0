"""``conveyor topology plan|apply`` as a user runs it: output, exit codes, failures."""

from __future__ import annotations

import concurrent.futures
import time

from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from conveyor.embedded import free_port
from conveyor.settings import Settings
from conveyor.topology import Topology
from tests.conftest import run_cli, settings_env
from tests.kafka_helpers import wait_visible

EXIT_DRIFT = 3


def test_apply_creates_then_reports_nothing_to_change(settings: Settings) -> None:
    env = settings_env(settings)
    names = [spec.name for spec in Topology.from_settings(settings).topics]

    planned = run_cli("topology", "plan", env=env)
    assert (planned.code, planned.stderr) == (0, ""), planned.stderr
    assert [line.split()[2] for line in planned.stdout.splitlines()[:-1]] == names
    assert planned.stdout.splitlines()[-1].startswith("plan: 11 to create, 0 in sync, 0 drift(s)")

    first = run_cli("topology", "apply", env=env)
    assert (first.code, first.stderr) == (0, ""), first.stderr
    created = [line.split()[1] for line in first.stdout.splitlines() if line.startswith("created")]
    assert created == names
    assert f"created {settings.topic_prefix}.jobs.critical partitions=8 " in first.stdout

    second = run_cli("topology", "apply", env=env)
    assert (second.code, second.stdout) == (0, "nothing to change: 11 topics in sync\n")

    replanned = run_cli("topology", "plan", env=env)
    assert replanned.code == 0
    assert [line for line in replanned.stdout.splitlines() if line.startswith("=")] == [
        f"= {name} in sync" for name in names
    ]


def test_plan_and_apply_exit_3_on_partition_drift(settings: Settings) -> None:
    env = settings_env(settings)
    high = Topology.from_settings(settings).spec(f"{settings.topic_prefix}.jobs.high")
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "log_level": 0})
    admin.create_topics([NewTopic(high.name, 2, -1, config=dict(high.configs))])[high.name].result(
        timeout=15
    )
    wait_visible(settings.kafka_bootstrap, high.name, 2)

    planned = run_cli("topology", "plan", env=env)
    assert planned.code == EXIT_DRIFT, planned.stderr
    assert f"! {high.name} drift: partitions is 2 on the cluster, declared 6" in planned.stdout
    assert "re-maps keys to partitions" in planned.stdout
    assert f"! {settings.topic_prefix}.jobs.* drift: partition ratio" in planned.stdout

    applied = run_cli("topology", "apply", env=env)
    assert applied.code == EXIT_DRIFT, applied.stderr
    created = [
        line.split()[1] for line in applied.stdout.splitlines() if line.startswith("created")
    ]
    assert len(created) == 10
    assert high.name not in created
    assert applied.stdout.splitlines()[-1].startswith("apply: created 10 topic(s); 10 in sync")


def test_unreachable_broker_is_one_error_line_and_exit_1_within_20s() -> None:
    env = settings_env(Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}"))
    started = time.monotonic()
    # Both commands wait out the admin timeout; running them side by side halves the cost.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(
            pool.map(lambda action: run_cli("topology", action, env=env), ["plan", "apply"])
        )
    elapsed = time.monotonic() - started

    for result in runs:
        assert result.code == 1, result.stderr
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("conveyor: error: cannot reach Kafka at ")
        assert "CONVEYOR_KAFKA_BOOTSTRAP" in lines[0]
        assert env["CONVEYOR_KAFKA_BOOTSTRAP"] in lines[0]
        assert "Traceback" not in result.stderr
    assert elapsed < 20.0
