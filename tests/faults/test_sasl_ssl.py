"""Scenario 7: SASL_SSL with SCRAM-SHA-512, end to end, and a wrong password.

With good credentials: ``conveyor topology apply``, the producer, and a worker
subprocess all go through the broker's SASL_SSL listener (the PLAINTEXT one is never
named), and every job completes exactly once. With a wrong password, the CLI and the
worker each fail with one line on stderr that names the setting to fix.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from conveyor import Producer, Secret, Settings, migrations
from conveyor.embedded import kafka
from tests.conftest import run_cli
from tests.faults.harness import Effects, Figures, WorkerProcess, wait_for, worker_env

JOBS = 300


def secure_env(settings: Settings) -> dict[str, str]:
    """The ``CONVEYOR_*`` variables of the security settings."""
    assert settings.sasl_password is not None
    return {
        "CONVEYOR_SECURITY_PROTOCOL": str(settings.security_protocol),
        "CONVEYOR_SASL_MECHANISM": str(settings.sasl_mechanism),
        "CONVEYOR_SASL_USERNAME": str(settings.sasl_username),
        "CONVEYOR_SASL_PASSWORD": settings.sasl_password.get_secret_value(),
        "CONVEYOR_SSL_CA_LOCATION": str(settings.ssl_ca_location),
    }


@pytest.mark.timeout(360)
async def test_scram_over_tls_works_end_to_end_and_a_wrong_password_is_one_clear_line(
    settings: Settings,
    schema_registry_url: str,
    db: asyncpg.Connection[Any],
    tmp_path: Path,
    private_kafka: Callable[..., kafka.ApacheKafka],
) -> None:
    node = private_kafka(sasl_ssl=True)
    secure = settings.replace(
        kafka_bootstrap=node.sasl_bootstrap,
        partition_unit=1,
        schema_registry_url=schema_registry_url,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=kafka.SCRAM_USER,
        sasl_password=Secret(kafka.SCRAM_PASSWORD),
        ssl_ca_location=str(node.ca_file),
    )
    env = {**worker_env(secure, tmp_path / "effects.log"), **secure_env(secure)}

    applied = await asyncio.to_thread(run_cli, "topology", "apply", env=env, timeout=120)
    assert applied.code == 0, applied.stderr
    await migrations.migrate(secure)
    effects = Effects(db, secure.database_schema, tmp_path / "effects.log")
    await effects.create()

    def submit() -> list[str]:
        with Producer(secure) as producer:
            return producer.submit("fault.effect", [{"n": n} for n in range(JOBS)], wait=True)

    ids = await asyncio.to_thread(submit)
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        await wait_for(effects.all_of(ids), timeout=180, what="every job", diagnose=worker.output)
    finally:
        await asyncio.to_thread(worker.stop)

    wrong = {**env, "CONVEYOR_SASL_PASSWORD": "not-the-password"}
    refused = {
        "topology apply": await asyncio.to_thread(
            run_cli, "topology", "apply", env=wrong, timeout=120
        ),
        "worker": await asyncio.to_thread(
            run_cli,
            "worker",
            "tests.faults.apps.effects_app:worker",
            "--metrics-port",
            "0",
            env=wrong,
            timeout=120,
        ),
    }
    figures = Figures("SASL_SSL SCRAM-SHA-512", jobs=JOBS, faults=len(refused))
    figures.extra["wrong_password_errors"] = {k: r.stderr.strip() for k, r in refused.items()}
    await effects.tally(ids, figures)
    figures.emit()
    assert (figures.lost, figures.duplicated) == (0, 0)
    for command, result in refused.items():
        lines = result.stderr.strip().splitlines()
        assert result.code == 1, (command, result.stderr)
        assert len(lines) == 1, (command, result.stderr)
        assert "CONVEYOR_SASL_PASSWORD" in lines[0] or "CONVEYOR_SASL_USERNAME" in lines[0], lines
